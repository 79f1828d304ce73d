import Foundation
import D2MoETokenizers

/// How much a `BatchScheduler` takes on at once.
public struct SchedulerLimits: Sendable {
    /// Sequences in the running batch (`--max-batch`).
    public var maxBatch = 8
    /// Requests waiting for a slot (`--max-queue`); one more is refused with `.queueFull`.
    public var maxQueue = 64
    /// Bytes the KV caches of all running sequences may hold together; nil: `maxBatch` caches of
    /// the whole context. A request waits until its cache fits, and is refused if it never can.
    public var kvCacheBytes: Int?
    /// Prompt tokens processed per step over all sequences still reading their prompts, so one
    /// long prompt is spread over steps that also decode everyone else.
    public var prefillChunk = 128

    public init() {}
}

/// Why a `BatchScheduler` refused a request.
public enum SchedulerError: Error, CustomStringConvertible, Sendable, Equatable {
    case queueFull(waiting: Int)
    case shuttingDown
    case exceedsKVBudget(needed: Int, budget: Int)

    public var description: String {
        switch self {
        case .queueFull(let n): return "the queue is full (\(n) requests waiting); retry later"
        case .shuttingDown: return "the server is shutting down"
        case .exceedsKVBudget(let needed, let budget):
            return "the request needs \(needed) bytes of KV cache, more than the budget of \(budget) bytes; ask for fewer tokens"
        }
    }
}

/// A submitted request: its event stream (the same events `Engine.generate` streams) and a way
/// to cancel it. Dropping the stream's consumer cancels it too.
public struct ScheduledRequest: Sendable {
    public let id: Int
    public let promptTokens: Int
    public let events: AsyncStream<GenerationEvent>
    let flag: CancellationFlag

    /// Frees the request's slot and KV cache at the next step.
    public func cancel() { flag.set() }
}

/// What one step of the scheduler did, for metrics.
public struct SchedulerStep: Sendable {
    /// Sequences in the step's batch.
    public var sequences: Int
    public var decodeTokens: Int
    public var prefillTokens: Int
    public var seconds: Double
}

/// The scheduler's state at one moment.
public struct SchedulerSnapshot: Sendable {
    public var queued: Int
    public var running: Int
    public var kvBytesInUse: Int
    public var kvBytesBudget: Int
}

/// Continuous batching (DESIGN §5): requests join the running batch at the next step, prompts are
/// fed in chunks between other sequences' decode steps, and each step is one forward pass over
/// every running sequence. One thread owns the model; `submit` may be called from anywhere.
public final class BatchScheduler: @unchecked Sendable {
    public let engine: Engine
    public let limits: SchedulerLimits
    /// Called on the scheduler thread after every step.
    public var onStep: (@Sendable (SchedulerStep) -> Void)?
    /// Test hook: runs before each forward pass with the ids of the requests in it; throwing makes
    /// that pass fail as a failing model step would.
    package var stepFault: (@Sendable ([Int]) throws -> Void)?
    /// Called on the scheduler thread with each request's KV cache when it is made (tests; the
    /// benchmark's KV figure).
    package var onCacheMade: (@Sendable (KVCache) -> Void)?

    private let condition = NSCondition()
    private var queue: [Slot] = []
    private var running: [Slot] = []
    private var kvInUse = 0
    private var nextID = 0
    private var stopping = false
    private var exited = false
    private var exitWaiters: [CheckedContinuation<Void, Never>] = []
    private let kvBudget: Int
    /// The running sequences of the current step and their caches, in batch-sequence order.
    private var live: [Slot] = []
    private var caches: [KVCache] = []
    private let bytesPerPosition: Int

    public init(engine: Engine, limits: SchedulerLimits = .init()) {
        self.engine = engine
        var limits = limits
        limits.maxBatch = max(1, limits.maxBatch)
        limits.maxQueue = max(0, limits.maxQueue)
        limits.prefillChunk = max(1, limits.prefillChunk)
        self.limits = limits
        bytesPerPosition = engine.model.kvBytesPerPosition
        kvBudget = limits.kvCacheBytes ?? limits.maxBatch * engine.contextLength * bytesPerPosition
        let thread = Thread { [self] in loop() }
        thread.stackSize = 8 << 20
        thread.name = "d2moe-scheduler"
        thread.start()
    }

