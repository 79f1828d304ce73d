import Foundation
import D2MoEKernels

/// Prompt-processing and generation speed measured the way llama-bench does: pp = one pass over
/// a prompt of random tokens, tg = tokens generated one at a time from an empty cache.
public enum SpeedBenchmark {
    public struct Result: Codable, Sendable {
        public var promptTokens: Int
        public var generateTokens: Int
        public var promptTokensPerSecond: Double
        public var promptStdDev: Double
        public var generationTokensPerSecond: Double
        public var generationStdDev: Double
        public var threads: Int
        public var weightBytes: Int
        /// Bytes of weights one decode step reads (every dense matrix once).
        public var weightBytesPerToken: Int
        public var generationGBPerSecond: Double
        /// Memory read bandwidth measured in the same run (bytes/s, all threads); 0 when experts
        /// stream under a memory budget (the probe is skipped).
        public var readBandwidth: Double
        /// Generation speed as a fraction of the bandwidth limit (bytes per token ÷ bandwidth); 0
        /// when the probe is skipped.
        public var bandwidthFraction: Double
        public var peakResidentBytes: Int
        /// Sequences run in lockstep: pp processes all their prompts in one pass, each tg step
        /// decodes one token of every sequence; tokens/s count all sequences.
        public var requests: Int = 1
        /// Streamed experts (with a memory budget): what the measured rounds read and computed.
        public var experts: ExpertStreamStats?
        /// KV-cache bytes of all sequences.
        public var kvCacheBytes: Int = 0
        /// Resident memory when the measurement began (after loading), and the peak during it
        /// (the peak is reset at the start where the OS allows: `peakReset`).
        public var startResidentBytes: Int = 0
        public var runPeakResidentBytes: Int = 0
        public var peakReset = false
        /// What fed the model: `lockstep` (this benchmark's own loop) or `scheduler` (the serving
        /// path's `BatchScheduler`, sampling included).
        public var driver: Driver = .lockstep
    }

    /// The loop a benchmark runs the model with.
    public enum Driver: String, Codable, Sendable, CaseIterable {
        /// The benchmark's own loop: every sequence one forward pass per step, nothing sampled.
        case lockstep
        /// The requests go through a `BatchScheduler`, as the server's do: the same batches, plus
        /// the scheduler's admission, sampling and streaming of every token.
        case scheduler
    }

    /// `text`: real tokens to feed instead of random ones (sequence s, round r starts at a
    /// different offset), so that expert routing is the model's routing of real text.
    public static func run(engine: Engine, promptTokens: Int, generateTokens: Int, repetitions: Int, requests: Int = 1,
                           text: [Int32]? = nil, driver: Driver = .lockstep) throws -> Result {
        switch driver {
        case .lockstep:
            return try onComputeThread { try measure(engine: engine, promptTokens: promptTokens, generateTokens: generateTokens,
                                                     repetitions: repetitions, requests: requests, text: text) }
        case .scheduler:
            return try measureScheduled(engine: engine, promptTokens: promptTokens, generateTokens: generateTokens,
                                        repetitions: repetitions, requests: requests, text: text)
        }
    }

    /// The checks both drivers make; returns the span of text tokens one sequence's round uses.
    static func check(engine: Engine, promptTokens: Int, generateTokens: Int, requests: Int, text: [Int32]?) throws -> Int {
        guard promptTokens + generateTokens <= engine.contextLength else {
            throw GenerationError.promptTooLong(tokens: promptTokens + generateTokens, context: engine.contextLength)
        }
        guard requests >= 1 else { throw GenerationError.invalidParameter("requests must be ≥ 1") }
        let span = max(promptTokens, generateTokens, 1)
        if let text, text.count < span + 1 {
            throw GenerationError.invalidParameter("the benchmark text has \(text.count) tokens, fewer than \(span + 1)")
        }
        return span
    }

