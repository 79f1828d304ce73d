import Foundation
import Testing
import D2MoE

@Suite struct MoEficationTests {
    @Test func clusteringRecoversNeuronsThatFireTogether() {
        // 4 groups of 8 neurons; group g fires only on tokens t with t % 4 == g.
        let neurons = 32, experts = 4, tokens = 64
        var generator = SeededGenerator(seed: 3)
        let permutation = Array(0..<neurons).shuffled(using: &generator)
        var activations = [Float](repeating: 0, count: tokens * neurons)
        for t in 0..<tokens {
            for j in 0..<neurons where permutation[j] / 8 == t % 4 {
                activations[t * neurons + j] = Float.random(in: 0.5...2, using: &generator)
            }
        }
        let clusters = NeuronClustering.cluster(activations: activations, tokens: tokens, neurons: neurons, experts: experts)
        #expect(clusters.map(\.count) == [8, 8, 8, 8])
        for cluster in clusters {
            #expect(Set(cluster.map { permutation[$0] / 8 }).count == 1, "cluster mixes groups: \(cluster)")
        }
        #expect(Set(clusters.joined()) == Set(0..<neurons))
    }

    @Test func routerFitRecoversALinearMap() {
        let hidden = 12, experts = 3, tokens = 400
        var generator = SeededGenerator(seed: 5)
        let truth = (0..<(experts * hidden)).map { _ in Float.random(in: -1...1, using: &generator) }
        let x = (0..<(tokens * hidden)).map { _ in Float.random(in: -1...1, using: &generator) }
        var y = [Float](repeating: 0, count: tokens * experts)
        for t in 0..<tokens {
            for e in 0..<experts {
                y[t * experts + e] = (0..<hidden).reduce(0) { $0 + truth[e * hidden + $1] * x[t * hidden + $1] }
            }
        }
        let fitted = RouterFitting.fit(inputs: x, targets: y, tokens: tokens, hidden: hidden, experts: experts, ridge: 1e-9)
        let err = zip(fitted, truth).map { abs($0 - $1) }.max()!
        #expect(err < 1e-3)
    }

    @Test func ggufQKPermutationRoundTrips() {
        let heads = 3, headDim = 8, cols = 5
        let w = (0..<(heads * headDim * cols)).map { Float($0) }
        let p = GGUFWeights.permute(w, heads: heads, cols: cols)
        #expect(p != w)
        #expect(GGUFWeights.unpermute(p, heads: heads, cols: cols) == w)
        // Row 1 of a head in llama.cpp's layout is the first row of the head's second half.
        #expect(Array(p[(1 * cols)..<(2 * cols)]) == Array(w[((headDim / 2) * cols)..<((headDim / 2 + 1) * cols)]))
    }
}
