import Foundation

/// One message of a conversation.
public struct ChatMessage: Sendable, Equatable, Codable {
    public var role: String
    public var content: String
    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// A model's own chat template (`tokenizer.chat_template`), parsed once and rendered per
/// conversation with the subset of Jinja that real templates use. Errors name the line.
public struct ChatTemplate: Sendable {
    public let source: String
    private let nodes: [JinjaNode]

    public init(_ source: String) throws {
        self.source = source
        nodes = try JinjaParser.parse(source)
    }

    /// Renders `messages` as Hugging Face's `apply_chat_template` does. `variables` adds or
    /// overrides template variables (e.g. `enable_thinking`, `tools`).
    public func render(messages: [ChatMessage], addGenerationPrompt: Bool = true, bosToken: String = "",
                       eosToken: String = "", variables: [String: JinjaValue] = [:]) throws -> String {
        let list = JinjaValue.array(messages.map { .object(JinjaObject([("role", .string($0.role)), ("content", .string($0.content))])) })
        var globals: [String: JinjaValue] = [
            "messages": list,
            "add_generation_prompt": .bool(addGenerationPrompt),
            "bos_token": .string(bosToken),
            "eos_token": .string(eosToken),
            "strftime_now": JinjaBuiltins.fn("strftime_now") { args, _ in
                .string(ChatTemplate.formatDate(args.first?.rendered ?? "%Y-%m-%d", Date()))
            },
        ]
        globals.merge(variables) { $1 }
        return try JinjaInterpreter(globals: globals).render(nodes)
    }

    /// Renders with any variables, for tests and callers that build messages themselves.
    public func render(variables: [String: JinjaValue]) throws -> String {
        try JinjaInterpreter(globals: variables).render(nodes)
    }

    static func formatDate(_ format: String, _ date: Date) -> String {
        var t = time_t(date.timeIntervalSince1970)
        var parts = tm()
        localtime_r(&t, &parts)
        var buffer = [Int8](repeating: 0, count: 256)
        let n = strftime(&buffer, buffer.count, format, &parts)
        return String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
