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