    /// Queues a tokenized prompt. Throws when the request cannot run (the same checks as
    /// `Engine.generate`), when the queue is full, or when shutting down.
    public func submit(tokens: [Int32], parameters: GenerationParameters) throws -> ScheduledRequest {
        try submit(group: [(tokens, parameters)])[0]
    }

    /// Queues several requests at once, so they are admitted at the same step (a benchmark round,
    /// as concurrent clients' requests would be). Each is checked as `submit(tokens:parameters:)`
    /// checks it; if any is refused, none is queued.
    public func submit(group: [(tokens: [Int32], parameters: GenerationParameters)]) throws -> [ScheduledRequest] {
        let prepared = try group.map { try prepare(tokens: $0.tokens, parameters: $0.parameters) }
        condition.lock()
        defer { condition.unlock() }
        guard !stopping else { throw SchedulerError.shuttingDown }
        // Requests that will have to wait for a slot (queued ones not yet admitted into free slots count as running).
        let waiting = queue.count + running.count - limits.maxBatch
        guard waiting + prepared.count <= limits.maxQueue else { throw SchedulerError.queueFull(waiting: max(0, waiting)) }
        var handles: [ScheduledRequest] = []
        for (slot, events) in prepared {
            slot.id = nextID
            nextID += 1
            queue.append(slot)
            handles.append(ScheduledRequest(id: slot.id, promptTokens: slot.prompt.count, events: events, flag: slot.flag))
        }
        condition.signal()
        return handles
    }

    /// Checks one request and makes its slot (numbered when queued) and event stream.
    private func prepare(tokens: [Int32], parameters: GenerationParameters) throws -> (Slot, AsyncStream<GenerationEvent>) {
        try parameters.validate(vocabularySize: engine.model.info.vocabularySize)
        guard !tokens.isEmpty else { throw GenerationError.emptyPrompt }
        let context = engine.contextLength
        guard tokens.count < context else { throw GenerationError.promptTooLong(tokens: tokens.count, context: context) }
        if let bad = tokens.first(where: { $0 < 0 || Int($0) >= engine.model.info.vocabularySize }) {
            throw GenerationError.invalidParameter("token id \(bad) is outside the vocabulary")
        }
        let capacity = min(context, tokens.count + parameters.maxTokens)
        let kvBytes = capacity * bytesPerPosition
        guard kvBytes <= kvBudget else { throw SchedulerError.exceedsKVBudget(needed: kvBytes, budget: kvBudget) }
        let flag = CancellationFlag()
        let (stream, continuation) = AsyncStream<GenerationEvent>.makeStream(bufferingPolicy: .unbounded)
        continuation.onTermination = { _ in flag.set() }
        let slot = Slot(prompt: tokens, parameters: parameters, capacity: capacity, kvBytes: kvBytes, flag: flag,
                        continuation: continuation, tokenizer: engine.tokenizer)
        return (slot, stream)
    }

    public var snapshot: SchedulerSnapshot {
        condition.lock()
        defer { condition.unlock() }
        return SchedulerSnapshot(queued: queue.count, running: running.count, kvBytesInUse: kvInUse, kvBytesBudget: kvBudget)
    }

    /// Stops accepting requests; with `cancelRunning`, also cancels every queued and running one.
    /// Those not cancelled run to their end.
    public func shutdown(cancelRunning: Bool = false) {
        condition.lock()
        stopping = true
        if cancelRunning { for s in queue + running { s.flag.set() } }
        condition.signal()
        condition.unlock()
    }

