import D2MoEFormats
import D2MoETokenizers

/// Reads what the engine needs from GGUF metadata: plain values for config translation and the
/// tokenizer the file describes.
enum GGUFMetadata {
    /// Metadata as plain Swift values (Int, Double, Bool, String, arrays of them). The big
    /// tokenizer arrays are left out; `tokenizer` reads them typed.
    static func dictionary(_ file: GGUFFile) -> [String: Any] {
        var out: [String: Any] = [:]
        for (key, value) in file.metadata where !key.hasPrefix("tokenizer.ggml.") || !isArray(value) {
            out[key] = plain(value)
        }
        if let tokens = file.metadata["tokenizer.ggml.tokens"], case .array(let a) = tokens {
            out["tokenizer.ggml.tokens"] = Array(repeating: 0, count: a.count) as [Any]
        }
        return out
    }

    private static func isArray(_ v: GGUFValue) -> Bool { if case .array = v { return true } else { return false } }

    private static func plain(_ v: GGUFValue) -> Any {
        switch v {
        case .int(let x): return Int(x)
        case .uint(let x): return Int(truncatingIfNeeded: x)
        case .float(let x): return x
        case .bool(let b): return b
        case .string(let s): return s
        case .array(let a): return plain(a)
        }
    }

    private static func plain(_ a: GGUFArray) -> [Any] {
        switch a {
        case .ints(let xs): return xs.map { Int($0) }
        case .floats(let xs): return xs
        case .bools(let xs): return xs
        case .strings(let xs): return xs
        case .arrays(let xs): return xs.map(plain)
        }
    }

    /// The tokenizer described by `tokenizer.ggml.*`.
    static func tokenizer(_ file: GGUFFile) throws -> any Tokenizer {
        try tokenizer(metadata: file.metadata, origin: file.path)
    }

    /// The tokenizer described by `tokenizer.ggml.*` keys, wherever they were stored.
    static func tokenizer(metadata m: [String: GGUFValue], origin: String) throws -> any Tokenizer {
        func fail(_ s: String) -> ModelError { ModelError("\(origin): \(s)") }
        guard let model = m["tokenizer.ggml.model"]?.string else { throw fail("no tokenizer.ggml.model in metadata") }
        guard let tokens = m["tokenizer.ggml.tokens"]?.stringArray else { throw fail("no tokenizer.ggml.tokens in metadata") }
        let types = m["tokenizer.ggml.token_type"]?.intArray.map { $0.map { Int32(truncatingIfNeeded: $0) } }
        func id(_ key: String) -> Int32? { m["tokenizer.ggml.\(key)"]?.int.map { Int32($0) } }
        let eot = ["eot_token_id", "eom_token_id"].compactMap(id)
        do {
            switch model {
            case "gpt2":
                guard let merges = m["tokenizer.ggml.merges"]?.stringArray else { throw fail("no tokenizer.ggml.merges in metadata") }
                return try ByteLevelBPETokenizer(
                    tokens: tokens, merges: merges, tokenTypes: types, preTokenizer: m["tokenizer.ggml.pre"]?.string ?? "gpt2",
                    bosID: id("bos_token_id"), eosID: id("eos_token_id"), eotIDs: eot,
                    addBOS: m["tokenizer.ggml.add_bos_token"]?.bool ?? false,
                    addEOS: m["tokenizer.ggml.add_eos_token"]?.bool ?? false)
            case "llama":
                guard let scores = m["tokenizer.ggml.scores"]?.floatArray else { throw fail("no tokenizer.ggml.scores in metadata") }
                return try SentencePieceTokenizer(
                    tokens: tokens, scores: scores.map { Float($0) }, tokenTypes: types,
                    bosID: id("bos_token_id"), eosID: id("eos_token_id"), eotIDs: eot,
                    addBOS: m["tokenizer.ggml.add_bos_token"]?.bool ?? true,
                    addEOS: m["tokenizer.ggml.add_eos_token"]?.bool ?? false,
                    addSpacePrefix: m["tokenizer.ggml.add_space_prefix"]?.bool ?? true)
            default:
                throw fail("tokenizer model '\(model)' is not supported yet (gpt2 and llama are)")
            }
        } catch let error as TokenizerError {
            throw fail("tokenizer: \(error.description)")
        }
    }
}

extension GGUFMetadata {
    /// The `tokenizer.*` keys as JSON, for the MWQ header (float arrays tagged so they stay floats).
    static func tokenizerJSON(_ file: GGUFFile) -> JSONValue {
        func json(_ v: GGUFValue) -> JSONValue {
            switch v {
            case .int(let x): return .int(Int(x))
            case .uint(let x): return .int(Int(truncatingIfNeeded: x))
            case .float(let x): return .double(x)
            case .bool(let b): return .bool(b)
            case .string(let s): return .string(s)
            case .array(let a): return array(a)
            }
        }
        func array(_ a: GGUFArray) -> JSONValue {
            switch a {
            case .ints(let xs): return .array(xs.map { .int(Int($0)) })
            case .floats(let xs): return .object(["float": .array(xs.map { .double($0) })])
            case .bools(let xs): return .array(xs.map { .bool($0) })
            case .strings(let xs): return .array(xs.map { .string($0) })
            case .arrays(let xs): return .array(xs.map(array))
            }
        }
        var out: [String: JSONValue] = [:]
        for (k, v) in file.metadata where k.hasPrefix("tokenizer.") { out[k] = json(v) }
        return .object(out)
    }

    /// The inverse of `tokenizerJSON`.
    static func metadata(fromTokenizerJSON j: JSONValue) -> [String: GGUFValue] {
        func value(_ v: JSONValue) -> GGUFValue? {
            switch v {
            case .int(let x): return .int(Int64(x))
            case .double(let x): return .float(x)
            case .bool(let b): return .bool(b)
            case .string(let s): return .string(s)
            case .object(let o):
                guard case .array(let xs)? = o["float"] else { return nil }
                return .array(.floats(xs.map { if case .double(let d) = $0 { return d }; if case .int(let i) = $0 { return Double(i) }; return 0 }))
            case .array(let xs):
                if xs.allSatisfy({ if case .string = $0 { return true }; return false }) {
                    return .array(.strings(xs.map { if case .string(let s) = $0 { return s }; return "" }))
                }
                if xs.allSatisfy({ if case .int = $0 { return true }; return false }) {
                    return .array(.ints(xs.map { if case .int(let i) = $0 { return Int64(i) }; return 0 }))
                }
                if xs.allSatisfy({ if case .bool = $0 { return true }; return false }) {
                    return .array(.bools(xs.map { if case .bool(let b) = $0 { return b }; return false }))
                }
                return nil
            case .null: return nil
            }
        }
        guard case .object(let o) = j else { return [:] }
        return o.compactMapValues(value)
    }
}
