import Foundation

/// Splits the neurons of a feed-forward layer into equal-sized experts by how they fire together
/// on calibration text (MoEfication): balanced spherical k-means over each neuron's activation
/// magnitudes across tokens.
package enum NeuronClustering {
    /// Returns, for each of `experts` clusters, its neuron indices (ascending); every cluster has
    /// exactly neurons/experts members.
    /// - activations: [tokens, neurons] row-major.
    package static func cluster(activations: [Float], tokens: Int, neurons: Int, experts: Int, iterations: Int = 15,
                        seed: UInt64 = 0) -> [[Int]] {
        precondition(neurons % experts == 0, "neurons must divide evenly into experts")
        // Feature of neuron j: |a[:, j]| over the tokens, normalised to unit length (cosine geometry).
        var features = [Float](repeating: 0, count: neurons * tokens)  // [neurons, tokens]
        for t in 0..<tokens {
            for j in 0..<neurons { features[j * tokens + t] = abs(activations[t * neurons + j]) }
        }
        for j in 0..<neurons { normalize(&features, offset: j * tokens, count: tokens) }

        // Farthest-point seeding: a random first centroid, then each next one the neuron least
        // similar to every centroid so far, so no two seeds start inside one co-firing group.
        var generator = SeededGenerator(seed: seed)
        var centroids = [Float](repeating: 0, count: experts * tokens)
        var closest = [Float](repeating: -.infinity, count: neurons)
        var pick = Int.random(in: 0..<neurons, using: &generator)
        for e in 0..<experts {
            for t in 0..<tokens { centroids[e * tokens + t] = features[pick * tokens + t] }
            for j in 0..<neurons {
                var s: Float = 0
                for t in 0..<tokens { s += features[j * tokens + t] * centroids[e * tokens + t] }
                closest[j] = max(closest[j], s)
            }
            pick = closest.indices.min { closest[$0] < closest[$1] }!
        }
        let capacity = neurons / experts
        var assignment = [Int](repeating: 0, count: neurons)
        for _ in 0..<iterations {
            assignment = balancedAssign(features: features, centroids: centroids, neurons: neurons, experts: experts,
                                        dims: tokens, capacity: capacity)
            centroids = [Float](repeating: 0, count: experts * tokens)
            for j in 0..<neurons {
                let e = assignment[j]
                for t in 0..<tokens { centroids[e * tokens + t] += features[j * tokens + t] }
            }
            for e in 0..<experts { normalize(&centroids, offset: e * tokens, count: tokens) }
        }
        var clusters = [[Int]](repeating: [], count: experts)
        for j in 0..<neurons { clusters[assignment[j]].append(j) }
        return clusters
    }

    /// Greedy assignment by descending similarity with a hard capacity per cluster: keeps the
    /// experts the same size (so they are interchangeable blocks of equal cost).
    static func balancedAssign(features: [Float], centroids: [Float], neurons: Int, experts: Int, dims: Int,
                               capacity: Int) -> [Int] {
        var pairs: [(sim: Float, neuron: Int32, expert: Int32)] = []
        pairs.reserveCapacity(neurons * experts)
        features.withUnsafeBufferPointer { f in
            centroids.withUnsafeBufferPointer { c in
                for j in 0..<neurons {
                    for e in 0..<experts {
                        var s: Float = 0
                        for t in 0..<dims { s += f[j * dims + t] * c[e * dims + t] }
                        pairs.append((s, Int32(j), Int32(e)))
                    }
                }
            }
        }
        pairs.sort { $0.sim > $1.sim || ($0.sim == $1.sim && ($0.neuron, $0.expert) < ($1.neuron, $1.expert)) }
        var assignment = [Int](repeating: -1, count: neurons)
        var fill = [Int](repeating: 0, count: experts)
        var left = neurons
        for p in pairs where left > 0 {
            let j = Int(p.neuron), e = Int(p.expert)
            if assignment[j] >= 0 || fill[e] >= capacity { continue }
            assignment[j] = e
            fill[e] += 1
            left -= 1
        }
        return assignment
    }

    private static func normalize(_ v: inout [Float], offset: Int, count: Int) {
        var ss: Float = 0
        for i in 0..<count { ss += v[offset + i] * v[offset + i] }
        let inv = ss > 0 ? 1 / ss.squareRoot() : 0
        for i in 0..<count { v[offset + i] *= inv }
    }
}

/// Fits a linear router that predicts, from the hidden state entering a feed-forward layer, how
/// strongly each expert's neurons fire (the L2 norm of its activations), by ridge regression.
package enum RouterFitting {
    /// Returns router weights [experts, hidden].
    /// - inputs: [tokens, hidden]; targets: [tokens, experts].
    package static func fit(inputs: [Float], targets: [Float], tokens: Int, hidden: Int, experts: Int, ridge: Double = 1e-3) -> [Float] {
        // Normal equations in double: (XᵀX + λ·tr/n·I) W = XᵀY.
        var xtx = [Double](repeating: 0, count: hidden * hidden)
        var xty = [Double](repeating: 0, count: hidden * experts)
        for t in 0..<tokens {
            for i in 0..<hidden {
                let xi = Double(inputs[t * hidden + i])
                if xi == 0 { continue }
                for j in i..<hidden { xtx[i * hidden + j] += xi * Double(inputs[t * hidden + j]) }
                for e in 0..<experts { xty[i * experts + e] += xi * Double(targets[t * experts + e]) }
            }
        }
        var trace = 0.0
        for i in 0..<hidden {
            for j in 0..<i { xtx[i * hidden + j] = xtx[j * hidden + i] }
            trace += xtx[i * hidden + i]
        }
        let lambda = ridge * max(trace / Double(hidden), 1e-12)
        for i in 0..<hidden { xtx[i * hidden + i] += lambda }
        let w = choleskySolve(xtx, xty, n: hidden, columns: experts)  // [hidden, experts]
        var router = [Float](repeating: 0, count: experts * hidden)
        for e in 0..<experts { for i in 0..<hidden { router[e * hidden + i] = Float(w[i * experts + e]) } }
        return router
    }

    /// Solves A X = B for symmetric positive definite A [n, n], B [n, columns].
    static func choleskySolve(_ a: [Double], _ b: [Double], n: Int, columns: Int) -> [Double] {
        var l = [Double](repeating: 0, count: n * n)
        for i in 0..<n {
            for j in 0...i {
                var s = a[i * n + j]
                for k in 0..<j { s -= l[i * n + k] * l[j * n + k] }
                l[i * n + j] = i == j ? max(s, 1e-300).squareRoot() : s / l[j * n + j]
            }
        }
        var x = b
        for c in 0..<columns {
            for i in 0..<n {  // L y = b
                var s = x[i * columns + c]
                for k in 0..<i { s -= l[i * n + k] * x[k * columns + c] }
                x[i * columns + c] = s / l[i * n + i]
            }
            for i in stride(from: n - 1, through: 0, by: -1) {  // Lᵀ x = y
                var s = x[i * columns + c]
                for k in (i + 1)..<n { s -= l[k * n + i] * x[k * columns + c] }
                x[i * columns + c] = s / l[i * n + i]
            }
        }
        return x
    }
}
