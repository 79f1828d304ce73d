import Foundation

/// GPT-2-style byte-level BPE (`tokenizer.ggml.model` = gpt2): text → pre-tokenizer words →
/// bytes mapped to printable characters → merges applied lowest rank first → token ids.
/// Special tokens are split out first: user-defined ones always, control ones when asked.
public final class ByteLevelBPETokenizer: Tokenizer, @unchecked Sendable {
    public let vocabularySize: Int
    public let bosID: Int32?
    public let eosID: Int32?
    public let eotIDs: Set<Int32>
    public let addsBOS: Bool
    public let addsEOS: Bool

    private let tokens: [String]
    // String keys are safe here: byte-mapped token text uses only U+0021…U+0143, which holds no
    // combining marks, so no two tokens are canonically equivalent.
    private let types: [TokenType]
    private let ids: [String: Int32]
    /// (left id, right id) → (rank, merged id).
    private let merges: [UInt64: (rank: Int32, id: Int32)]
    private let preTokenizer: PreTokenizer
    private let specials: SpecialTokenSplitter
    /// Id of the token for each byte's mapped character; −1 where the vocabulary has none (such
    /// bytes can only be reached through merges, and are dropped otherwise, as llama.cpp does).
    private let byteIDs: [Int32]
    /// Bytes each token stands for (control tokens: none).
    private let tokenBytesTable: [[UInt8]]
    private let cache = WordCache()

    public init(tokens: [String], merges mergeList: [String], tokenTypes: [Int32]?, preTokenizer pre: String,
                bosID: Int32?, eosID: Int32?, eotIDs: [Int32] = [], addBOS: Bool, addEOS: Bool) throws {
        types = try validatedTokenTypes(tokens: tokens, tokenTypes: tokenTypes, bosID: bosID, eosID: eosID)
        guard !mergeList.isEmpty else { throw TokenizerError("a byte-level BPE tokenizer needs merges; none were given") }
        vocabularySize = tokens.count
        self.tokens = tokens
        var ids: [String: Int32] = [:]
        ids.reserveCapacity(tokens.count)
        for (i, t) in tokens.enumerated() where ids[t] == nil { ids[t] = Int32(i) }
        self.ids = ids
        var merges: [UInt64: (Int32, Int32)] = [:]
        merges.reserveCapacity(mergeList.count)
        for (rank, line) in mergeList.enumerated() {
            guard let space = line.firstIndex(of: " ", after: line.startIndex) else {
                throw TokenizerError("merge \(rank) '\(line)' is not two tokens separated by a space")
            }
            let a = String(line[..<space]), b = String(line[line.index(after: space)...])
            guard let ia = ids[a], let ib = ids[b], let merged = ids[a + b] else { continue }
            let key = UInt64(UInt32(bitPattern: ia)) << 32 | UInt64(UInt32(bitPattern: ib))
            if merges[key] == nil { merges[key] = (Int32(rank), merged) }
        }
        self.merges = merges
        preTokenizer = try PreTokenizer(name: pre)
        self.bosID = bosID
        self.eosID = eosID
        self.eotIDs = Set(eotIDs + (eosID.map { [$0] } ?? []))
        addsBOS = addBOS
        addsEOS = addEOS
        let unicodeOfByte = ByteLevelBPETokenizer.byteToUnicode
        byteIDs = (0..<256).map { ids[String(unicodeOfByte[$0])] ?? -1 }
        let byteOfUnicode = Dictionary(uniqueKeysWithValues: unicodeOfByte.enumerated().map { ($1, UInt8($0)) })
        let types = self.types
        tokenBytesTable = tokens.enumerated().map { i, t in
            switch types[i] {
            case .control, .unknown, .unused: return []
            case .userDefined: return Array(t.utf8)
            default: return t.unicodeScalars.compactMap { byteOfUnicode[$0] }
            }
        }
        specials = SpecialTokenSplitter(tokens: tokens, types: types)
    }

