import Foundation

/// tokenizer.json normalizers.
enum HFNormalizer {
    case nfc, nfd, nfkc, nfkd, lowercase
    case prepend(String)
    case replace(pattern: HFPattern, content: String)
    case strip(left: Bool, right: Bool)

    static func parse(_ any: JSONDocument?) throws -> [HFNormalizer] {
        guard let o = any, o.members != nil else { return [] }
        switch o["type"]?.string {
        case "Sequence": return try (o["normalizers"]?.array ?? []).flatMap { try parse($0) }
        case "NFC": return [.nfc]
        case "NFD": return [.nfd]
        case "NFKC": return [.nfkc]
        case "NFKD": return [.nfkd]
        case "Lowercase": return [.lowercase]
        case "Prepend": return [.prepend(o["prepend"]?.string ?? "")]
        case "Replace": return [.replace(pattern: try HFPattern(o["pattern"]), content: o["content"]?.string ?? "")]
        case "Strip": return [.strip(left: o["strip_left"]?.bool ?? true, right: o["strip_right"]?.bool ?? true)]
        case let t: throw TokenizerError("normalizer '\(t ?? "?")' is not supported (NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace, Strip, Sequence are)")
        }
    }

    func apply(_ s: String) -> String {
        switch self {
        case .nfc: return s.precomposedStringWithCanonicalMapping
        case .nfd: return s.decomposedStringWithCanonicalMapping
        case .nfkc: return s.precomposedStringWithCompatibilityMapping
        case .nfkd: return s.decomposedStringWithCompatibilityMapping
        case .lowercase: return s.lowercased()
        case .prepend(let p): return s.isEmpty ? s : p + s
        case .replace(let pattern, let content): return pattern.pieces(s).map { $0.isMatch ? content : $0.text }.joined()
        case .strip(let left, let right):
            var scalars = Array(s.unicodeScalars)[...]
            if left { while let f = scalars.first, f.properties.isWhitespace { scalars.removeFirst() } }
            if right { while let l = scalars.last, l.properties.isWhitespace { scalars.removeLast() } }
            return String(String.UnicodeScalarView(scalars))
        }
    }
}

/// A `{"String": …}` or `{"Regex": …}` pattern. Matching works on bytes (strings) or Unicode
/// scalars (regexes, through ICU), never on grapheme clusters.
struct HFPattern: @unchecked Sendable {
    let literal: [UInt8]?
    let regex: NSRegularExpression?
    let known: PreTokenizer?

    init(_ any: JSONDocument?) throws {
        guard let o = any, o.members != nil else { throw TokenizerError("a pattern must be {\"String\": …} or {\"Regex\": …}") }
        if let s = o["String"]?.string {
            guard !s.isEmpty else { throw TokenizerError("an empty string pattern") }
            literal = Array(s.utf8); regex = nil; known = nil
        } else if let r = o["Regex"]?.string {
            literal = nil
            known = PreTokenizer(regex: r)
            do { regex = try NSRegularExpression(pattern: r) } catch {
                throw TokenizerError("pattern regex '\(r)' does not compile: \(error.localizedDescription)")
            }
        } else {
            throw TokenizerError("a pattern must be {\"String\": …} or {\"Regex\": …}")
        }
    }

    /// The text cut into alternating unmatched and matched pieces, in order.
    func pieces(_ s: String) -> [(text: String, isMatch: Bool)] {
        if let literal {
            let parts = JinjaBuiltins.splitBytes(s, String(decoding: literal, as: UTF8.self), limit: -1)
            var out: [(String, Bool)] = []
            for (i, p) in parts.enumerated() {
                if i > 0 { out.append((String(decoding: literal, as: UTF8.self), true)) }
                if !p.isEmpty { out.append((p, false)) }
            }
            return out
        }
        let ns = s as NSString
        var out: [(String, Bool)] = []
        var at = 0
        for m in regex!.matches(in: s, range: NSRange(location: 0, length: ns.length)) where m.range.length > 0 {
            if m.range.location > at { out.append((ns.substring(with: NSRange(location: at, length: m.range.location - at)), false)) }
            out.append((ns.substring(with: m.range), true))
            at = m.range.location + m.range.length
        }
        if at < ns.length { out.append((ns.substring(from: at), false)) }
        return out
    }
}

/// tokenizer.json pre-tokenizers; each splits a piece into smaller pieces.
enum HFPreTokenizer {
    case byteLevel(addPrefixSpace: Bool, useRegex: Bool)
    case split(HFPattern, behavior: String, invert: Bool)
    case digits(individual: Bool)
    case metaspace(replacement: String, prepend: String, split: Bool)

    static func parse(_ any: JSONDocument?) throws -> [HFPreTokenizer] {
        guard let o = any, o.members != nil else { return [] }
        switch o["type"]?.string {
        case "Sequence": return try (o["pretokenizers"]?.array ?? []).flatMap { try parse($0) }
        case "ByteLevel": return [.byteLevel(addPrefixSpace: o["add_prefix_space"]?.bool ?? false, useRegex: o["use_regex"]?.bool ?? true)]
        case "Split":
            let behavior = o["behavior"]?.string ?? "Isolated"
            guard ["Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous"].contains(behavior) else {
                throw TokenizerError("Split behavior '\(behavior)' is not known")
            }
            return [.split(try HFPattern(o["pattern"]), behavior: behavior, invert: o["invert"]?.bool ?? false)]
        case "Digits": return [.digits(individual: o["individual_digits"]?.bool ?? false)]
        case "Metaspace":
            let scheme = o["prepend_scheme"]?.string ?? ((o["add_prefix_space"]?.bool ?? true) ? "always" : "never")
            return [.metaspace(replacement: o["replacement"]?.string ?? "▁", prepend: scheme, split: o["split"]?.bool ?? true)]
        case let t: throw TokenizerError("pre-tokenizer '\(t ?? "?")' is not supported (ByteLevel, Split, Digits, Metaspace, Sequence are)")
        }
    }

