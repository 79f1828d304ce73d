/// Splits text into the words BPE runs on, as llama.cpp does for each `tokenizer.ggml.pre` type.
/// Hand-written rather than a regular expression: the same splits, far faster.
enum PreTokenizer: Sendable {
    /// GPT-2's `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    case gpt2
    /// Every digit alone (`\p{N}`), then GPT-2 on the rest (SmolLM, StarCoder-style).
    case digitsThenGPT2
    /// Llama 3's `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
    /// Qwen 2 is the same with single digits (`maxDigits` 1).
    case llama3(maxDigits: Int)

    init(name: String) throws {
        switch name {
        case "gpt2", "default", "gpt-2", "olmo": self = .gpt2
        case "smollm", "starcoder", "codeshell", "refact", "exaone", "minerva": self = .digitsThenGPT2
        case "llama3", "llama-bpe", "llama-v3", "smaug-bpe", "falcon3", "pixtral": self = .llama3(maxDigits: 3)
        case "qwen2", "deepseek-r1-qwen", "qwen35": self = .llama3(maxDigits: 1)
        default: throw TokenizerError("pre-tokenizer '\(name)' is not supported (supported: gpt2, olmo, smollm, starcoder, refact, llama3, llama-bpe, qwen2)")
        }
    }

    /// The hand-written splitter for a Hugging Face `Split` regex, when it is one we know.
    init?(regex: String) {
        switch regex {
        case Self.llama3Regex: self = .llama3(maxDigits: 3)
        case Self.llama3Regex.replacingOccurrences(of: "{1,3}", with: ""): self = .llama3(maxDigits: 1)
        case "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+": self = .gpt2
        default: return nil
        }
    }

    static let llama3Regex = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

    /// The words of `scalars`, as index ranges.
    func split(_ s: [Unicode.Scalar]) -> [Range<Int>] {
        switch self {
        case .gpt2:
            return Self.gpt2(s, 0..<s.count)
        case .digitsThenGPT2:
            var out: [Range<Int>] = []
            var start = 0
            for i in 0..<s.count where Self.isNumber(s[i]) {
                if start < i { out += Self.gpt2(s, start..<i) }
                out.append(i..<(i + 1))
                start = i + 1
            }
            if start < s.count { out += Self.gpt2(s, start..<s.count) }
            return out
        case .llama3(let maxDigits):
            return Self.llama3(s, maxDigits: maxDigits)
        }
    }

    static func isNewline(_ c: Unicode.Scalar) -> Bool { c == "\r" || c == "\n" }

    /// The Llama 3 / Qwen 2 split, alternative by alternative as the regex tries them.
    static func llama3(_ s: [Unicode.Scalar], maxDigits: Int) -> [Range<Int>] {
        var out: [Range<Int>] = []
        let end = s.count
        func at(_ i: Int) -> Unicode.Scalar? { i < end ? s[i] : nil }
        func lower(_ i: Int) -> Unicode.Scalar? { at(i).map { $0.properties.lowercaseMapping.unicodeScalars.count == 1 ? $0.properties.lowercaseMapping.unicodeScalars.first! : $0 } }
        var pos = 0
        while pos < end {
            let start = pos
            let c = s[pos]
            // (?i:'s|'t|'re|'ve|'m|'ll|'d)
            if c == "'", let n = lower(pos + 1) {
                if n == "s" || n == "t" || n == "m" || n == "d" { out.append(pos..<(pos + 2)); pos += 2; continue }
                if let n2 = lower(pos + 2), (n == "r" && n2 == "e") || (n == "v" && n2 == "e") || (n == "l" && n2 == "l") {
                    out.append(pos..<(pos + 3)); pos += 3; continue
                }
            }
            // [^\r\n\p{L}\p{N}]?\p{L}+
            let leadOK = !isNewline(c) && !isLetter(c) && !isNumber(c)
            if isLetter(c) || (leadOK && at(pos + 1).map(isLetter) == true) {
                pos += isLetter(c) ? 0 : 1
                while let x = at(pos), isLetter(x) { pos += 1 }
                out.append(start..<pos); continue
            }
            // \p{N}{1,maxDigits}
            if isNumber(c) {
                while pos - start < maxDigits, let x = at(pos), isNumber(x) { pos += 1 }
                out.append(start..<pos); continue
            }
            // " ?[^\s\p{L}\p{N}]+[\r\n]*"
            let lead = c == " " ? at(pos + 1) : c
            if let l = lead, !isWhitespace(l), !isLetter(l), !isNumber(l), hasCategory(l) {
                pos += c == " " ? 1 : 0
                while let x = at(pos), !isWhitespace(x), !isLetter(x), !isNumber(x), hasCategory(x) { pos += 1 }
                while let x = at(pos), isNewline(x) { pos += 1 }
                out.append(start..<pos); continue
            }
            // \s*[\r\n]+ : the whitespace run up to its last newline.
            var runEnd = pos
            var lastNewline = -1
            while let x = at(runEnd), isWhitespace(x) {
                if isNewline(x) { lastNewline = runEnd }
                runEnd += 1
            }
            if lastNewline >= 0 { pos = lastNewline + 1; out.append(start..<pos); continue }
            // \s+(?!\S) then \s+
            if runEnd > pos {
                if runEnd < end && runEnd - pos > 1 { pos = runEnd - 1 } else { pos = runEnd }
                out.append(start..<pos); continue
            }
            pos += 1
            out.append(start..<pos)
        }
        return out
    }

