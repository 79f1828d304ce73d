import D2MoE
import Foundation

/// Token counts of one request, as OpenAI reports them.
struct Usage: Encodable, Sendable {
    var promptTokens: Int
    var completionTokens: Int
    var totalTokens: Int { promptTokens + completionTokens }

    init(promptTokens: Int, stats: GenerationStats?) {
        self.promptTokens = promptTokens
        // The end-of-generation token ends the text; it is not part of the completion.
        completionTokens = stats.map { $0.generatedTokens - ($0.finishReason == .endOfSequence ? 1 : 0) } ?? 0
    }

    enum CodingKeys: String, CodingKey { case promptTokens = "prompt_tokens", completionTokens = "completion_tokens", totalTokens = "total_tokens" }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(promptTokens, forKey: .promptTokens)
        try c.encode(completionTokens, forKey: .completionTokens)
        try c.encode(totalTokens, forKey: .totalTokens)
    }
}

/// OpenAI's finish reasons: "stop" (end of sequence or a stop string) or "length".
func finishReason(_ r: FinishReason) -> String {
    switch r {
    case .endOfSequence, .stopString, .cancelled: return "stop"
    case .length, .contextFull: return "length"
    }
}

/// One choice of a completion, or of a streamed chunk (`text` or `delta`, finish reason null
/// until the last chunk). Encoded by hand so that nulls are written, as OpenAI's format has them.
struct Choice: Encodable, Sendable {
    enum Body: Sendable {
        case text(String)
        case message(String)
        case delta(role: String?, content: String?)
    }
    var body: Body
    var finishReason: String?

    enum CodingKeys: String, CodingKey { case index, text, message, delta, logprobs, finishReason = "finish_reason" }
    enum MessageKeys: String, CodingKey { case role, content }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(0, forKey: .index)
        switch body {
        case .text(let s):
            try c.encode(s, forKey: .text)
            try c.encodeNil(forKey: .logprobs)
        case .message(let s):
            var m = c.nestedContainer(keyedBy: MessageKeys.self, forKey: .message)
            try m.encode("assistant", forKey: .role)
            try m.encode(s, forKey: .content)
            try c.encodeNil(forKey: .logprobs)
        case .delta(let role, let content):
            var m = c.nestedContainer(keyedBy: MessageKeys.self, forKey: .delta)
            try m.encodeIfPresent(role, forKey: .role)
            try m.encodeIfPresent(content, forKey: .content)
            try c.encodeNil(forKey: .logprobs)
        }
        if let finishReason { try c.encode(finishReason, forKey: .finishReason) } else { try c.encodeNil(forKey: .finishReason) }
    }
}

/// A completion, a chat completion, or one streamed chunk of either.
struct CompletionObject: Encodable, Sendable {
    var id: String
    var object: String
    var created: Int
    var model: String
    var choices: [Choice]
    var usage: Usage?

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(object, forKey: .object)
        try c.encode(created, forKey: .created)
        try c.encode(model, forKey: .model)
        try c.encode(choices, forKey: .choices)
        if let usage { try c.encode(usage, forKey: .usage) }
    }

    enum CodingKeys: String, CodingKey { case id, object, created, model, choices, usage }
}

/// `GET /v1/models`.
struct ModelList: Encodable, Sendable {
    struct Model: Encodable, Sendable {
        var id: String
        var object = "model"
        var created: Int
        var ownedBy = "d2moe"
        enum CodingKeys: String, CodingKey { case id, object, created, ownedBy = "owned_by" }
    }
    var object = "list"
    var data: [Model]
}

/// The error body OpenAI's clients parse.
struct ErrorBody: Encodable, Sendable {
    struct Detail: Encodable, Sendable {
        var message: String
        var type: String
        var param: String?
        var code: String?

        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(message, forKey: .message)
            try c.encode(type, forKey: .type)
            if let param { try c.encode(param, forKey: .param) } else { try c.encodeNil(forKey: .param) }
            if let code { try c.encode(code, forKey: .code) } else { try c.encodeNil(forKey: .code) }
        }
        enum CodingKeys: String, CodingKey { case message, type, param, code }
    }
    var error: Detail

    init(_ e: APIError) { error = Detail(message: e.message, type: e.type, param: e.param, code: e.code) }
}

func encodeJSON<T: Encodable>(_ value: T) -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.withoutEscapingSlashes, .sortedKeys]
    guard let data = try? encoder.encode(value) else { return "{}" }
    return String(decoding: data, as: UTF8.self)
}
