import Foundation
import Testing
import D2MoE

@Suite struct SamplerTests {
    let logits: [Float] = [0.5, 2.0, -1.0, 1.5, 0.0, 1.9]

    func sample(_ p: SamplingParameters, _ logits: [Float], history: [Int32] = [], count: Int = 1) -> [Int32] {
        var sampler = Sampler(p)
        return (0..<count).map { _ in logits.withUnsafeBufferPointer { sampler.sample($0.baseAddress!, vocabularySize: logits.count, history: history) } }
    }

    @Test func greedyPicksTheLargestLogit() {
        #expect(sample(.greedy, logits, count: 5) == [1, 1, 1, 1, 1])
    }

    @Test func sameSeedSameTokensDifferentSeedDifferentTokens() {
        var p = SamplingParameters()
        p.temperature = 1.5
        p.topK = 0; p.topP = 1; p.minP = 0
        p.seed = 7
        let a = sample(p, logits, count: 64), b = sample(p, logits, count: 64)
        p.seed = 8
        let c = sample(p, logits, count: 64)
        #expect(a == b)
        #expect(a != c)
    }

    @Test func topKOneIsGreedy() {
        var p = SamplingParameters()
        p.temperature = 5
        p.topK = 1
        #expect(Set(sample(p, logits, count: 50)) == [1])
    }

    @Test func topKKeepsTheKLargestAndTheirProportions() {
        // Tokens 1 (2.0), 5 (1.9) and 3 (1.5) are the three largest.
        var p = SamplingParameters()
        p.temperature = 1
        p.topK = 3; p.topP = 1; p.minP = 0
        let draws = sample(p, logits, count: 6000)
        #expect(Set(draws) == [1, 3, 5])
        let share1 = Double(draws.filter { $0 == 1 }.count) / 6000
        let expected = exp(2.0) / (exp(2.0) + exp(1.9) + exp(1.5))
        #expect(abs(share1 - expected) < 0.03)
    }

    @Test func topPKeepsOnlyTheNucleus() {
        // Probabilities ∝ e^l: tokens 1 and 5 hold ~63% together; p = 0.5 keeps tokens 1 and 5 only.
        var p = SamplingParameters()
        p.temperature = 1
        p.topK = 0; p.minP = 0; p.topP = 0.5
        #expect(Set(sample(p, logits, count: 300)).isSubset(of: [1, 5]))
    }

    @Test func minPDropsUnlikelyTokens() {
        var p = SamplingParameters()
        p.temperature = 1
        p.topK = 0; p.topP = 1; p.minP = 0.5  // keeps tokens with e^(l - 2) ≥ 0.5: ids 1, 3, 5
        #expect(Set(sample(p, logits, count: 300)) == [1, 3, 5])
    }

    @Test func samplingFollowsTheSoftmax() {
        var p = SamplingParameters()
        p.temperature = 1
        p.topK = 0; p.topP = 1; p.minP = 0
        let draws = sample(p, logits, count: 20000)
        let z = logits.map { exp(Double($0)) }.reduce(0, +)
        for id in 0..<logits.count {
            let expected = exp(Double(logits[id])) / z
            let observed = Double(draws.filter { $0 == Int32(id) }.count) / Double(draws.count)
            // 5 standard deviations of a binomial proportion.
            #expect(abs(observed - expected) < 5 * (expected * (1 - expected) / Double(draws.count)).squareRoot() + 1e-3)
        }
    }

    @Test func repetitionPenaltyDemotesSeenTokens() {
        var p = SamplingParameters.greedy
        p.repetitionPenalty = 1.2  // 2.0 → 1.67 < 1.9
        #expect(sample(p, logits, history: [1]) == [5])
    }

    @Test func invalidParametersAreRejected() {
        var p = SamplingParameters()
        p.temperature = -1
        #expect(throws: GenerationError.self) { try p.validate() }
        p = SamplingParameters(); p.topP = 0
        #expect(throws: GenerationError.self) { try p.validate() }
        p = SamplingParameters(); p.repetitionPenalty = 0
        #expect(throws: GenerationError.self) { try p.validate() }
    }
}

@Suite struct StopStringTests {
    func run(_ pieces: [String], stops: [String]) -> (String, Bool) {
        var f = StopStringFilter(stops: stops)
        var out = ""
        for piece in pieces {
            let (emit, stopped) = f.push(piece)
            out += emit
            if stopped { return (out, true) }
        }
        return (out + f.finish(""), false)
    }

    @Test func stopStringSplitAcrossPiecesIsNeverEmitted() {
        #expect(run(["Hello", " wo", "rl", "d and more"], stops: ["world"]) == ("Hello ", true))
    }

    @Test func heldBackPrefixIsReleasedWhenItDoesNotMatch() {
        #expect(run(["a <", "|b", "c"], stops: ["<|end|>"]) == ("a <|bc", false))
    }

    @Test func earliestStopWins() {
        #expect(run(["x STOP y END"], stops: ["END", "STOP"]) == ("x ", true))
    }

    @Test func noStopsPassesEverything() {
        #expect(run(["a", "b"], stops: []) == ("ab", false))
    }
}
