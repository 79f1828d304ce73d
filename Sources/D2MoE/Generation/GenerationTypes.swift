/// What `Engine.generate` streams.
public enum GenerationEvent: Sendable {
    /// New text (always whole UTF-8 characters) and the tokens that produced it.
    case text(String, tokens: [Int32])
    /// The end of the generation, with its statistics.
    case finished(GenerationStats)
    /// A failure after the stream began (the model step failed); no more events follow.
    case failed(String)
}

/// Why a generation stopped.
public enum FinishReason: String, Sendable, Codable {
    /// The model produced an end-of-generation token.
    case endOfSequence = "stop"
    /// A stop string appeared (it is not part of the text).
    case stopString = "stop_string"
    /// `maxTokens` were generated.
    case length
    /// The context is full.
    case contextFull = "context_full"
    /// The consumer stopped listening.
    case cancelled
}

/// Counts and timings of one generation.
public struct GenerationStats: Sendable, Codable {
    public var promptTokens: Int
    public var generatedTokens: Int
    public var promptSeconds: Double
    public var generationSeconds: Double
    public var finishReason: FinishReason
    /// Time a scheduled request waited for a slot before its prompt began.
    public var queueSeconds: Double = 0

    /// Prompt tokens per second.
    public var promptTokensPerSecond: Double { promptSeconds > 0 ? Double(promptTokens) / promptSeconds : 0 }
    /// Generated tokens per second (the first token, produced by the prompt pass, not counted).
    public var generationTokensPerSecond: Double {
        generationSeconds > 0 ? Double(max(0, generatedTokens - 1)) / generationSeconds : 0
    }
}

/// A request `Engine.generate` cannot start; the message names the problem.
public enum GenerationError: Error, CustomStringConvertible, Sendable {
    case promptTooLong(tokens: Int, context: Int)
    case emptyPrompt
    case invalidParameter(String)

    public var description: String {
        switch self {
        case .promptTooLong(let tokens, let context):
            return "the prompt is \(tokens) tokens, longer than the context of \(context) tokens"
        case .emptyPrompt: return "the prompt is empty"
        case .invalidParameter(let s): return "invalid parameter: \(s)"
        }
    }
}

/// Everything a generation request asks for beyond its prompt.
public struct GenerationParameters: Sendable {
    public var maxTokens: Int = 256
    public var sampling = SamplingParameters()
    /// Generation ends before any of these strings (which are not emitted).
    public var stopStrings: [String] = []
    /// Add BOS/EOS as the model's tokenizer says.
    public var addSpecialTokens = true
    /// Recognise special-token text in the prompt (chat templates need it).
    public var parseSpecialTokens = false
    /// Keep generating through end-of-generation tokens until `maxTokens` (benchmarks).
    public var ignoreEndOfSequence = false
    /// Benchmarks: the i-th generated token is replaced by `forcedTokens[i]` after sampling (the
    /// sampler still runs), so a benchmark decodes real text and its experts are routed as for
    /// that text. Needs at least `maxTokens` tokens.
    public var forcedTokens: [Int32]?

    public init() {}

    func validate(vocabularySize: Int) throws {
        try sampling.validate()
        guard maxTokens >= 1 else { throw GenerationError.invalidParameter("max tokens must be ≥ 1, got \(maxTokens)") }
        if let forcedTokens {
            guard forcedTokens.count >= maxTokens else {
                throw GenerationError.invalidParameter("\(forcedTokens.count) forced tokens for \(maxTokens) max tokens")
            }
            if let bad = forcedTokens.first(where: { $0 < 0 || Int($0) >= vocabularySize }) {
                throw GenerationError.invalidParameter("forced token id \(bad) is outside the vocabulary")
            }
        }
    }

    /// The token generation continues with: the sampled one, or the forced one in its place.
    func next(sampled: Int32, index: Int) -> Int32 { forcedTokens.map { $0[index] } ?? sampled }
}
