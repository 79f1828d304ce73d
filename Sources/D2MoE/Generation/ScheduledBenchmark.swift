import Foundation

extension SpeedBenchmark {
    /// The benchmark through the serving path: each round submits its `requests` to a
    /// `BatchScheduler` at once, so they run as one batch, as concurrent clients of the server do.
    ///
    /// - pp: `requests` prompts of `promptTokens` tokens with one token to generate; the
    ///   scheduler's prefill chunk holds them all, so they are one forward pass, as in lockstep.
    /// - tg: `requests` one-token prompts, then `generateTokens` decode steps. Only the decode
    ///   steps are timed (the one-token prompt step stands for lockstep's first step). Each
    ///   sampled token is replaced by the text's next token (`forcedTokens`), so the model
    ///   decodes the same tokens as in lockstep, and its experts are routed the same way.
    static func measureScheduled(engine: Engine, promptTokens: Int, generateTokens: Int, repetitions: Int, requests: Int,
                                 text: [Int32]?) throws -> Result {
        let span = try check(engine: engine, promptTokens: promptTokens, generateTokens: generateTokens, requests: requests, text: text)
        guard generateTokens < engine.contextLength else {
            throw GenerationError.promptTooLong(tokens: generateTokens + 1, context: engine.contextLength)
        }
        let vocab = engine.model.info.vocabularySize
        var limits = SchedulerLimits()
        limits.maxBatch = requests
        limits.maxQueue = requests
        limits.prefillChunk = max(1, promptTokens) * requests
        let scheduler = BatchScheduler(engine: engine, limits: limits)
        let steps = LockedList<SchedulerStep>()
        scheduler.onStep = { steps.append($0) }
        let cacheBytes = LockedList<Int>()
        scheduler.onCacheMade = { cacheBytes.append($0.byteCount) }
        defer { scheduler.shutdown(cancelRunning: true) }
        var generator = SeededGenerator(seed: 42)
        func token(round: Int, sequence s: Int, _ i: Int) -> Int32 {
            if let text { return textToken(text, span: span, requests: requests, round: round, sequence: s, i) }
            return i == 0 ? Int32.random(in: 0..<Int32(vocab), using: &generator) : Int32(((i - 1) * 31 + s * 7919) % vocab)
        }
        var pp: [Double] = [], tg: [Double] = []
        let streamed = engine.model.experts as? StreamingExperts
        let memory = MemoryWatch()
        // The caches of one half-round (prompt or generation) live together; the halves' do not.
        var kvBytes = 0
        func noteCaches() {
            kvBytes = max(kvBytes, cacheBytes.all.reduce(0, +))
            cacheBytes.clear()
        }
        for round in 0...max(1, repetitions) {
            if round == 1 { streamed?.resetStats() }
            if promptTokens > 0 {
                let prompts = (0..<requests).map { s in
                    (0..<promptTokens).map { i in text.map { textToken($0, span: span, requests: requests, round: round, sequence: s, i) }
                        ?? Int32.random(in: 0..<Int32(vocab), using: &generator) }
                }
                let log = try runRound(scheduler, steps, prompts: prompts, forced: nil)
                noteCaches()
                if round > 0 { pp.append(log.tokensPerSecond(prefill: true)) }
            }
            if generateTokens > 0 {
                let prompts = (0..<requests).map { [token(round: round, sequence: $0, 0)] }
                let forced = (0..<requests).map { s in (1...generateTokens + 1).map { token(round: round, sequence: s, $0) } }
                let log = try runRound(scheduler, steps, prompts: prompts, forced: forced)
                noteCaches()
                if round > 0 { tg.append(log.tokensPerSecond(prefill: false)) }
            }
        }
        return result(engine: engine, promptTokens: promptTokens, generateTokens: generateTokens, requests: requests,
                      pp: pp, tg: tg, memory: memory, kvCacheBytes: kvBytes, driver: .scheduler)
    }

    /// Submits one round's requests together and waits for all of them; returns its steps.
    private static func runRound(_ scheduler: BatchScheduler, _ steps: LockedList<SchedulerStep>, prompts: [[Int32]], forced: [[Int32]]?) throws -> [SchedulerStep] {
        steps.clear()
        var parameters = GenerationParameters()
        parameters.sampling = .greedy
        parameters.addSpecialTokens = false
        parameters.ignoreEndOfSequence = true
        // One group, so every request is admitted at the same step, as in lockstep.
        let handles = try scheduler.submit(group: prompts.enumerated().map { s, prompt in
            var p = parameters
            p.maxTokens = forced?[s].count ?? 1
            p.forcedTokens = forced?[s]
            return (prompt, p)
        })
        let failures = LockedList<String>()
        let done = DispatchSemaphore(value: 0)
        for h in handles {
            Task.detached {
                for await event in h.events {
                    if case .failed(let message) = event { failures.append(message) }
                }
                done.signal()
            }
        }
        for _ in handles { done.wait() }
        if let message = failures.all.first { throw GenerationError.invalidParameter("a benchmark request failed: \(message)") }
        return steps.all
    }
}

extension Array where Element == SchedulerStep {
    /// Tokens per second over the prefill steps (`prefill`) or the decode-only steps.
    func tokensPerSecond(prefill: Bool) -> Double {
        let chosen = filter { ($0.prefillTokens > 0) == prefill }
        let tokens = chosen.reduce(0) { $0 + (prefill ? $1.prefillTokens : $1.decodeTokens) }
        let seconds = chosen.reduce(0) { $0 + $1.seconds }
        return seconds > 0 ? Double(tokens) / seconds : 0
    }
}

/// Items appended from any thread (the scheduler's steps, the requests' failures) and read by the
/// benchmark.
private final class LockedList<Element>: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [Element] = []
    func append(_ e: Element) { lock.withLock { items.append(e) } }
    func clear() { lock.withLock { items.removeAll(keepingCapacity: true) } }
    var all: [Element] { lock.withLock { items } }
}
