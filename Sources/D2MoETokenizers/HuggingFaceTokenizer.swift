import Foundation

/// A BPE tokenizer described by Hugging Face's `tokenizer.json`: normalizer → pre-tokenizer →
/// BPE (ranked merges, optional byte fallback) → ids, with added tokens split out first and the
/// decoder applied on the way back. Covers the pipelines of Llama/Mistral (Prepend+Replace or
/// Metaspace), Gemma (Replace), Llama 3 and Qwen 2 (Split+ByteLevel, NFC), GPT-2/OLMoE and
/// SmolLM (ByteLevel, Digits).
public final class HuggingFaceTokenizer: Tokenizer, @unchecked Sendable {
    public let vocabularySize: Int
    public let bosID: Int32?
    public let eosID: Int32?
    public let eotIDs: Set<Int32>
    public let addsBOS: Bool
    public let addsEOS: Bool

    private let normalizers: [HFNormalizer]
    private let preTokenizers: [HFPreTokenizer]
    private let byteLevel: Bool
    private let byteFallback: Bool
    private let ignoreMerges: Bool
    private let unknownID: Int32?
    private let ids: [[UInt8]: Int32]
    private let merges: [UInt64: (rank: Int32, id: Int32)]
    private let types: [TokenType]
    private let tokenBytesTable: [[UInt8]]
    private let byteTokens: [Int32]?
    /// Leading spaces the decoder strips from the whole text (Llama's `Strip`, Metaspace's prefix).
    private let decodeStripsLeadingSpace: Bool
    /// Metaspace decoders strip only a space that was "▁" in the first token.
    private let stripOnlyMetaspace: Bool
    private let startsWithMetaspace: [Bool]
    private let specials: SpecialTokenSplitter
    private let cache = WordCache()

    /// Parses `tokenizer.json` data. BOS/EOS come from the post-processor's template, or from
    /// `bosToken`/`eosToken` (names from tokenizer_config.json) when given.
    public convenience init(json data: Data, bosToken: String? = nil, eosToken: String? = nil,
                            extraEndTokens: [String] = [], extraEndIDs: [Int32] = [], addBOS: Bool? = nil) throws {
        let root: JSONDocument
        do { root = try JSONDocument.parse(Array(data)) } catch let e as TokenizerError {
            throw TokenizerError("tokenizer.json: \(e.description)")
        }
        guard root.members != nil else { throw TokenizerError("tokenizer.json is not a JSON object") }
        try self.init(root: root, bosToken: bosToken, eosToken: eosToken, extraEndTokens: extraEndTokens,
                      extraEndIDs: extraEndIDs, addBOS: addBOS)
    }

