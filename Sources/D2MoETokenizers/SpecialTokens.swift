/// Splits UTF-8 text around special tokens before ordinary tokenization, with llama.cpp's
/// semantics (tokenizer_st_partition): token strings are tried longest first, each splitting the
/// text that earlier ones left, left to right; user-defined tokens always match, control tokens
/// only when the caller parses special tokens. Works on bytes: matching by Character would let
/// a combining mark glue itself to the token before it.
struct SpecialTokenSplitter: Sendable {
    enum Fragment { case text(Range<Int>), token(Int32) }

    /// Longest first (ties: lower id first).
    private let specials: [(bytes: [UInt8], id: Int32, control: Bool)]
    /// Indices into `specials` by first byte, in the same order.
    private let byFirstByte: [[Int]]

    init(tokens: [String], types: [TokenType]) {
        specials = tokens.enumerated()
            .filter { (types[$0.offset] == .control || types[$0.offset] == .userDefined) && !$0.element.isEmpty }
            .map { (bytes: Array($0.element.utf8), id: Int32($0.offset), control: types[$0.offset] == .control) }
            .sorted { $0.bytes.count > $1.bytes.count || ($0.bytes.count == $1.bytes.count && $0.id < $1.id) }
        var index = [[Int]](repeating: [], count: 256)
        for (k, s) in specials.enumerated() { index[Int(s.bytes[0])].append(k) }
        byFirstByte = index
    }

    func split(_ text: [UInt8], parseSpecial: Bool) -> [Fragment] {
        // Every occurrence of every eligible special token, grouped by token.
        var occurrences: [Int: [Int]] = [:]
        text.withUnsafeBufferPointer { t in
            for p in 0..<t.count {
                for k in byFirstByte[Int(t[p])] where parseSpecial || !specials[k].control {
                    let s = specials[k].bytes
                    if p + s.count <= t.count && s.withUnsafeBufferPointer({ memcmp($0.baseAddress!, t.baseAddress! + p, s.count) == 0 }) {
                        occurrences[k, default: []].append(p)
                    }
                }
            }
        }
        guard !occurrences.isEmpty else { return text.isEmpty ? [] : [.text(0..<text.count)] }
        var taken = [Bool](repeating: false, count: text.count)
        var accepted: [(start: Int, end: Int, id: Int32)] = []
        for k in occurrences.keys.sorted() {
            let n = specials[k].bytes.count
            var nextFree = 0
            for p in occurrences[k]! where p >= nextFree && !taken[p..<(p + n)].contains(true) {
                for i in p..<(p + n) { taken[i] = true }
                accepted.append((p, p + n, specials[k].id))
                nextFree = p + n
            }
        }
        accepted.sort { $0.start < $1.start }
        var fragments: [Fragment] = []
        var at = 0
        for a in accepted {
            if a.start > at { fragments.append(.text(at..<a.start)) }
            fragments.append(.token(a.id))
            at = a.end
        }
        if at < text.count { fragments.append(.text(at..<text.count)) }
        return fragments
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
