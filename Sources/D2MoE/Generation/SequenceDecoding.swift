import D2MoETokenizers

/// One sequence's side of generation, after each forward pass that returns its logits: sampling
/// (or a benchmark's forced token), end-of-generation tokens, stop strings, `maxTokens` and the
/// cache's room, and the text to stream. `Engine.generate` and `BatchScheduler` both decode through
/// it, so the two paths cannot drift apart.
struct SequenceDecoding {
    /// What one accepted token did.
    struct Accepted {
        /// The token chosen (the one to feed next unless `end` is set).
        var token: Int32
        /// Text that became final with it (stop strings and incomplete UTF-8 held back).
        var text: String
        /// Why the sequence ends here, or nil to go on.
        var end: FinishReason?
    }

    private let parameters: GenerationParameters
    private var sampler: Sampler
    /// The prompt and the tokens generated so far (the repeat penalty's window).
    private var history: [Int32]
    private var filter: StopStringFilter
    private var decoder: StreamingDecoder
    private let eot: Set<Int32>
    private(set) var generated = 0

    init(prompt: [Int32], parameters: GenerationParameters, tokenizer: any Tokenizer) {
        self.parameters = parameters
        sampler = Sampler(parameters.sampling)
        history = prompt
        filter = StopStringFilter(stops: parameters.stopStrings)
        decoder = StreamingDecoder(tokenizer: tokenizer)
        eot = parameters.ignoreEndOfSequence ? [] : tokenizer.eotIDs
    }

    /// Chooses the token after `logits` (one row of `vocabularySize`). `cached` is the number of
    /// positions in the sequence's KV cache and `room` how many it may hold.
    mutating func accept(logits: UnsafePointer<Float>, vocabularySize: Int, cached: Int, room: Int) -> Accepted {
        let sampled = sampler.sample(logits, vocabularySize: vocabularySize, history: history)
        let next = parameters.next(sampled: sampled, index: generated)
        generated += 1
        if eot.contains(next) { return Accepted(token: next, text: "", end: .endOfSequence) }
        history.append(next)
        let (text, stopped) = filter.push(decoder.append(next))
        var end: FinishReason?
        if stopped { end = .stopString }
        else if generated >= parameters.maxTokens { end = .length }
        else if cached >= room { end = .contextFull }
        return Accepted(token: next, text: text, end: end)
    }

    /// The text still held back when the sequence ends for `reason` (none after a stop string,
    /// and none for a consumer that has gone).
    mutating func remainder(endingWith reason: FinishReason) -> String {
        reason == .stopString || reason == .cancelled ? "" : filter.finish(decoder.flush())
    }
}
