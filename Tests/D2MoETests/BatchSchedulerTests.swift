import Foundation
import Testing
import D2MoE

/// Continuous batching against the plain one-request generation path, on the real SmolLM2.
@Suite(.serialized, .enabled(if: TestPaths.exists(TestPaths.smolLM2), "SKIP: models/SmolLM2-135M-Instruct.Q4_1.gguf absent; run scripts/setup"))
struct BatchSchedulerTests {
    static let engine: Engine? = try? Engine.load(path: TestPaths.smolLM2, options: LoadOptions(contextLength: 512))
    func engine() throws -> Engine { try #require(Self.engine) }

    func greedy(_ tokens: Int) -> GenerationParameters {
        var p = GenerationParameters()
        p.sampling = .greedy
        p.maxTokens = tokens
        return p
    }

    func collect(_ stream: AsyncStream<GenerationEvent>) async -> (text: String, stats: GenerationStats?, failure: String?) {
        var text = "", stats: GenerationStats?, failure: String?
        for await e in stream {
            switch e {
            case .text(let s, _): text += s
            case .finished(let s): stats = s
            case .failed(let m): failure = m
            }
        }
        return (text, stats, failure)
    }

    func tokens(_ s: String) throws -> [Int32] { try engine().tokenizer.encode(s, addSpecial: true, parseSpecial: false) }

    @Test func requestsBatchedTogetherGiveWhatEachGivesAlone() async throws {
        let engine = try engine()
        let prompts = ["The capital of France is", "Once upon a time, in a land far away,", "1, 2, 3, 4,", "def fibonacci(n):"]
        var alone: [String] = []
        for p in prompts { alone.append(await collect(try engine.generate(prompt: p, parameters: greedy(16))).text) }
        var limits = SchedulerLimits()
        limits.maxBatch = 4
        limits.prefillChunk = 8  // the prompts are read in several chunks, interleaved with decoding
        let scheduler = BatchScheduler(engine: engine, limits: limits)
        let widest = Widest()
        scheduler.onStep = { widest.note($0) }
        let handles = try prompts.map { try scheduler.submit(tokens: try tokens($0), parameters: greedy(16)) }
        var batched: [String] = []
        for h in handles { batched.append(await collect(h.events).text) }
        #expect(batched == alone)
        #expect(widest.sequences > 1, "the requests never ran in one batch")
        #expect(widest.mixed, "no step decoded one sequence while prefilling another")
        scheduler.shutdown()
        await scheduler.waitUntilStopped()
    }

    /// The benchmark's forced tokens replace the sampled ones on both generation paths, and
    /// `ignoreEndOfSequence` carries on through a forced end-of-generation token.
    @Test func forcedTokensAreGeneratedAndEndOfSequenceCanBeIgnored() async throws {
        let engine = try engine()
        let eos = try #require(engine.tokenizer.eotIDs.first)
        let sentence = " the cat sat on the mat"
        let words = engine.tokenizer.encode(sentence, addSpecial: false, parseSpecial: false)
        let tail = engine.tokenizer.decode([words[1]])
        let scheduler = BatchScheduler(engine: engine)
        for ignore in [false, true] {
            var p = greedy(words.count + 2)
            p.forcedTokens = words + [eos, words[1]]
            p.ignoreEndOfSequence = ignore
            let alone = await collect(try engine.generate(tokens: try tokens("Hello"), parameters: p))
            let batched = await collect(try scheduler.submit(tokens: try tokens("Hello"), parameters: p).events)
            for (path, r) in [("Engine.generate", alone), ("BatchScheduler", batched)] {
                #expect(r.text.hasPrefix(sentence), "\(path): '\(r.text)' does not start with the forced text")
                if ignore {
                    #expect(r.stats?.finishReason == .length && r.stats?.generatedTokens == words.count + 2, "\(path): \(String(describing: r.stats))")
                    #expect(r.text.hasSuffix(tail), "\(path): '\(r.text)' does not end with the token forced after the end token")
                } else {
                    #expect(r.text == sentence && r.stats?.finishReason == .endOfSequence, "\(path): '\(r.text)' \(String(describing: r.stats?.finishReason))")
                }
            }
        }
        var short = greedy(4)
        short.forcedTokens = [words[0]]
        #expect(throws: GenerationError.self) { try scheduler.submit(tokens: try tokens("Hello"), parameters: short) }
        #expect(throws: GenerationError.self) { try engine.generate(tokens: try tokens("Hello"), parameters: short) }
        scheduler.shutdown()
        await scheduler.waitUntilStopped()
    }

    /// A group is admitted at one step (every step of it holds all its sequences, as the
    /// benchmark's lockstep rounds do), and a group the queue cannot take is refused whole.
    @Test func aGroupIsAdmittedTogetherOrNotAtAll() async throws {
        let engine = try engine()
        var limits = SchedulerLimits()
        limits.maxBatch = 3
        limits.maxQueue = 0  // three run at once, none may wait
        limits.prefillChunk = 64
        let scheduler = BatchScheduler(engine: engine, limits: limits)
        let first = FirstStep()
        scheduler.onStep = { first.note($0) }
        let prompts = try ["One", "Two three", "Four five six"].map { try tokens($0) }
        #expect(throws: SchedulerError.queueFull(waiting: 0)) {
            _ = try scheduler.submit(group: (prompts + prompts[0...0]).map { ($0, greedy(4)) })
        }
        #expect(first.step == nil && scheduler.snapshot.queued == 0, "a refused group left requests behind")
        #expect(throws: GenerationError.self) { _ = try scheduler.submit(group: [(prompts[0], greedy(4)), ([], greedy(4))]) }
        let handles = try scheduler.submit(group: prompts.map { ($0, greedy(4)) })
        #expect(Set(handles.map(\.id)).count == 3)
        for (h, p) in zip(handles, prompts) {
            let r = await collect(h.events)
            let alone = await collect(try engine.generate(tokens: p, parameters: greedy(4)))
            #expect(r.text == alone.text)
        }
        let step = try #require(first.step)
        #expect(step.sequences == 3 && step.prefillTokens == prompts.reduce(0) { $0 + $1.count }, "first step: \(step)")
        scheduler.shutdown()
        await scheduler.waitUntilStopped()
    }

