import D2MoE

/// An error answered as OpenAI's JSON error object, `{"error": {"message", "type", "param", "code"}}`.
public struct APIError: Error, CustomStringConvertible, Sendable {
    public var status: Int
    public var message: String
    public var type: String
    public var param: String?
    public var code: String?
    /// Seconds for a `Retry-After` header (429).
    public var retryAfter: Int?

    public init(status: Int, _ message: String, type: String = "invalid_request_error", param: String? = nil,
                code: String? = nil, retryAfter: Int? = nil) {
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retryAfter = retryAfter
    }

    static func badRequest(_ message: String, param: String? = nil, code: String? = nil) -> APIError {
        APIError(status: 400, message, param: param, code: code)
    }

    public var description: String { "\(status) \(message)" }
}

/// What to generate from: text (tokenized with the model's special tokens) or token ids.
enum PromptInput: Sendable {
    case text(String)
    case tokens([Int32])
    case chat([ChatMessage])
}

/// One parsed `/v1/completions` or `/v1/chat/completions` request, every field checked.
struct GenerationRequest: Sendable {
    var model: String?
    var prompt: PromptInput
    var parameters: GenerationParameters
    var stream: Bool
    var includeUsage: Bool

    /// Reads a request body. `chat` selects the chat schema; `contextLength` bounds `max_tokens`.
    init(json: JSONDocument, chat: Bool, contextLength: Int) throws {
        guard let members = json.members else { throw APIError.badRequest("the request body must be a JSON object") }
        var seen = Set<String>()
        for (key, _) in members where !seen.insert(key).inserted {
            throw APIError.badRequest("the field '\(key)' appears more than once", param: key)
        }
        let field = Fields(json: json)
        model = try field.string("model")
        if chat {
            guard let messages = json["messages"] else { throw APIError.badRequest("'messages' is required", param: "messages") }
            prompt = .chat(try Self.messages(messages))
        } else {
            guard let p = json["prompt"] else { throw APIError.badRequest("'prompt' is required", param: "prompt") }
            prompt = try Self.prompt(p)
        }
        if let n = try field.int("n", in: 1...128), n != 1 {
            throw APIError.badRequest("only n = 1 is supported, got \(n)", param: "n")
        }
        var p = GenerationParameters()
        // OpenAI's sampling defaults (temperature 1, top-p 1, no top-k or min-p), not llama.cpp's.
        p.sampling.temperature = 1
        p.sampling.topK = 0
        p.sampling.topP = 1
        p.sampling.minP = 0
        let maxKey = chat && json["max_completion_tokens"] != nil ? "max_completion_tokens" : "max_tokens"
        p.maxTokens = try field.int(maxKey, in: 1...contextLength) ?? (chat ? contextLength : 16)
        if let t = try field.number("temperature", in: 0...100) { p.sampling.temperature = Float(t) }
        if let t = try field.number("top_p", in: 0...1) {
            guard t > 0 else { throw APIError.badRequest("'top_p' must be greater than 0", param: "top_p") }
            p.sampling.topP = Float(t)
        }
        if let k = try field.int("top_k", in: 0...1_000_000) { p.sampling.topK = k }
        if let m = try field.number("min_p", in: 0...1) { p.sampling.minP = Float(m) }
        if let r = try field.number("repeat_penalty", in: 0.01...100) { p.sampling.repetitionPenalty = Float(r) }
        // Accepted for compatibility; the sampler has no presence or frequency penalty.
        _ = try field.number("presence_penalty", in: -2...2)
        _ = try field.number("frequency_penalty", in: -2...2)
        if let seed = try field.int("seed", in: Int(Int32.min)...Int(Int64.max >> 11)) { p.sampling.seed = UInt64(bitPattern: Int64(seed)) }
        if let stop = json["stop"], !stop.isNull {
            if let s = stop.string {
                p.stopStrings = [s]
            } else if let a = stop.array, a.count <= 16, a.allSatisfy({ $0.string != nil }) {
                p.stopStrings = a.map { $0.string! }
            } else {
                throw APIError.badRequest("'stop' must be a string or an array of at most 16 strings", param: "stop")
            }
        }
        if chat {
            p.addSpecialTokens = false
            p.parseSpecialTokens = true
        } else {
            p.parseSpecialTokens = false
        }
        parameters = p
        stream = try field.bool("stream") ?? false
        includeUsage = false
        if let options = json["stream_options"], !options.isNull {
            guard options.members != nil else { throw APIError.badRequest("'stream_options' must be an object", param: "stream_options") }
            includeUsage = try Fields(json: options).bool("include_usage") ?? false
        }
        if try field.bool("echo") == true { throw APIError.badRequest("'echo' is not supported", param: "echo") }
        if let l = json["logprobs"], !l.isNull, l.bool != false {
            throw APIError.badRequest("'logprobs' is not supported", param: "logprobs")
        }
    }

