import Foundation

/// How the next token is chosen. Defaults follow llama.cpp's: penalties, then top-k, top-p and
/// min-p filtering, then temperature; temperature ≤ 0 is greedy.
public struct SamplingParameters: Sendable, Equatable {
    public var temperature: Float = 0.8
    /// Keep the k most likely tokens (0 = all).
    public var topK: Int = 40
    /// Keep the smallest set whose probability reaches p (1 = all).
    public var topP: Float = 0.95
    /// Drop tokens less likely than minP × the most likely one (0 = none).
    public var minP: Float = 0.05
    /// Divides positive (multiplies negative) logits of recently seen tokens (1 = off).
    public var repetitionPenalty: Float = 1
    /// How many recent tokens the penalty looks at.
    public var repetitionWindow: Int = 64
    /// Seed of the random generator; the same seed and inputs give the same tokens.
    public var seed: UInt64 = 0

    public init() {}

    /// Greedy decoding: always the most likely token.
    public static var greedy: SamplingParameters {
        var p = SamplingParameters()
        p.temperature = 0
        return p
    }

    /// Rejects values no sampler can honour.
    public func validate() throws {
        func fail(_ s: String) -> GenerationError { GenerationError.invalidParameter(s) }
        guard temperature.isFinite, temperature >= 0 else { throw fail("temperature must be ≥ 0, got \(temperature)") }
        guard topK >= 0 else { throw fail("top-k must be ≥ 0, got \(topK)") }
        guard topP.isFinite, topP > 0, topP <= 1 else { throw fail("top-p must be in (0, 1], got \(topP)") }
        guard minP.isFinite, minP >= 0, minP <= 1 else { throw fail("min-p must be in [0, 1], got \(minP)") }
        guard repetitionPenalty.isFinite, repetitionPenalty > 0 else {
            throw fail("repetition penalty must be > 0, got \(repetitionPenalty)")
        }
        guard repetitionWindow >= 0 else { throw fail("repetition window must be ≥ 0, got \(repetitionWindow)") }
    }
}

/// A small, fast, seedable generator (xoshiro256**), so sampling is reproducible everywhere.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    private var s: (UInt64, UInt64, UInt64, UInt64)

    public init(seed: UInt64) {
        // SplitMix64 spreads a small seed over the whole state.
        var x = seed
        func next() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        s = (next(), next(), next(), next())
    }

    public mutating func next() -> UInt64 {
        let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0; s.3 ^= s.1; s.1 ^= s.2; s.0 ^= s.3
        s.2 ^= t
        s.3 = (s.3 << 45) | (s.3 >> 19)
        return result
    }
}

/// Picks tokens from logits; keeps its random state and the candidate buffer between calls.
public struct Sampler: Sendable {
    public let parameters: SamplingParameters
    private var generator: SeededGenerator
    private var candidates: [(id: Int32, logit: Float)] = []
    private var weights: [Double] = []

    public init(_ parameters: SamplingParameters) {
        self.parameters = parameters
        generator = SeededGenerator(seed: parameters.seed)
    }

    /// The next token given the logits of one position and the tokens so far (for penalties).
    public mutating func sample(_ logits: UnsafePointer<Float>, vocabularySize n: Int, history: [Int32]) -> Int32 {
        let p = parameters
        var penalised: [Int: Float] = [:]
        if p.repetitionPenalty != 1 {
            for id in history.suffix(p.repetitionWindow) where Int(id) < n && penalised[Int(id)] == nil {
                let l = logits[Int(id)]
                penalised[Int(id)] = l > 0 ? l / p.repetitionPenalty : l * p.repetitionPenalty
            }
        }
        let plain = penalised.isEmpty
        func logit(_ i: Int) -> Float { plain ? logits[i] : (penalised[i] ?? logits[i]) }

        if p.temperature <= 0 {
            var best = 0
            var bestLogit = logit(0)
            for i in 1..<n where logit(i) > bestLogit { best = i; bestLogit = logit(i) }
            return Int32(best)
        }

        if (p.topK == 0 || p.topK >= n) && p.topP >= 1 && p.minP <= 0 {
            // Nothing is filtered: draw from the softmax as it is, without sorting the vocabulary
            // (a full sort per token was most of a batch step's time at 32 sequences).
            var maxLogit = logit(0)
            for i in 1..<n { maxLogit = max(maxLogit, logit(i)) }
            if weights.count < n { weights = [Double](repeating: 0, count: n) }
            var sum = 0.0
            for i in 0..<n {
                let w = Foundation.exp(Double((logit(i) - maxLogit) / p.temperature))
                weights[i] = w
                sum += w
            }
            var r = Double.random(in: 0..<1, using: &generator) * sum
            for i in 0..<n {
                r -= weights[i]
                if r < 0 { return Int32(i) }
            }
            return Int32(n - 1)
        }

        candidates.removeAll(keepingCapacity: true)
        if p.topK > 0 && p.topK < n {
            // The k largest, kept sorted as they are found (k is small next to the vocabulary).
            for i in 0..<n {
                let l = logit(i)
                if candidates.count == p.topK {
                    guard l > candidates[p.topK - 1].logit else { continue }
                    candidates.removeLast()
                }
                var lo = 0, hi = candidates.count
                while lo < hi {
                    let mid = (lo + hi) / 2
                    if candidates[mid].logit >= l { lo = mid + 1 } else { hi = mid }
                }
                candidates.insert((Int32(i), l), at: lo)
            }
        } else {
            for i in 0..<n { candidates.append((Int32(i), logit(i))) }
            candidates.sort { $0.logit > $1.logit }
        }

        // Probabilities at temperature 1 decide the top-p and min-p cuts, as in llama.cpp.
        let maxLogit = candidates[0].logit
        var probs = candidates.map { Foundation.exp(Double($0.logit - maxLogit)) }
        let total = probs.reduce(0, +)
        if p.topP < 1 {
            var cumulative = 0.0
            var keep = probs.count
            for (i, q) in probs.enumerated() {
                cumulative += q / total
                if cumulative >= Double(p.topP) { keep = i + 1; break }
            }
            candidates.removeLast(candidates.count - keep)
            probs.removeLast(probs.count - keep)
        }
        if p.minP > 0 {
            let keep = max(1, probs.prefix { $0 >= Double(p.minP) }.count)
            candidates.removeLast(candidates.count - keep)
            probs.removeLast(probs.count - keep)
        }
        let weights = candidates.map { Foundation.exp(Double(($0.logit - maxLogit) / p.temperature)) }
        let sum = weights.reduce(0, +)
        var r = Double.random(in: 0..<1, using: &generator) * sum
        for i in 0..<weights.count {
            r -= weights[i]
            if r < 0 { return candidates[i].id }
        }
        return candidates[candidates.count - 1].id
    }
}