    init(root: JSONDocument, bosToken: String?, eosToken: String?, extraEndTokens: [String], extraEndIDs: [Int32], addBOS: Bool?) throws {
        guard let model = root["model"], model.members != nil else { throw TokenizerError("tokenizer.json has no model") }
        let kind = model["type"]?.string ?? "BPE"
        guard kind == "BPE" else { throw TokenizerError("tokenizer.json model type '\(kind)' is not supported (BPE is)") }
        guard let vocab = model["vocab"]?.members, !vocab.isEmpty else { throw TokenizerError("tokenizer.json has no model.vocab") }
        guard let mergeList = model["merges"]?.array else { throw TokenizerError("tokenizer.json has no model.merges") }
        if let prefix = model["continuing_subword_prefix"]?.string, !prefix.isEmpty {
            throw TokenizerError("BPE continuing_subword_prefix is not supported")
        }

        // Vocabulary: model vocab plus added tokens, indexed by id.
        var tokenOf: [Int: String] = [:]
        for (token, value) in vocab {
            guard let id = value.int, id >= 0 else { throw TokenizerError("vocab entry '\(token)' has no valid id") }
            tokenOf[id] = token
        }
        var typeOf: [Int: TokenType] = [:]
        for added in root["added_tokens"]?.array ?? [] {
            guard let id = added["id"]?.int, id >= 0, let content = added["content"]?.string else {
                throw TokenizerError("an added token lacks an id or content")
            }
            tokenOf[id] = content
            typeOf[id] = (added["special"]?.bool ?? false) ? .control : .userDefined
        }
        let count = (tokenOf.keys.max() ?? -1) + 1
        guard count <= tokenOf.count * 2 + 1024 else { throw TokenizerError("token ids are sparse up to \(count - 1)") }
        let tokens = (0..<count).map { tokenOf[$0] ?? "" }
        types = (0..<count).map { typeOf[$0] ?? (tokenOf[$0] == nil ? .unused : .normal) }
        vocabularySize = count
        var ids: [[UInt8]: Int32] = [:]
        for (i, t) in tokens.enumerated() where types[i] != .unused && ids[Array(t.utf8)] == nil { ids[Array(t.utf8)] = Int32(i) }
        self.ids = ids

        var merges: [UInt64: (Int32, Int32)] = [:]
        for (rank, entry) in mergeList.enumerated() {
            let pair: [String]
            if let line = entry.string {
                guard let space = line.firstIndex(of: " ", after: line.startIndex) else {
                    throw TokenizerError("merge \(rank) '\(line)' is not two tokens separated by a space")
                }
                pair = [String(line[..<space]), String(line[line.index(after: space)...])]
            } else if let array = entry.array?.compactMap(\.string), array.count == 2 {
                pair = array
            } else {
                throw TokenizerError("merge \(rank) is neither \"a b\" nor [a, b]")
            }
            guard let a = ids[Array(pair[0].utf8)], let b = ids[Array(pair[1].utf8)] else {
                throw TokenizerError("merge \(rank) '\(pair[0]) \(pair[1])' names a token missing from the vocabulary")
            }
            guard let merged = ids[Array((pair[0] + pair[1]).utf8)] else {
                throw TokenizerError("merge \(rank) '\(pair[0]) \(pair[1])' makes a token missing from the vocabulary")
            }
            let key = UInt64(UInt32(bitPattern: a)) << 32 | UInt64(UInt32(bitPattern: b))
            if merges[key] == nil { merges[key] = (Int32(rank), merged) }
        }
        self.merges = merges
        byteFallback = model["byte_fallback"]?.bool ?? false
        ignoreMerges = model["ignore_merges"]?.bool ?? false
        unknownID = (model["unk_token"]?.string).flatMap { ids[Array($0.utf8)] }

        normalizers = try HFNormalizer.parse(root["normalizer"])
        preTokenizers = try HFPreTokenizer.parse(root["pre_tokenizer"])
        byteLevel = preTokenizers.contains { if case .byteLevel = $0 { return true }; return false }
        byteTokens = byteFallback ? try (0..<256).map { b in
            let name = "<0x" + (b < 16 ? "0" : "") + String(b, radix: 16, uppercase: true) + ">"
            guard let id = ids[Array(name.utf8)] else { throw TokenizerError("byte_fallback is on but the vocabulary has no \(name)") }
            return id
        } : nil

        let decoder = HFDecoderSummary(root["decoder"])
        decodeStripsLeadingSpace = decoder.stripsLeadingSpace
        stripOnlyMetaspace = decoder.metaspace
        startsWithMetaspace = tokens.map { $0.hasPrefix("▁") }
        let byteOfUnicode = Dictionary(uniqueKeysWithValues: ByteLevelBPETokenizer.byteToUnicode.enumerated().map { ($1, UInt8($0)) })
        let types = self.types
        let byteLevel = self.byteLevel
        tokenBytesTable = tokens.enumerated().map { i, t in
            switch types[i] {
            case .control, .unknown, .unused: return []
            case .userDefined: return Array(t.utf8)
            default:
                if byteLevel || decoder.byteLevel { return t.unicodeScalars.compactMap { byteOfUnicode[$0] } }
                if decoder.byteFallback, t.utf8.count == 6, t.hasPrefix("<0x"), t.hasSuffix(">"), let b = UInt8(t.dropFirst(3).prefix(2), radix: 16) {
                    return [b]
                }
                return decoder.replacesMetaspace ? SentencePieceTokenizer.unescapeSpaces(Array(t.utf8)) : Array(t.utf8)
            }
        }
        specials = SpecialTokenSplitter(tokens: tokens, types: types)

        // BOS/EOS: the post-processor's template says what encode adds.
        let template = HFTemplate(root["post_processor"], ids: ids)
        func id(_ name: String?) -> Int32? { name.flatMap { ids[Array($0.utf8)] } }
        bosID = id(bosToken) ?? template.prefix
        eosID = id(eosToken) ?? template.suffix
        addsBOS = addBOS ?? (template.prefix != nil)
        addsEOS = template.suffix != nil
        eotIDs = Set(([eosID] + extraEndTokens.map { id($0) }).compactMap { $0 } + extraEndIDs.filter { $0 >= 0 && Int($0) < count })
        for (name, value) in [("BOS", bosToken), ("EOS", eosToken)] where value != nil && id(value) == nil {
            throw TokenizerError("\(name) token '\(value!)' is not in the vocabulary")
        }
    }

