import Foundation
import D2MoEFormats
import D2MoEKernels

/// A bit-width policy applied to experts held in memory (resident routed experts, or a dense
/// model's FFNs, each one expert): the experts are loaded at the file's highest level and each
/// (token, expert) is computed on the prefix of planes its level reads, so one load serves every
/// level. Counts what was chosen for `--stats`.
public final class BitRouting: @unchecked Sendable {
    public let policy: BitWidthPolicy
    /// Bits of each level of the file.
    public let bits: [Int]
    private var counts: [[Int]]
    private let lock = NSLock()

    init(policy: BitWidthPolicy, bits: [Int], layers: Int) {
        self.policy = policy
        self.bits = bits
        counts = Array(repeating: Array(repeating: 0, count: bits.count), count: layers)
    }

    /// Expert-tokens per level and layer since the last `resetStats`.
    public var stats: BitWidthStats {
        lock.lock()
        defer { lock.unlock() }
        return BitWidthStats(policy: policy.name, bits: bits, layers: counts)
    }

    public func resetStats() {
        lock.lock()
        for l in counts.indices { for k in counts[l].indices { counts[l][k] = 0 } }
        lock.unlock()
    }

    /// The policy's levels for `routes` (rows of `x`), counted.
    func levels(layer: Int, x: UnsafePointer<Float>, hidden: Int, routes: ExpertRoutes, nExperts: Int) -> [Int] {
        var levels = [Int](repeating: bits.count, count: routes.experts.count)
        policy.levels(layer: layer, input: x, hidden: hidden, routes: routes, nExperts: nExperts, levelCount: bits.count, into: &levels)
        lock.lock()
        for l in levels { counts[layer][l - 1] += 1 }
        lock.unlock()
        return levels
    }
}

extension Linear {
    /// The same packed matrix computed at `level` (≤ the level it was loaded at): the first
    /// planes of a nested file's record, no copy.
    func atLevel(_ level: Int) throws -> Linear {
        guard case .mwq(let p) = storage else {
            throw ModelError("per-token bit-widths need experts on their packed planes (drop --dequantize)")
        }
        guard level >= 1, level <= p.level else { throw ModelError("level \(level) is above the \(p.level) levels loaded") }
        let v = p.view
        let view = MWQMatrixView(rows: v.rows, cols: v.cols, group: v.group, baseBits: v.baseBits, levels: Array(v.levels.prefix(level)))
        return Linear(packed: PackedMWQ(view: view, level: level, owner: p.owner))
    }
}

extension FeedForward {
    /// This FFN at each of the levels 1...`count` (the last is itself).
    func levelCopies(_ count: Int) throws -> [FeedForward] {
        try (1...count).map { k in
            FeedForward(gate: try gate.atLevel(k), up: try up.atLevel(k), down: try down.atLevel(k), activation: activation)
        }
    }
}

/// Computes rows of x through one of several versions of an expert (its levels), each row at
/// the level given, with buffers kept between calls.
final class LevelGroups {
    private var gathered: [Float] = [], result: [Float] = [], gate: [Float] = [], up: [Float] = []

    /// For each level used: rows[i] of x (of width `hidden`) → expert at that level, handed to
    /// `emit(row index i, output row)`.
    func run(_ versions: [FeedForward], rows: [Int], levels: [Int], x: UnsafePointer<Float>, hidden: Int,
             emit: (Int, UnsafePointer<Float>) -> Void) {
        for level in 1...versions.count {
            let members = rows.indices.filter { levels[$0] == level }
            guard !members.isEmpty else { continue }
            let f = versions[level - 1], n = members.count
            if gathered.count < n * hidden { gathered = Array(repeating: 0, count: n * hidden); result = gathered }
            if gate.count < n * f.intermediate { gate = Array(repeating: 0, count: n * f.intermediate); up = gate }
            gathered.withUnsafeMutableBufferPointer { g in
                result.withUnsafeMutableBufferPointer { y in
                    gate.withUnsafeMutableBufferPointer { gb in
                        up.withUnsafeMutableBufferPointer { ub in
                            for (i, m) in members.enumerated() { (g.baseAddress! + i * hidden).update(from: x + rows[m] * hidden, count: hidden) }
                            f(g.baseAddress!, tokens: n, y.baseAddress!, gateBuffer: gb.baseAddress!, upBuffer: ub.baseAddress!)
                            for (i, m) in members.enumerated() { emit(m, y.baseAddress! + i * hidden) }
                        }
                    }
                }
            }
        }
    }
}

