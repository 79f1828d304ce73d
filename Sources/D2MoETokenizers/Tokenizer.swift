/// Turns text into the token ids a model was trained with, and back.
public protocol Tokenizer: Sendable {
    /// Token ids of `text`. `addSpecial` adds BOS/EOS as the model's metadata asks;
    /// `parseSpecial` recognises control tokens written in the text (chat templates need it).
    func encode(_ text: String, addSpecial: Bool, parseSpecial: Bool) -> [Int32]
    /// Text of `ids`; control tokens are omitted.
    func decode(_ ids: [Int32]) -> String
    /// The bytes a token stands for (empty for control tokens), for streaming decoding.
    func tokenBytes(_ id: Int32) -> [UInt8]
    var vocabularySize: Int { get }
    var bosID: Int32? { get }
    var eosID: Int32? { get }
    /// Tokens that end a generation (EOS, end-of-turn, …).
    var eotIDs: Set<Int32> { get }
    /// Whether `encode(addSpecial: true)` starts with BOS.
    var addsBOS: Bool { get }
    func isSpecial(_ id: Int32) -> Bool
}

/// Malformed tokenizer data; the message names the problem.
public struct TokenizerError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Checks what every vocabulary must satisfy and returns the token types (normal by default).
func validatedTokenTypes(tokens: [String], tokenTypes: [Int32]?, bosID: Int32?, eosID: Int32?) throws -> [TokenType] {
    guard !tokens.isEmpty else { throw TokenizerError("the vocabulary is empty") }
    if let tokenTypes, tokenTypes.count != tokens.count {
        throw TokenizerError("\(tokenTypes.count) token types for \(tokens.count) tokens")
    }
    for (name, id) in [("BOS", bosID), ("EOS", eosID)] {
        if let id, id < 0 || Int(id) >= tokens.count {
            throw TokenizerError("\(name) id \(id) is outside the vocabulary (0..<\(tokens.count))")
        }
    }
    return (tokenTypes ?? Array(repeating: 1, count: tokens.count)).map { TokenType(rawValue: $0) ?? .normal }
}

/// Token kinds as GGUF's `tokenizer.ggml.token_type` numbers them.
public enum TokenType: Int32, Sendable {
    case normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
}

/// Decodes a stream of ids into text without ever emitting part of a UTF-8 character: bytes of
/// an incomplete character wait for the next token.
public struct StreamingDecoder {
    let tokenizer: any Tokenizer
    private var pending: [UInt8] = []

    public init(tokenizer: any Tokenizer) { self.tokenizer = tokenizer }

    /// Text completed by this token (possibly empty).
    public mutating func append(_ id: Int32) -> String {
        pending += tokenizer.tokenBytes(id)
        let complete = Self.completePrefixLength(pending)
        guard complete > 0 else { return "" }
        let text = String(decoding: pending[..<complete], as: UTF8.self)
        pending.removeFirst(complete)
        return text
    }

    /// Whatever is left at the end (invalid bytes become U+FFFD).
    public mutating func flush() -> String {
        defer { pending = [] }
        return String(decoding: pending, as: UTF8.self)
    }

    /// Length of the longest prefix that does not end inside a UTF-8 sequence.
    static func completePrefixLength(_ bytes: [UInt8]) -> Int {
        let n = bytes.count
        // Look back at most 3 bytes for the lead byte of a possibly unfinished sequence.
        var i = n - 1
        while i >= 0 && i >= n - 4 {
            let b = bytes[i]
            if b & 0xC0 != 0x80 {
                let need = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1
                return n - i >= need ? n : i
            }
            i -= 1
        }
        return n
    }
}