    /// A request's KV cache is freed when the request ends, before the next requests' caches are
    /// made: kept until the next step, a finished group's caches stood beside the next group's.
    @Test func finishedRequestsFreeTheirCachesBeforeTheNextAreMade() async throws {
        let engine = try engine()
        var limits = SchedulerLimits()
        limits.maxBatch = 3
        limits.prefillChunk = 64
        let scheduler = BatchScheduler(engine: engine, limits: limits)
        let made = WeakCaches(groupSize: 3)
        scheduler.onCacheMade = { made.add($0) }
        let prompts = try ["One", "Two three", "Four five six"].map { try tokens($0) }
        for round in 0..<2 {
            let handles = try scheduler.submit(group: prompts.map { ($0, greedy(4)) })
            for h in handles { #expect(await collect(h.events).failure == nil) }
            #expect(made.count == 3 * (round + 1))
            #expect(made.alive == 0, "round \(round): \(made.alive) caches of finished requests still held")
            #expect(made.aliveWhenMade == 0, "round \(round): a cache was made beside an earlier group's")
        }
        scheduler.shutdown()
        await scheduler.waitUntilStopped()
    }

    @Test func aLongPromptReadInChunksGivesTheSameContinuation() async throws {
        let engine = try engine()
        let prompt = String(repeating: "The quick brown fox jumps over the lazy dog. ", count: 30)
        let expected = await collect(try engine.generate(prompt: prompt, parameters: greedy(8))).text
        var limits = SchedulerLimits()
        limits.prefillChunk = 50
        let scheduler = BatchScheduler(engine: engine, limits: limits)
        let steps = Widest()
        scheduler.onStep = { steps.note($0) }
        let ids = try tokens(prompt)
        #expect(ids.count > 200)
        let result = await collect(try scheduler.submit(tokens: ids, parameters: greedy(8)).events)
        #expect(result.text == expected)
        #expect(result.stats?.promptTokens == ids.count)
        #expect(steps.count >= ids.count / 50 + 7)
        scheduler.shutdown()
        await scheduler.waitUntilStopped()
    }

    @Test func theQueueAndTheKVBudgetAreEnforced() async throws {
        let engine = try engine()
        var limits = SchedulerLimits()
        limits.maxBatch = 1
        limits.maxQueue = 1
        let perPosition = engine.model.kvBytesPerPosition
        limits.kvCacheBytes = 100 * perPosition
        let scheduler = BatchScheduler(engine: engine, limits: limits)
        let prompt = try tokens("Hello")
        #expect(throws: SchedulerError.exceedsKVBudget(needed: (prompt.count + 200) * perPosition, budget: 100 * perPosition)) {
            _ = try scheduler.submit(tokens: prompt, parameters: greedy(200))
        }
        let a = try scheduler.submit(tokens: prompt, parameters: greedy(40))
        let b = try scheduler.submit(tokens: prompt, parameters: greedy(4))
        #expect(throws: SchedulerError.queueFull(waiting: 1)) { _ = try scheduler.submit(tokens: prompt, parameters: greedy(4)) }
        let ra = await collect(a.events), rb = await collect(b.events)
        #expect(ra.stats?.generatedTokens ?? 0 > 0 && rb.stats?.generatedTokens ?? 0 > 0)
        // b waited for a's slot: a's whole run lies inside b's wait.
        let aRun = (ra.stats?.promptSeconds ?? 0) + (ra.stats?.generationSeconds ?? 0)
        #expect((rb.stats?.queueSeconds ?? 0) >= 0.9 * aRun)
        // Released by the scheduler thread right after the step that ended them.
        for _ in 0..<100 where scheduler.snapshot.kvBytesInUse != 0 { try await Task.sleep(nanoseconds: 10_000_000) }
        #expect(scheduler.snapshot.kvBytesInUse == 0)
        scheduler.shutdown()
        await scheduler.waitUntilStopped()
        #expect(throws: SchedulerError.shuttingDown) { _ = try scheduler.submit(tokens: prompt, parameters: greedy(4)) }
    }

