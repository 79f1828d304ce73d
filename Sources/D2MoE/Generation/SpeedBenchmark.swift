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
        /// Memory read bandwidth measured in the same run (bytes/s, all threads).
        public var readBandwidth: Double
        /// Generation speed as a fraction of the bandwidth limit (bytes per token ÷ bandwidth).
        public var bandwidthFraction: Double
        public var peakResidentBytes: Int
    }

    public static func run(engine: Engine, promptTokens: Int, generateTokens: Int, repetitions: Int) throws -> Result {
        try onComputeThread { try measure(engine: engine, promptTokens: promptTokens, generateTokens: generateTokens,
                                          repetitions: repetitions) }
    }

    static func measure(engine: Engine, promptTokens: Int, generateTokens: Int, repetitions: Int) throws -> Result {
        let model = engine.model
        guard promptTokens + generateTokens <= engine.contextLength else {
            throw GenerationError.promptTooLong(tokens: promptTokens + generateTokens, context: engine.contextLength)
        }
        var generator = SeededGenerator(seed: 42)
        let vocab = model.info.vocabularySize
        let cache = model.makeCache(capacity: engine.contextLength)
        var logits = [Float](repeating: 0, count: vocab)
        var pp: [Double] = [], tg: [Double] = []
        // One warm-up round, then the measured ones.
        for round in 0...max(1, repetitions) {
            let tokens = (0..<max(promptTokens, 1)).map { _ in Int32.random(in: 0..<Int32(vocab), using: &generator) }
            if promptTokens > 0 {
                cache.clear()
                let batch = tokens.enumerated().map {
                    BatchToken(sequence: 0, position: $0.offset, token: $0.element, wantsLogits: $0.offset == tokens.count - 1)
                }
                let start = DispatchTime.now()
                try logits.withUnsafeMutableBufferPointer { try model.forward(batch, caches: [cache], logits: $0.baseAddress!) }
                if round > 0 { pp.append(Double(promptTokens) / seconds(since: start)) }
            }
            if generateTokens > 0 {
                cache.clear()
                var token = tokens[0]
                let start = DispatchTime.now()
                for position in 0..<generateTokens {
                    let step = [BatchToken(sequence: 0, position: position, token: token, wantsLogits: true)]
                    try logits.withUnsafeMutableBufferPointer { try model.forward(step, caches: [cache], logits: $0.baseAddress!) }
                    token = Int32(position % vocab)
                }
                if round > 0 { tg.append(Double(generateTokens) / seconds(since: start)) }
            }
        }
        func meanStd(_ v: [Double]) -> (Double, Double) {
            guard !v.isEmpty else { return (0, 0) }
            let m = v.reduce(0, +) / Double(v.count)
            return (m, (v.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(max(1, v.count - 1))).squareRoot())
        }
        let (ppMean, ppStd) = meanStd(pp), (tgMean, tgStd) = meanStd(tg)
        let perToken = model.decodeBytesPerToken
        let bandwidth = MemoryBandwidth.measureRead(pool: model.pool)
        return Result(promptTokens: promptTokens, generateTokens: generateTokens, promptTokensPerSecond: ppMean,
                      promptStdDev: ppStd, generationTokensPerSecond: tgMean, generationStdDev: tgStd,
                      threads: model.pool.threadCount, weightBytes: model.weightBytes, weightBytesPerToken: perToken,
                      generationGBPerSecond: Double(perToken) * tgMean / 1e9, readBandwidth: bandwidth,
                      bandwidthFraction: Double(perToken) * tgMean / bandwidth,
                      peakResidentBytes: ProcessMemory.peakResidentBytes)
    }
}

/// Memory figures from the operating system.
public enum ProcessMemory {
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
    let done = DispatchSemaphore(value: 0)
    let thread = Thread {
        box.result = Result { try body() }
        done.signal()
    }
    thread.stackSize = 8 << 20
    thread.start()
    done.wait()
    return try box.result!.get()
}

private final class ResultBox<T>: @unchecked Sendable {
    var result: Result<T, Error>?
}