    /// Returns once the scheduler has shut down and every request has ended.
    public func waitUntilStopped() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            condition.lock()
            if exited { condition.unlock(); c.resume(); return }
            exitWaiters.append(c)
            condition.unlock()
        }
    }

    // MARK: The scheduler thread

    private func loop() {
        var logits: [Float] = []
        var batch: [BatchToken] = []
        while true {
            condition.lock()
            while queue.isEmpty && running.isEmpty && !stopping { condition.wait() }
            if stopping && queue.isEmpty && running.isEmpty {
                exited = true
                let waiters = exitWaiters
                exitWaiters = []
                condition.unlock()
                for w in waiters { w.resume() }
                return
            }
            // Admit in arrival order while there is a slot and the head's cache fits.
            while let head = queue.first {
                if head.flag.isSet {
                    queue.removeFirst()
                    head.finish(.cancelled)
                    head.deliverEnd()
                    continue
                }
                guard running.count < limits.maxBatch, kvInUse + head.kvBytes <= kvBudget else { break }
                queue.removeFirst()
                kvInUse += head.kvBytes
                running.append(head)
            }
            condition.unlock()
            for s in running where s.cache == nil {
                s.admit(model: engine.model)
                onCacheMade?(s.cache!)
            }
            step(&batch, &logits)
            // Release what ended.
            let ended = running.filter(\.done)
            guard !ended.isEmpty else { continue }
            condition.lock()
            running.removeAll(where: \.done)
            for s in ended { kvInUse -= s.kvBytes; s.cache = nil }
            condition.unlock()
            // Only now, with the slot free, does the consumer learn the request ended: a request
            // sent right after another finished finds its slot.
            for s in ended { s.deliverEnd() }
        }
    }

    private func step(_ batch: inout [BatchToken], _ logits: inout [Float]) {
        for s in running where s.flag.isSet { s.finish(.cancelled) }
        // Reused between steps (scheduler thread only), so a step allocates nothing for them.
        live.removeAll(keepingCapacity: true)
        caches.removeAll(keepingCapacity: true)
        for s in running where !s.done {
            live.append(s)
            caches.append(s.cache!)
        }
        guard !live.isEmpty else { return }
        batch.removeAll(keepingCapacity: true)
        var decode = 0
        for (i, s) in live.enumerated() where s.prefilled == s.prompt.count {
            batch.append(BatchToken(sequence: i, position: s.cache!.count, token: s.pending, wantsLogits: true))
            decode += 1
        }
        var budget = max(1, limits.prefillChunk - decode)
        for (i, s) in live.enumerated() where s.prefilled < s.prompt.count && budget > 0 {
            let n = min(budget, s.prompt.count - s.prefilled)
            for p in s.prefilled..<(s.prefilled + n) {
                batch.append(BatchToken(sequence: i, position: p, token: s.prompt[p], wantsLogits: p == s.prompt.count - 1))
            }
            budget -= n
        }
        let vocab = engine.model.info.vocabularySize
        let wanted = batch.reduce(0) { $0 + ($1.wantsLogits ? 1 : 0) }
        if logits.count < max(1, wanted) * vocab { logits = [Float](repeating: 0, count: max(1, wanted) * vocab) }
        let start = DispatchTime.now()
        let failed = forward(batch, live: live, logits: &logits)
        // Advance each sequence: consume its prompt chunk, sample where logits came back.
        var row = 0
        var prefillTokens = 0
        var counted = Set<Int>()
        for bt in batch {
            let s = live[bt.sequence]
            let isPrompt = s.prefilled < s.prompt.count && bt.position < s.prompt.count
            if isPrompt { prefillTokens += 1 }
            defer { if bt.wantsLogits { row += 1 } }
            if let message = failed[bt.sequence] {
                if counted.insert(bt.sequence).inserted { s.fail(message) }
                continue
            }
            if isPrompt { s.prefilled = bt.position + 1 }
            guard bt.wantsLogits else { continue }
            logits.withUnsafeBufferPointer { s.accept(logits: $0.baseAddress! + row * vocab, vocabularySize: vocab, context: engine.contextLength) }
        }
        onStep?(SchedulerStep(sequences: live.count, decodeTokens: decode, prefillTokens: prefillTokens, seconds: seconds(since: start)))
        // A request that ended in this step must not keep its cache alive through these lists
        // until the next step: the next requests' caches would be made beside it, and the freed
        // memory stays with the allocator (32 olmoe-1b-7b prompts of 16 tokens: 133 MiB more peak).
        live.removeAll(keepingCapacity: true)
        caches.removeAll(keepingCapacity: true)
    }

    /// Runs the batch; if it fails with several sequences in it, runs each sequence alone so that
    /// only the ones whose step fails are failed. Returns failure messages by sequence index.
    private func forward(_ batch: [BatchToken], live: [Slot], logits: inout [Float]) -> [Int: String] {
        let model = engine.model
        do {
            try stepFault?(Array(Set(batch.map { live[$0.sequence].id })).sorted())
            try logits.withUnsafeMutableBufferPointer { try model.forward(batch, caches: caches, logits: $0.baseAddress!) }
            return [:]
        } catch {
            let sequences = Array(Set(batch.map(\.sequence))).sorted()
            guard sequences.count > 1 else { return [sequences[0]: String(describing: error)] }
            var failed: [Int: String] = [:]
            let vocab = model.info.vocabularySize
            // Row offsets of each sequence's wanted logits in the shared buffer.
            var rowOf: [Int: Int] = [:]
            var r = 0
            for bt in batch where bt.wantsLogits { rowOf[bt.sequence] = r; r += 1 }
            for i in sequences {
                let own = batch.filter { $0.sequence == i }.map {
                    BatchToken(sequence: 0, position: $0.position, token: $0.token, wantsLogits: $0.wantsLogits)
                }
                var out = [Float](repeating: 0, count: vocab)
                do {
                    try stepFault?([live[i].id])
                    try out.withUnsafeMutableBufferPointer { try model.forward(own, caches: [caches[i]], logits: $0.baseAddress!) }
                    if let row = rowOf[i] { logits.replaceSubrange((row * vocab)..<((row + 1) * vocab), with: out) }
                } catch {
                    failed[i] = String(describing: error)
                }
            }
            return failed
        }
    }
}