    private static func prompt(_ p: JSONDocument) throws -> PromptInput {
        if let s = p.string { return .text(s) }
        if let a = p.array {
            if a.count == 1, let s = a[0].string { return .text(s) }
            if let ids = tokenIDs(a) { return .tokens(ids) }
            if a.count == 1, let inner = a[0].array, let ids = tokenIDs(inner) { return .tokens(ids) }
            if a.count > 1, a.allSatisfy({ $0.string != nil || $0.array != nil }) {
                throw APIError.badRequest("only one prompt per request is supported", param: "prompt")
            }
        }
        throw APIError.badRequest("'prompt' must be a string, an array of one string, or an array of token ids", param: "prompt")
    }

    private static func tokenIDs(_ a: [JSONDocument]) -> [Int32]? {
        guard !a.isEmpty else { return nil }
        var ids: [Int32] = []
        for v in a {
            guard let i = v.int, i >= 0, i <= Int(Int32.max) else { return nil }
            ids.append(Int32(i))
        }
        return ids
    }

    private static func messages(_ m: JSONDocument) throws -> [ChatMessage] {
        guard let list = m.array, !list.isEmpty else {
            throw APIError.badRequest("'messages' must be a non-empty array", param: "messages")
        }
        return try list.enumerated().map { i, item in
            let param = "messages[\(i)]"
            guard item.members != nil else { throw APIError.badRequest("\(param) must be an object", param: param) }
            guard let role = item["role"]?.string, ["system", "user", "assistant", "developer", "tool"].contains(role) else {
                throw APIError.badRequest("\(param).role must be one of system, developer, user, assistant, tool", param: param + ".role")
            }
            let content: String
            switch item["content"] {
            case .string(let s)?: content = s
            case .null?, nil where role == "assistant": content = ""
            case .array(let parts)?:
                content = try parts.map { part -> String in
                    guard part["type"]?.string == "text", let text = part["text"]?.string else {
                        throw APIError.badRequest("\(param).content parts must be {\"type\": \"text\", \"text\": ...}", param: param + ".content")
                    }
                    return text
                }.joined()
            default: throw APIError.badRequest("\(param).content must be a string or an array of text parts", param: param + ".content")
            }
            return ChatMessage(role: role == "developer" ? "system" : role, content: content)
        }
    }
}

/// Typed access to optional fields with errors that name the field. A field given as null is absent.
private struct Fields {
    let json: JSONDocument

    private func value(_ key: String) -> JSONDocument? {
        guard let v = json[key], !v.isNull else { return nil }
        return v
    }

    func string(_ key: String) throws -> String? {
        guard let v = value(key) else { return nil }
        guard let s = v.string else { throw APIError.badRequest("'\(key)' must be a string", param: key) }
        return s
    }

    func bool(_ key: String) throws -> Bool? {
        guard let v = value(key) else { return nil }
        guard let b = v.bool else { throw APIError.badRequest("'\(key)' must be true or false", param: key) }
        return b
    }

    func number(_ key: String, in range: ClosedRange<Double>) throws -> Double? {
        guard let v = value(key) else { return nil }
        guard case .number(let d) = v else { throw APIError.badRequest("'\(key)' must be a number", param: key) }
        guard d.isFinite, range.contains(d) else {
            throw APIError.badRequest("'\(key)' must be in [\(range.lowerBound), \(range.upperBound)], got \(d)", param: key)
        }
        return d
    }

    func int(_ key: String, in range: ClosedRange<Int>) throws -> Int? {
        guard let v = value(key) else { return nil }
        guard case .number(let d) = v else { throw APIError.badRequest("'\(key)' must be an integer", param: key) }
        guard d.isFinite, d == d.rounded() else { throw APIError.badRequest("'\(key)' must be an integer, got \(d)", param: key) }
        guard d >= Double(range.lowerBound), d <= Double(range.upperBound) else {
            let shown = abs(d) < 1e15 ? String(Int(d)) : "\(d)"
            throw APIError.badRequest("'\(key)' must be in \(range.lowerBound)...\(range.upperBound), got \(shown)", param: key)
        }
        return Int(d)
    }
}
