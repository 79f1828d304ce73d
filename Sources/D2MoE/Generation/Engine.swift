import Foundation
import D2MoETokenizers

/// A loaded model with its tokenizer: the library's entry point. `load`, then `generate`.
public final class Engine: @unchecked Sendable {
    public let model: TransformerModel
    public let tokenizer: any Tokenizer
    /// Positions available to one sequence (prompt plus generated tokens).
    public let contextLength: Int
    /// The file or folder the model came from.
    public let source: String
    /// Prompt tokens per forward pass while prefilling.
    public var prefillChunk = 512

    /// The chat template and BOS/EOS text, when the model came with them.
    public let tokenizerBundle: TokenizerBundle?

    public init(model: TransformerModel, tokenizer: any Tokenizer, contextLength: Int, source: String,
                tokenizerBundle: TokenizerBundle? = nil) {
        self.model = model
        self.tokenizer = tokenizer
        self.contextLength = contextLength
        self.source = source
        self.tokenizerBundle = tokenizerBundle
    }

    /// The prompt tokens of a conversation under the model's own chat template, ending with the
    /// assistant's turn. Rendered once per request; generation then only appends tokens.
    public func chatTokens(_ messages: [ChatMessage], variables: [String: JinjaValue] = [:]) throws -> [Int32] {
        guard let bundle = tokenizerBundle else { throw ModelError("this engine has no chat template") }
        let text = try bundle.chatTemplate().render(messages: messages, addGenerationPrompt: true,
                                                    bosToken: bundle.bosText, eosToken: bundle.eosText, variables: variables)
        // Templates that write BOS themselves must not get a second one.
        let writesBOS = !bundle.bosText.isEmpty && text.hasPrefix(bundle.bosText)
        return tokenizer.encode(text, addSpecial: !writesBOS, parseSpecial: true)
    }

    /// Streams the assistant's reply to a conversation.
    public func generate(messages: [ChatMessage], parameters: GenerationParameters = .init()) throws -> AsyncStream<GenerationEvent> {
        try generate(tokens: try chatTokens(messages), parameters: parameters)
    }

    /// Tokenizes `prompt` and streams the completion. Throws before streaming when the request
    /// cannot run (empty or over-long prompt, bad parameters).
    public func generate(prompt: String, parameters: GenerationParameters = .init()) throws -> AsyncStream<GenerationEvent> {
        let tokens = tokenizer.encode(prompt, addSpecial: parameters.addSpecialTokens, parseSpecial: parameters.parseSpecialTokens)
        return try generate(tokens: tokens, parameters: parameters)
    }

    /// Streams the completion of a tokenized prompt.
    public func generate(tokens: [Int32], parameters: GenerationParameters = .init()) throws -> AsyncStream<GenerationEvent> {
        try parameters.validate(vocabularySize: model.info.vocabularySize)
        guard !tokens.isEmpty else { throw GenerationError.emptyPrompt }
        guard tokens.count < contextLength else {
            throw GenerationError.promptTooLong(tokens: tokens.count, context: contextLength)
        }
        if let bad = tokens.first(where: { $0 < 0 || Int($0) >= model.info.vocabularySize }) {
            throw GenerationError.invalidParameter("token id \(bad) is outside the vocabulary")
        }
        let cancelled = CancellationFlag()
        let (stream, continuation) = AsyncStream<GenerationEvent>.makeStream(bufferingPolicy: .unbounded)
        continuation.onTermination = { _ in cancelled.set() }
        // Generation is long synchronous compute: it gets its own thread rather than blocking
        // Swift's cooperative pool.
        let thread = Thread { [self] in
            run(tokens: tokens, parameters: parameters, cancelled: cancelled, continuation: continuation)
        }
        thread.stackSize = 8 << 20
        thread.start()
        return stream
    }

    private func run(tokens prompt: [Int32], parameters: GenerationParameters, cancelled: CancellationFlag,
                     continuation: AsyncStream<GenerationEvent>.Continuation) {
        let vocab = model.info.vocabularySize
        let cache = model.makeCache(capacity: contextLength)
        var logits = [Float](repeating: 0, count: vocab)
        var decoding = SequenceDecoding(prompt: prompt, parameters: parameters, tokenizer: tokenizer)
        var stats = GenerationStats(promptTokens: prompt.count, generatedTokens: 0, promptSeconds: 0,
                                    generationSeconds: 0, finishReason: .length)
        do {
            let start = DispatchTime.now()
            var position = 0
            while position < prompt.count {
                let end = min(prompt.count, position + prefillChunk)
                let batch = (position..<end).map {
                    BatchToken(sequence: 0, position: $0, token: prompt[$0], wantsLogits: $0 == prompt.count - 1)
                }
                try logits.withUnsafeMutableBufferPointer { try model.forward(batch, caches: [cache], logits: $0.baseAddress!) }
                position = end
            }
            stats.promptSeconds = seconds(since: start)
            let decodeStart = DispatchTime.now()
            while true {
                if cancelled.isSet { stats.finishReason = .cancelled; break }
                let a = logits.withUnsafeBufferPointer {
                    decoding.accept(logits: $0.baseAddress!, vocabularySize: vocab, cached: cache.count, room: contextLength)
                }
                stats.generatedTokens = decoding.generated
                if !a.text.isEmpty { continuation.yield(.text(a.text, tokens: [a.token])) }
                if let reason = a.end { stats.finishReason = reason; break }
                let step = [BatchToken(sequence: 0, position: cache.count, token: a.token, wantsLogits: true)]
                try logits.withUnsafeMutableBufferPointer { try model.forward(step, caches: [cache], logits: $0.baseAddress!) }
            }
            let rest = decoding.remainder(endingWith: stats.finishReason)
            if !rest.isEmpty { continuation.yield(.text(rest, tokens: [])) }
            stats.generationSeconds = seconds(since: decodeStart)
            continuation.yield(.finished(stats))
        } catch {
            continuation.yield(.failed(String(describing: error)))
        }
        continuation.finish()
    }
}

func seconds(since start: DispatchTime) -> Double {
    Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
}

/// Set once from any thread (the consumer going away), read by the generation thread.
final class CancellationFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false

    func set() { lock.withLock { value = true } }
    var isSet: Bool { lock.withLock { value } }
}

/// Holds back text that might be the start of a stop string, so a stop string is never emitted.
package struct StopStringFilter {
    let stops: [String]
    private var held = ""

    package init(stops: [String]) { self.stops = stops.filter { !$0.isEmpty } }

    /// Adds text; returns what can be emitted now and whether a stop string was reached.
    package mutating func push(_ piece: String) -> (String, Bool) {
        guard !stops.isEmpty else { return (piece, false) }
        held += piece
        if let cut = stops.compactMap({ held.range(of: $0)?.lowerBound }).min() {
            defer { held = "" }
            return (String(held[..<cut]), true)
        }
        // Keep the longest tail of `held` that begins some stop string.
        var keep = 0
        for stop in stops {
            for n in stride(from: min(stop.count - 1, held.count), to: keep, by: -1) where held.hasSuffix(stop.prefix(n)) {
                keep = n
                break
            }
        }
        let emit = String(held.dropLast(keep))
        held = String(held.suffix(keep))
        return (emit, false)
    }

    /// Releases what was held at the end of generation.
    package mutating func finish(_ tail: String) -> String {
        let (emit, _) = push(tail)
        defer { held = "" }
        return emit + held
    }
}