/// One request from submission to its end; touched only by the scheduler thread once queued.
private final class Slot {
    /// Set when queued, under the scheduler's lock.
    var id = -1
    let prompt: [Int32]
    let parameters: GenerationParameters
    let capacity: Int
    let kvBytes: Int
    let flag: CancellationFlag
    let continuation: AsyncStream<GenerationEvent>.Continuation
    let submitted = DispatchTime.now()
    var cache: KVCache?
    /// Prompt tokens already in the cache.
    var prefilled = 0
    /// The sampled token the next step feeds.
    var pending: Int32 = 0
    var done = false
    private var end: GenerationEvent?
    private var decoding: SequenceDecoding
    private var stats: GenerationStats
    private var admitted = DispatchTime.now()
    private var firstToken: DispatchTime?

    init(prompt: [Int32], parameters: GenerationParameters, capacity: Int, kvBytes: Int, flag: CancellationFlag,
         continuation: AsyncStream<GenerationEvent>.Continuation, tokenizer: any Tokenizer) {
        self.prompt = prompt
        self.parameters = parameters
        self.capacity = capacity
        self.kvBytes = kvBytes
        self.flag = flag
        self.continuation = continuation
        decoding = SequenceDecoding(prompt: prompt, parameters: parameters, tokenizer: tokenizer)
        stats = GenerationStats(promptTokens: prompt.count, generatedTokens: 0, promptSeconds: 0, generationSeconds: 0,
                                finishReason: .length)
    }

    func admit(model: TransformerModel) {
        cache = model.makeCache(capacity: capacity)
        admitted = DispatchTime.now()
        stats.queueSeconds = Double(admitted.uptimeNanoseconds - submitted.uptimeNanoseconds) / 1e9
    }

    /// Samples the next token from this sequence's logits and emits or finishes.
    func accept(logits: UnsafePointer<Float>, vocabularySize: Int, context: Int) {
        if firstToken == nil {
            firstToken = DispatchTime.now()
            stats.promptSeconds = seconds(since: admitted)
        }
        let a = decoding.accept(logits: logits, vocabularySize: vocabularySize, cached: cache!.count, room: min(capacity, context))
        stats.generatedTokens = decoding.generated
        if !a.text.isEmpty { continuation.yield(.text(a.text, tokens: [a.token])) }
        if let reason = a.end { return finish(reason) }
        pending = a.token
    }

    func finish(_ reason: FinishReason) {
        guard !done else { return }
        done = true
        stats.finishReason = reason
        let rest = decoding.remainder(endingWith: reason)
        if !rest.isEmpty { continuation.yield(.text(rest, tokens: [])) }
        if let firstToken { stats.generationSeconds = seconds(since: firstToken) }
        end = .finished(stats)
    }

    func fail(_ message: String) {
        guard !done else { return }
        done = true
        end = .failed(message)
    }

    /// Sends the last event (held back by `finish`/`fail` until the slot is released).
    func deliverEnd() {
        if let end { continuation.yield(end) }
        end = nil
        continuation.finish()
    }
}
