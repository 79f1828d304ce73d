/// Splits text into the words BPE runs on, as llama.cpp does for each `tokenizer.ggml.pre` type.
/// Hand-written rather than a regular expression: the same splits, far faster.
enum PreTokenizer: Sendable {
    /// GPT-2's `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    case gpt2
    /// Every digit alone (`\p{N}`), then GPT-2 on the rest (SmolLM, StarCoder-style).
    case digitsThenGPT2

    init(name: String) throws {
        switch name {
        case "gpt2", "default", "gpt-2": self = .gpt2
        case "smollm", "starcoder", "codeshell", "refact", "exaone", "minerva": self = .digitsThenGPT2
        default: throw TokenizerError("pre-tokenizer '\(name)' is not supported (supported: gpt2, smollm, starcoder, refact)")
        }
    }

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
        }
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