    public func isSpecial(_ id: Int32) -> Bool {
        id >= 0 && Int(id) < types.count && (types[Int(id)] == .control || types[Int(id)] == .userDefined)
    }

    public func tokenBytes(_ id: Int32) -> [UInt8] { id >= 0 && Int(id) < tokenBytesTable.count ? tokenBytesTable[Int(id)] : [] }

    public func decode(_ ids: [Int32]) -> String {
        var bytes = ids.flatMap { tokenBytes($0) }
        let first = ids.first { !tokenBytes($0).isEmpty }
        if decodeStripsLeadingSpace, bytes.first == 0x20, !stripOnlyMetaspace || first.map({ startsWithMetaspace[Int($0)] }) == true {
            bytes.removeFirst()
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    public func encode(_ text: String, addSpecial: Bool, parseSpecial: Bool) -> [Int32] {
        var out: [Int32] = []
        if addSpecial && addsBOS, let bosID { out.append(bosID) }
        let bytes = Array(text.utf8)
        var first = true
        for fragment in specials.split(bytes, parseSpecial: parseSpecial) {
            switch fragment {
            case .token(let id): out.append(id)
            case .text(let range):
                encodeText(String(decoding: bytes[range], as: UTF8.self), first: first, into: &out)
            }
            first = false
        }
        if addSpecial && addsEOS, let eosID { out.append(eosID) }
        return out
    }

    private func encodeText(_ raw: String, first: Bool, into out: inout [Int32]) {
        var text = raw
        for n in normalizers { text = n.apply(text) }
        var pieces = [text]
        for p in preTokenizers { pieces = pieces.flatMap { p.split($0, first: first) } }
        for piece in pieces where !piece.isEmpty {
            let key = Array(piece.utf8)
            if let cached = cache.get(key) { out += cached; continue }
            let encoded = bpe(piece)
            if key.count < 256 { cache.set(key, encoded) }
            out += encoded
        }
    }

    /// Ranked BPE over one piece's characters, lowest rank first (leftmost on ties), with a heap:
    /// pieces without a pre-tokenizer can be whole paragraphs.
    private func bpe(_ piece: String) -> [Int32] {
        if ignoreMerges, let whole = ids[Array(piece.utf8)] { return [whole] }
        var symbols: [Int32] = []
        for c in piece.unicodeScalars {
            var utf8 = [UInt8]()
            utf8.append(contentsOf: String(c).utf8)
            if let id = ids[utf8] {
                symbols.append(id)
            } else if let byteTokens {
                symbols += utf8.map { byteTokens[Int($0)] }
            } else if let unknownID {
                symbols.append(unknownID)
            }
        }
        let n = symbols.count
        guard n > 1 else { return symbols }
        var next = Array(1...n), prev = Array(-1..<(n - 1))
        next[n - 1] = -1
        var alive = [Bool](repeating: true, count: n)
        var heap = BinaryHeap<RankedPair>()
        func push(_ l: Int, _ r: Int) {
            guard l >= 0, r >= 0 else { return }
            let key = UInt64(UInt32(bitPattern: symbols[l])) << 32 | UInt64(UInt32(bitPattern: symbols[r]))
            if let m = merges[key] { heap.push(RankedPair(rank: m.rank, left: l, right: r, leftID: symbols[l], rightID: symbols[r])) }
        }
        for i in 0..<(n - 1) { push(i, i + 1) }
        while let p = heap.pop() {
            guard alive[p.left], alive[p.right], next[p.left] == p.right, symbols[p.left] == p.leftID, symbols[p.right] == p.rightID else { continue }
            let key = UInt64(UInt32(bitPattern: p.leftID)) << 32 | UInt64(UInt32(bitPattern: p.rightID))
            symbols[p.left] = merges[key]!.id
            alive[p.right] = false
            next[p.left] = next[p.right]
            if next[p.right] >= 0 { prev[next[p.right]] = p.left }
            push(prev[p.left], p.left)
            push(p.left, next[p.left])
        }
        var out: [Int32] = []
        var k = 0
        while k != -1 { out.append(symbols[k]); k = next[k] }
        return out
    }
}

/// A candidate merge; the max-heap pops the lowest rank, then the leftmost.
private struct RankedPair: Comparable {
    let rank: Int32
    let left: Int
    let right: Int
    let leftID: Int32
    let rightID: Int32
    static func < (a: RankedPair, b: RankedPair) -> Bool { a.rank > b.rank || (a.rank == b.rank && a.left > b.left) }
}