    /// `first`: whether this text starts the input (Metaspace's "first" scheme).
    func split(_ s: String, first: Bool) -> [String] {
        switch self {
        case .byteLevel(let addPrefixSpace, let useRegex):
            var text = s
            if addPrefixSpace && !text.hasPrefix(" ") { text = " " + text }
            let map = ByteLevelBPETokenizer.byteToUnicode
            func mapped(_ piece: Substring.UnicodeScalarView) -> String {
                var out = String.UnicodeScalarView()
                for b in String(piece).utf8 { out.append(map[Int(b)]) }
                return String(out)
            }
            guard useRegex else { return [mapped(text.unicodeScalars[...])] }
            let scalars = Array(text.unicodeScalars)
            return PreTokenizer.gpt2.split(scalars).map { r in
                var v = String.UnicodeScalarView(); v.append(contentsOf: scalars[r])
                return mapped(String(v).unicodeScalars[...])
            }
        case .split(let pattern, let behavior, let invert):
            if let known = pattern.known, behavior == "Isolated", !invert {
                let scalars = Array(s.unicodeScalars)
                return known.split(scalars).map { r in
                    var v = String.UnicodeScalarView(); v.append(contentsOf: scalars[r]); return String(v)
                }
            }
            let parts = pattern.pieces(s).map { (text: $0.text, isMatch: $0.isMatch != invert) }
            return Self.combine(parts, behavior: behavior)
        case .digits(let individual):
            var out: [String] = [], current = String.UnicodeScalarView()
            var currentIsDigit = false
            for c in s.unicodeScalars {
                let digit = PreTokenizer.isNumber(c)
                if !current.isEmpty && (digit != currentIsDigit || (digit && individual)) {
                    out.append(String(current)); current = String.UnicodeScalarView()
                }
                current.append(c)
                currentIsDigit = digit
            }
            if !current.isEmpty { out.append(String(current)) }
            return out
        case .metaspace(let replacement, let prepend, let splitting):
            var text = JinjaBuiltins.splitBytes(s, " ", limit: -1).joined(separator: replacement)
            if (prepend == "always" || (prepend == "first" && first)) && !text.hasPrefix(replacement) { text = replacement + text }
            guard splitting else { return [text] }
            let parts = JinjaBuiltins.splitBytes(text, replacement, limit: -1)
            var out: [String] = parts[0].isEmpty ? [] : [parts[0]]
            for p in parts.dropFirst() { out.append(replacement + p) }
            return out
        }
    }

    private static func combine(_ parts: [(text: String, isMatch: Bool)], behavior: String) -> [String] {
        var out: [String] = []
        var pendingPrefix = ""
        for (text, isMatch) in parts {
            switch behavior {
            case "Removed": if !isMatch { out.append(text) }
            case "MergedWithPrevious":
                if isMatch, !out.isEmpty { out[out.count - 1] += text } else { out.append(text) }
            case "MergedWithNext":
                if isMatch { pendingPrefix += text } else { out.append(pendingPrefix + text); pendingPrefix = "" }
            case "Contiguous":
                out.append(text)
            default:
                out.append(text)
            }
        }
        if !pendingPrefix.isEmpty { out.append(pendingPrefix) }
        return out
    }
}

/// What the decoder does to token text, reduced to the cases real tokenizers use.
struct HFDecoderSummary {
    var byteLevel = false
    var byteFallback = false
    var replacesMetaspace = false
    var stripsLeadingSpace = false
    var metaspace = false

    init(_ any: JSONDocument?) { visit(any) }

    private mutating func visit(_ any: JSONDocument?) {
        guard let o = any, o.members != nil else { return }
        switch o["type"]?.string {
        case "Sequence": for d in o["decoders"]?.array ?? [] { visit(d) }
        case "ByteLevel": byteLevel = true
        case "ByteFallback": byteFallback = true
        case "Replace":
            if let p = o["pattern"], p["String"]?.string == "▁", o["content"]?.string == " " { replacesMetaspace = true }
        case "Strip": if o["start"]?.int ?? 0 > 0 { stripsLeadingSpace = true }
        case "Metaspace":
            replacesMetaspace = true
            metaspace = true
            let scheme = o["prepend_scheme"]?.string ?? ((o["add_prefix_space"]?.bool ?? true) ? "always" : "never")
            stripsLeadingSpace = scheme != "never"
        default: break
        }
    }
}

/// The special tokens the post-processor's single-sequence template puts before and after.
struct HFTemplate {
    var prefix: Int32?
    var suffix: Int32?

    init(_ any: JSONDocument?, ids: [[UInt8]: Int32]) { visit(any, ids) }

    private mutating func visit(_ any: JSONDocument?, _ ids: [[UInt8]: Int32]) {
        guard let o = any, o.members != nil else { return }
        if o["type"]?.string == "Sequence" { for p in o["processors"]?.array ?? [] { visit(p, ids) }; return }
        guard o["type"]?.string == "TemplateProcessing", let single = o["single"]?.array else { return }
        var seenSequence = false
        for item in single {
            if item["Sequence"] != nil { seenSequence = true; continue }
            guard let special = item["SpecialToken"], let name = special["id"]?.string else { continue }
            let value = o["special_tokens"]?[name]?["ids"]?.array?.first?.int.map { Int32($0) } ?? ids[Array(name.utf8)]
            if seenSequence { suffix = value } else { prefix = value }
        }
    }
}