    static func isLetter(_ c: Unicode.Scalar) -> Bool {
        switch c.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
        default: return false
        }
    }

    static func isNumber(_ c: Unicode.Scalar) -> Bool {
        switch c.properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }

    static func isWhitespace(_ c: Unicode.Scalar) -> Bool { c.properties.isWhitespace }

    /// Unassigned code points have no category in llama.cpp's tables and match no class.
    static func hasCategory(_ c: Unicode.Scalar) -> Bool { c.properties.generalCategory != .unassigned }

    /// llama.cpp's hand-coded GPT-2 split over one segment.
    static func gpt2(_ s: [Unicode.Scalar], _ segment: Range<Int>) -> [Range<Int>] {
        var out: [Range<Int>] = []
        let end = segment.upperBound
        func at(_ i: Int) -> Unicode.Scalar? { i < end ? s[i] : nil }
        var pos = segment.lowerBound
        var prev = pos
        func emit(_ e: Int) { if e > prev { out.append(prev..<e) }; prev = e }
        while pos < end {
            let c = s[pos]
            if c == "'", let n = at(pos + 1) {
                if n == "s" || n == "t" || n == "m" || n == "d" { emit(pos + 2); pos += 2; continue }
                if let n2 = at(pos + 2), (n == "r" && n2 == "e") || (n == "v" && n2 == "e") || (n == "l" && n2 == "l") {
                    emit(pos + 3); pos += 3; continue
                }
            }
            // The class of the character after an optional leading space.
            let lead = c == " " ? at(pos + 1) : c
            if let l = lead, isLetter(l) {
                pos += c == " " ? 1 : 0
                while let x = at(pos), isLetter(x) { pos += 1 }
                emit(pos); continue
            }
            if let l = lead, isNumber(l) {
                pos += c == " " ? 1 : 0
                while let x = at(pos), isNumber(x) { pos += 1 }
                emit(pos); continue
            }
            if let l = lead, !isWhitespace(l), hasCategory(l) {
                pos += c == " " ? 1 : 0
                while let x = at(pos), !isWhitespace(x), !isLetter(x), !isNumber(x), hasCategory(x) { pos += 1 }
                emit(pos); continue
            }
            var spaces = 0
            while let x = at(pos + spaces), isWhitespace(x) { spaces += 1 }
            if spaces > 1 && pos + spaces < end {  // \s+(?!\S): leave the last space to the next word
                pos += spaces - 1
                emit(pos); continue
            }
            if spaces > 0 { pos += spaces; emit(pos); continue }
            pos += 1
            emit(pos)
        }
        return out
    }
}