    @Test func cancellingFreesTheSlotForTheNextRequest() async throws {
        let engine = try engine()
        var limits = SchedulerLimits()
        limits.maxBatch = 1
        let scheduler = BatchScheduler(engine: engine, limits: limits)
        var p = greedy(400)
        p.ignoreEndOfSequence = true
        let long = try scheduler.submit(tokens: try tokens("A long story:"), parameters: p)
        let next = try scheduler.submit(tokens: try tokens("Hi"), parameters: greedy(3))
        var pieces = 0
        var finish: FinishReason?
        for await e in long.events {
            if case .text = e { pieces += 1; if pieces == 3 { long.cancel() } }
            if case .finished(let s) = e { finish = s.finishReason }
        }
        #expect(finish == .cancelled)
        let r = await collect(next.events)
        #expect(r.stats != nil && r.failure == nil)
        scheduler.shutdown()
        await scheduler.waitUntilStopped()
    }

    @Test func shutdownCanCancelEverythingAtOnce() async throws {
        let scheduler = BatchScheduler(engine: try engine())
        var p = greedy(400)
        p.ignoreEndOfSequence = true
        let handles = try (0..<3).map { _ in try scheduler.submit(tokens: try tokens("Tell me"), parameters: p) }
        scheduler.shutdown(cancelRunning: true)
        await scheduler.waitUntilStopped()
        for h in handles {
            let r = await collect(h.events)
            #expect(r.stats?.finishReason == .cancelled)
            #expect((r.stats?.generatedTokens ?? 400) < 400)
        }
    }
}

/// What the widest step looked like (written on the scheduler thread, read after).
final class Widest: @unchecked Sendable {
    private let lock = NSLock()
    private var _sequences = 0, _count = 0, _mixed = false
    func note(_ s: SchedulerStep) {
        lock.withLock {
            _sequences = max(_sequences, s.sequences)
            _count += 1
            if s.decodeTokens > 0 && s.prefillTokens > 0 { _mixed = true }
        }
    }
    var sequences: Int { lock.withLock { _sequences } }
    var count: Int { lock.withLock { _count } }
    var mixed: Bool { lock.withLock { _mixed } }
}

/// Weak references to the caches a scheduler made, and how many earlier ones were alive when
/// each group's first cache was made.
final class WeakCaches: @unchecked Sendable {
    private struct Ref { weak var cache: KVCache? }
    private let groupSize: Int
    private let lock = NSLock()
    private var refs: [Ref] = []
    private var _aliveWhenMade = 0
    init(groupSize: Int) { self.groupSize = groupSize }
    func add(_ c: KVCache) {
        lock.withLock {
            if refs.count % groupSize == 0 { _aliveWhenMade += refs.filter { $0.cache != nil }.count }
            refs.append(Ref(cache: c))
        }
    }
    var count: Int { lock.withLock { refs.count } }
    var alive: Int { lock.withLock { refs.filter { $0.cache != nil }.count } }
    var aliveWhenMade: Int { lock.withLock { _aliveWhenMade } }
}

final class FirstStep: @unchecked Sendable {
    private let lock = NSLock()
    private var _step: SchedulerStep?
    func note(_ s: SchedulerStep) { lock.withLock { if _step == nil { _step = s } } }
    var step: SchedulerStep? { lock.withLock { _step } }
}
