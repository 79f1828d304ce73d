/// SentencePiece-style BPE as GGUF's `tokenizer.ggml.model` = llama describes it (Llama 2,
/// Mistral, Gemma): spaces become "▁", the text starts as UTF-8 characters, and the adjacent pair
/// whose concatenation is a token with the highest score merges first (leftmost on ties);
/// characters no token covers fall back to `<0xXX>` byte tokens.
public final class SentencePieceTokenizer: Tokenizer, @unchecked Sendable {
    public let vocabularySize: Int
    public let bosID: Int32?
    public let eosID: Int32?
    public let eotIDs: Set<Int32>
    public let addsBOS: Bool
    public let addsEOS: Bool
    /// Prepend a space to text that starts the input or follows a special token.
    public let addsSpacePrefix: Bool

    /// Keyed by bytes: Swift strings compare by canonical equivalence, which would make
    /// "e\u{301}" find the token for "é".
    private let ids: [[UInt8]: Int32]
    private let scores: [Float]
    private let types: [TokenType]
    private let byteTokens: [Int32]
    private let pieces: [[UInt8]]
    private let specials: SpecialTokenSplitter

    public init(tokens: [String], scores: [Float], tokenTypes: [Int32]?, bosID: Int32?, eosID: Int32?, eotIDs: [Int32] = [],
                addBOS: Bool, addEOS: Bool, addSpacePrefix: Bool) throws {
        let types = try validatedTokenTypes(tokens: tokens, tokenTypes: tokenTypes, bosID: bosID, eosID: eosID)
        guard scores.count == tokens.count else { throw TokenizerError("\(scores.count) scores for \(tokens.count) tokens") }
        vocabularySize = tokens.count
        self.scores = scores
        self.types = types
        var ids: [[UInt8]: Int32] = [:]
        ids.reserveCapacity(tokens.count)
        for (i, t) in tokens.enumerated() where ids[Array(t.utf8)] == nil { ids[Array(t.utf8)] = Int32(i) }
        self.ids = ids
        byteTokens = try (0..<256).map { b in
            let name = "<0x" + (b < 16 ? "0" : "") + String(b, radix: 16, uppercase: true) + ">"
            guard let id = ids[Array(name.utf8)] else { throw TokenizerError("the vocabulary has no byte token \(name)") }
            return id
        }
        pieces = tokens.enumerated().map { i, t in
            switch types[i] {
            case .control, .unknown, .unused: return []
            case .userDefined: return Array(t.utf8)
            case .byte: return [UInt8(t.dropFirst(3).prefix(2), radix: 16) ?? 0]
            case .normal: return SentencePieceTokenizer.unescapeSpaces(Array(t.utf8))
            }
        }
        specials = SpecialTokenSplitter(tokens: tokens, types: types)
        self.bosID = bosID
        self.eosID = eosID
        self.eotIDs = Set(eotIDs + (eosID.map { [$0] } ?? []))
        addsBOS = addBOS
        addsEOS = addEOS
        addsSpacePrefix = addSpacePrefix
    }

    public func isSpecial(_ id: Int32) -> Bool {
        id >= 0 && Int(id) < types.count && (types[Int(id)] == .control || types[Int(id)] == .userDefined)
    }

    public func tokenBytes(_ id: Int32) -> [UInt8] { id >= 0 && Int(id) < pieces.count ? pieces[Int(id)] : [] }

    public func decode(_ ids: [Int32]) -> String { String(decoding: ids.flatMap { tokenBytes($0) }, as: UTF8.self) }

    public func encode(_ text: String, addSpecial: Bool, parseSpecial: Bool) -> [Int32] {
        var out: [Int32] = []
        if addSpecial && addsBOS, let bosID { out.append(bosID) }
        var afterSpecial = true
        let bytes = Array(text.utf8)
        for fragment in specials.split(bytes, parseSpecial: parseSpecial) {
            switch fragment {
            case .token(let id):
                out.append(id)
                afterSpecial = true
            case .text(let range):
                var escaped: [UInt8] = addsSpacePrefix && afterSpecial ? Self.escapedSpace : []
                escaped.reserveCapacity(range.count + 16)
                for b in bytes[range] { if b == 0x20 { escaped += Self.escapedSpace } else { escaped.append(b) } }
                encodeText(escaped, into: &out)
                afterSpecial = false
            }
        }
        if addSpecial && addsEOS, let eosID { out.append(eosID) }
        return out
    }

    /// "▁" (U+2581), which stands for a space inside tokens.
    static let escapedSpace: [UInt8] = [0xE2, 0x96, 0x81]

    /// Replaces every "▁" by a space, byte by byte (a following combining mark must not hide it).
    static func unescapeSpaces(_ b: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(b.count)
        var i = 0
        while i < b.count {
            if i + 2 < b.count && b[i] == 0xE2 && b[i + 1] == 0x96 && b[i + 2] == 0x81 {
                out.append(0x20)
                i += 3
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return out
    }

    /// A candidate merge of two adjacent symbols; the heap pops the highest score, then the
    /// leftmost.
    private struct Bigram: Comparable {
        let score: Float
        let left: Int
        let right: Int
        let size: Int
        static func < (a: Bigram, b: Bigram) -> Bool { a.score < b.score || (a.score == b.score && a.left > b.left) }
    }

    private func encodeText(_ bytes: [UInt8], into out: inout [Int32]) {
        guard !bytes.isEmpty else { return }
        // Symbols are byte ranges of whole UTF-8 characters, linked left to right.
        var start: [Int] = [], length: [Int] = []
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            let n = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4
            start.append(i)
            length.append(min(n, bytes.count - i))
            i += n
        }
        let count = start.count
        var prev = Array(-1..<(count - 1)), next = Array(1...count)
        next[count - 1] = -1
        var heap = BinaryHeap<Bigram>()
        func token(_ s: Int, _ n: Int) -> Int32? {
            ids[Array(bytes[s..<(s + n)])]
        }
        func tryAdd(_ l: Int, _ r: Int) {
            guard l >= 0, r >= 0, let id = token(start[l], length[l] + length[r]) else { return }
            heap.push(Bigram(score: scores[Int(id)], left: l, right: r, size: length[l] + length[r]))
        }
        for k in 1..<max(count, 1) { tryAdd(k - 1, k) }
        while let b = heap.pop() {
            // Stale when either side has merged since the bigram was queued.
            guard length[b.left] > 0, length[b.right] > 0, length[b.left] + length[b.right] == b.size else { continue }
            length[b.left] += length[b.right]
            length[b.right] = 0
            next[b.left] = next[b.right]
            if next[b.right] >= 0 { prev[next[b.right]] = b.left }
            tryAdd(prev[b.left], b.left)
            tryAdd(b.left, next[b.left])
        }
        var k = 0
        while k != -1 {
            if let id = token(start[k], length[k]) {
                out.append(id)
            } else {
                for j in start[k]..<(start[k] + length[k]) { out.append(byteTokens[Int(bytes[j])]) }
            }
            k = next[k]
        }
    }
}

/// A max-heap.
struct BinaryHeap<Element: Comparable> {
    private var items: [Element] = []

    mutating func push(_ e: Element) {
        items.append(e)
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            if !(items[parent] < items[i]) { break }
            items.swapAt(parent, i)
            i = parent
        }
    }

    mutating func pop() -> Element? {
        guard !items.isEmpty else { return nil }
        items.swapAt(0, items.count - 1)
        let top = items.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < items.count && items[m] < items[l] { m = l }
            if r < items.count && items[m] < items[r] { m = r }
            if m == i { break }
            items.swapAt(i, m)
            i = m
        }
        return top
    }
}
