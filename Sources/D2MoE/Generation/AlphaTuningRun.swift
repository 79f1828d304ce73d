import Foundation

extension AlphaTuning {
    /// Measures decode latency at each candidate α on `engine` (its streamed experts must run
    /// SMoE substitution), fits it and leaves the chosen α set (`--latency-target MS`). Each
    /// candidate decodes `tokens` tokens of `text` (random tokens without it) after one warm-up
    /// pass; statistics are reset afterwards so the tuning does not count in the run's.
    public static func tune(engine: Engine, targetMilliseconds: Double, candidates: [Double] = [0, 0.1, 0.2, 0.3, 0.4, 0.5],
                            tokens: Int = 32, text: [Int32]? = nil) throws -> Result {
        guard targetMilliseconds > 0, targetMilliseconds.isFinite else {
            throw GenerationError.invalidParameter("the latency target must be a positive number of milliseconds, got \(targetMilliseconds)")
        }
        guard let streamed = engine.model.experts as? StreamingExperts, let smoe = streamed.missPolicy as? SMoESubstitution else {
            throw GenerationError.invalidParameter("--latency-target chooses SMoE's α: it needs --memory-budget and --policy smoe")
        }
        guard !candidates.isEmpty, candidates.allSatisfy({ (0...1).contains($0) }) else {
            throw GenerationError.invalidParameter("α candidates must be in [0, 1]")
        }
        var measured: [Double: Double] = [:]
        for alpha in candidates {
            streamed.missPolicy = SMoESubstitution(alpha: alpha, weighting: smoe.weighting)
            let r = try SpeedBenchmark.run(engine: engine, promptTokens: 0, generateTokens: tokens, repetitions: 1, text: text)
            measured[alpha] = 1000 / max(r.generationTokensPerSecond, 1e-9)
        }
        let result = choose(targetMilliseconds: targetMilliseconds, candidates: candidates, measured: measured)
        streamed.missPolicy = SMoESubstitution(alpha: result.alpha, weighting: smoe.weighting)
        streamed.resetStats()
        return result
    }
}