    /// The real token at `i` of sequence `s` in round `round`: each (round, sequence) reads its own
    /// window of `span` tokens.
    static func textToken(_ text: [Int32], span: Int, requests: Int, round: Int, sequence s: Int, _ i: Int) -> Int32 {
        let windows = max(1, (text.count - 1) / span)
        return text[((round * requests + s) % windows) * span + i]
    }

    static func measure(engine: Engine, promptTokens: Int, generateTokens: Int, repetitions: Int, requests: Int,
                        text: [Int32]? = nil) throws -> Result {
        let model = engine.model
        let span = try check(engine: engine, promptTokens: promptTokens, generateTokens: generateTokens, requests: requests, text: text)
        func textToken(_ text: [Int32], round: Int, sequence s: Int, _ i: Int) -> Int32 {
            Self.textToken(text, span: span, requests: requests, round: round, sequence: s, i)
        }
        var generator = SeededGenerator(seed: 42)
        let vocab = model.info.vocabularySize
        let capacity = promptTokens + generateTokens
        let caches = (0..<requests).map { _ in model.makeCache(capacity: max(capacity, 1)) }
        var logits = [Float](repeating: 0, count: vocab * requests)
        var pp: [Double] = [], tg: [Double] = []
        let streamed = model.experts as? StreamingExperts
        let memory = MemoryWatch()
        // One warm-up round, then the measured ones.
        for round in 0...max(1, repetitions) {
            if round == 1 { streamed?.resetStats() }
            let tokens = (0..<requests).map { s in
                (0..<max(promptTokens, 1)).map { i in text.map { textToken($0, round: round, sequence: s, i) } ?? Int32.random(in: 0..<Int32(vocab), using: &generator) }
            }
            if promptTokens > 0 {
                for c in caches { c.clear() }
                var batch: [BatchToken] = []
                for (s, prompt) in tokens.enumerated() {
                    for (p, t) in prompt.enumerated() {
                        batch.append(BatchToken(sequence: s, position: p, token: t, wantsLogits: p == prompt.count - 1))
                    }
                }
                let start = DispatchTime.now()
                try logits.withUnsafeMutableBufferPointer { try model.forward(batch, caches: caches, logits: $0.baseAddress!) }
                if round > 0 { pp.append(Double(promptTokens * requests) / seconds(since: start)) }
            }
            if generateTokens > 0 {
                for c in caches { c.clear() }
                var step = (0..<requests).map { BatchToken(sequence: $0, position: 0, token: tokens[$0][0], wantsLogits: true) }
                let start = DispatchTime.now()
                for position in 0..<generateTokens {
                    for s in 0..<requests { step[s].position = position }
                    try logits.withUnsafeMutableBufferPointer { try model.forward(step, caches: caches, logits: $0.baseAddress!) }
                    for s in 0..<requests {
                        step[s].token = text.map { textToken($0, round: round, sequence: s, position + 1) } ?? Int32((position * 31 + s * 7919) % vocab)
                    }
                }
                if round > 0 { tg.append(Double(generateTokens * requests) / seconds(since: start)) }
            }
        }
        return result(engine: engine, promptTokens: promptTokens, generateTokens: generateTokens, requests: requests,
                      pp: pp, tg: tg, memory: memory, kvCacheBytes: caches.reduce(0) { $0 + $1.byteCount }, driver: .lockstep)
    }

    /// Resident memory when a measurement began, and the peak reset where the OS allows.
    struct MemoryWatch {
        let startResident = ProcessMemory.residentBytes
        let loadPeak = ProcessMemory.peakResidentBytes
        let reset = ProcessMemory.resetPeak()
    }