/// A dense model's FFNs under a bit-width policy: each FFN is expert 0 of its decoder layer.
final class MixedLevelDense {
    let routing: BitRouting
    /// [decoder layer][level − 1]
    let ffns: [[FeedForward]]
    private let groups = LevelGroups()

    init(routing: BitRouting, ffns: [[FeedForward]]) {
        self.routing = routing
        self.ffns = ffns
    }

    /// out: [tokens, hidden] = layer `layer`'s FFN of x, each token at its level.
    func callAsFunction(layer: Int, _ x: UnsafePointer<Float>, tokens: Int, hidden: Int, _ out: UnsafeMutablePointer<Float>) {
        let routes = ExpertRoutes(topK: 1, experts: Array(repeating: 0, count: tokens), weights: Array(repeating: 1, count: tokens),
                                  probabilities: Array(repeating: 1, count: tokens))
        let levels = routing.levels(layer: layer, x: x, hidden: hidden, routes: routes, nExperts: 1)
        groups.run(ffns[layer], rows: Array(0..<tokens), levels: levels, x: x, hidden: hidden) { t, y in
            (out + t * hidden).update(from: y, count: hidden)
        }
    }
}

extension TransformerModel {
    /// Serves the experts held in memory under `policy`: routed experts when the model has any
    /// (layers counted as MoE layers), otherwise every dense FFN as expert 0 of its decoder
    /// layer. The model must have been loaded at the file's highest level of a nested file.
    func useBitPolicy(_ policy: BitWidthPolicy, bits: [Int]) throws -> BitRouting {
        if info.moeLayerCount > 0 {
            guard let resident = experts as? ResidentExperts else {
                throw ModelError("per-token bit-widths for routed experts need them resident or streamed (--memory-budget)")
            }
            let routing = BitRouting(policy: policy, bits: bits, layers: info.moeLayerCount)
            resident.mixed = (routing, try resident.experts.map { try $0.map { try $0.levelCopies(bits.count) } })
            bitRouting = routing
            return routing
        }
        let routing = BitRouting(policy: policy, bits: bits, layers: layers.count)
        let ffns: [[FeedForward]] = try layers.map { layer in
            guard case .dense(let f) = layer.ffn else { throw ModelError("a dense model with a sparse layer") }
            return try f.levelCopies(bits.count)
        }
        mixedDense = MixedLevelDense(routing: routing, ffns: ffns)
        bitRouting = routing
        return routing
    }

    /// The FFN of decoder layer `layer` (a dense block, expert 0) or routed expert `expert` of
    /// MoE layer `moeLayer`, as loaded (router training computes it at every level).
    func loadedFFN(layer: Int, expert: Int) -> FeedForward? {
        switch layers[layer].ffn {
        case .dense(let f): return expert == 0 ? f : nil
        case .sparse(let moe): return (experts as? ResidentExperts)?.experts[moe.moeLayer][expert]
        }
    }

    /// The decoder layer of each MoE layer, or every decoder layer for a dense model: the layer
    /// numbering bit-width policies are called with, mapped to the file's record layers.
    var policyLayers: [Int] {
        if info.moeLayerCount == 0 { return Array(layers.indices) }
        var map = [Int](repeating: 0, count: info.moeLayerCount)
        for (i, l) in layers.enumerated() { if case .sparse(let m) = l.ffn { map[m.moeLayer] = i } }
        return map
    }
}