    /// GPT-2's reversible map from bytes to printable characters.
    static let byteToUnicode: [Unicode.Scalar] = {
        var printable = Array(33...126) + Array(161...172) + Array(174...255)
        var map = [Unicode.Scalar](repeating: " ", count: 256)
        var extra = 0
        for b in 0..<256 {
            if printable.contains(b) {
                map[b] = Unicode.Scalar(UInt32(b))!
            } else {
                map[b] = Unicode.Scalar(UInt32(256 + extra))!
                extra += 1
            }
        }
        printable.removeAll()
        return map
    }()

    public func isSpecial(_ id: Int32) -> Bool {
        id >= 0 && Int(id) < types.count && (types[Int(id)] == .control || types[Int(id)] == .userDefined)
    }

    public func tokenBytes(_ id: Int32) -> [UInt8] {
        id >= 0 && Int(id) < tokenBytesTable.count ? tokenBytesTable[Int(id)] : []
    }

    public func decode(_ ids: [Int32]) -> String {
        String(decoding: ids.flatMap { tokenBytes($0) }, as: UTF8.self)
    }

    public func encode(_ text: String, addSpecial: Bool, parseSpecial: Bool) -> [Int32] {
        var out: [Int32] = []
        if addSpecial && addsBOS, let bosID { out.append(bosID) }
        let bytes = Array(text.utf8)
        for fragment in specials.split(bytes, parseSpecial: parseSpecial) {
            switch fragment {
            case .token(let id): out.append(id)
            case .text(let range): encodeText(String(decoding: bytes[range], as: UTF8.self), into: &out)
            }
        }
        if addSpecial && addsEOS, let eosID { out.append(eosID) }
        return out
    }

    private func encodeText(_ text: String, into out: inout [Int32]) {
        let scalars = Array(text.unicodeScalars)
        for range in preTokenizer.split(scalars) {
            var word = String.UnicodeScalarView()
            word.append(contentsOf: scalars[range])
            // Cached by bytes: canonically equivalent spellings must not share an entry.
            let key = Array(String(word).utf8)
            if let cached = cache.get(key) { out += cached; continue }
            let encoded = bpe(key)
            cache.set(key, encoded)
            out += encoded
        }
    }

    /// Applies merges to one word's bytes, always the lowest-ranked adjacent pair (leftmost on ties).
    private func bpe(_ bytes: [UInt8]) -> [Int32] {
        var symbols = bytes.map { byteIDs[Int($0)] }
        while symbols.count > 1 {
            var best: (rank: Int32, index: Int, id: Int32)? = nil
            for i in 0..<(symbols.count - 1) {
                let key = UInt64(UInt32(bitPattern: symbols[i])) << 32 | UInt64(UInt32(bitPattern: symbols[i + 1]))
                if let m = merges[key], best == nil || m.rank < best!.rank { best = (m.rank, i, m.id) }
            }
            guard let b = best else { break }
            symbols[b.index] = b.id
            symbols.remove(at: b.index + 1)
        }
        return symbols.filter { $0 >= 0 }
    }
}

/// A bounded memo of encoded words; the same words recur constantly in real text.
final class WordCache: @unchecked Sendable {
    private var table: [[UInt8]: [Int32]] = [:]
    private let lock = NSLock()
    private let limit = 200_000

    func get(_ key: [UInt8]) -> [Int32]? { lock.withLock { table[key] } }

    func set(_ key: [UInt8], _ value: [Int32]) {
        lock.withLock {
            if table.count >= limit { table.removeAll(keepingCapacity: true) }
            table[key] = value
        }
    }
}

extension StringProtocol {
    func firstIndex(of c: Character, after start: Index) -> Index? {
        // A merge's left token may itself start with a space, so look from the second character.
        guard start < endIndex else { return nil }
        return self[index(after: start)...].firstIndex(of: c)
    }
}