    /// The result of measured rounds: means and deviations, memory, expert statistics and the
    /// bandwidth probe (last, so its buffers do not count as the run's memory).
    static func result(engine: Engine, promptTokens: Int, generateTokens: Int, requests: Int, pp: [Double], tg: [Double],
                       memory: MemoryWatch, kvCacheBytes: Int, driver: Driver) -> Result {
        let model = engine.model
        func meanStd(_ v: [Double]) -> (Double, Double) {
            guard !v.isEmpty else { return (0, 0) }
            let m = v.reduce(0, +) / Double(v.count)
            return (m, (v.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(max(1, v.count - 1))).squareRoot())
        }
        let (ppMean, ppStd) = meanStd(pp), (tgMean, tgStd) = meanStd(tg)
        let perToken = model.decodeBytesPerToken
        let runPeak = ProcessMemory.peakResidentBytes
        let expertStats = (model.experts as? StreamingExperts)?.stats
        // Under a memory budget the probe's 512 MiB would come on top of the pool (a process kept
        // to resident + budget by a cgroup is killed by it), and expert bytes come from the disk,
        // so a fraction of memory bandwidth says nothing there.
        let bandwidth = expertStats == nil ? MemoryBandwidth.measureRead(pool: model.pool) : 0
        return Result(promptTokens: promptTokens, generateTokens: generateTokens, promptTokensPerSecond: ppMean,
                      promptStdDev: ppStd, generationTokensPerSecond: tgMean, generationStdDev: tgStd,
                      threads: model.pool.threadCount, weightBytes: model.weightBytes, weightBytesPerToken: perToken,
                      generationGBPerSecond: Double(perToken) * tgMean / 1e9, readBandwidth: bandwidth,
                      bandwidthFraction: bandwidth > 0 ? Double(perToken) * tgMean / bandwidth : 0,
                      peakResidentBytes: max(memory.loadPeak, runPeak), requests: requests, experts: expertStats,
                      kvCacheBytes: kvCacheBytes, startResidentBytes: memory.startResident,
                      runPeakResidentBytes: runPeak, peakReset: memory.reset, driver: driver)
    }
}

/// Memory figures from the operating system.
public enum ProcessMemory {
    /// Resident set size now (VmRSS on Linux), in bytes; 0 where unknown.
    public static var residentBytes: Int { statusField("VmRSS:") ?? 0 }

    /// Starts the peak over again from the current resident size (Linux: clear_refs 5), so a
    /// benchmark's peak excludes what loading needed only for a while. False where unsupported.
    @discardableResult
    public static func resetPeak() -> Bool {
        guard let h = FileHandle(forWritingAtPath: "/proc/self/clear_refs") else { return false }
        defer { try? h.close() }
        return (try? h.write(contentsOf: Data("5".utf8))) != nil
    }

    private static func statusField(_ name: String) -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix(name) }),
              let kb = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") else { return nil }
        return kb * 1024
    }

    /// Peak resident set size (VmHWM on Linux, ru_maxrss elsewhere), in bytes.
    public static var peakResidentBytes: Int {
        if let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
           let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
           let kb = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") {
            return kb * 1024
        }
        var usage = rusage()
        #if os(Linux)
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return usage.ru_maxrss * 1024
        #else
        getrusage(RUSAGE_SELF, &usage)
        return usage.ru_maxrss
        #endif
    }
}

/// Runs long synchronous compute on a dedicated thread and waits for it, rather than blocking a
/// thread of Swift's cooperative pool for seconds.
func onComputeThread<T>(_ body: @escaping @Sendable () throws -> T) throws -> T {
    let box = ResultBox<T>()
    box.body = body
    let done = DispatchSemaphore(value: 0)
    // The thread object outlives `done` (and may be kept by Foundation): it must not hold what
    // `body` captured, or a benchmarked engine would stay alive after the call.
    let thread = Thread { [box] in
        box.result = Result { try box.body!() }
        box.body = nil
        done.signal()
    }
    thread.stackSize = 8 << 20
    thread.start()
    done.wait()
    return try box.result!.get()
}

private final class ResultBox<T>: @unchecked Sendable {
    var body: (@Sendable () throws -> T)?
    var result: Result<T, Error>?
}
