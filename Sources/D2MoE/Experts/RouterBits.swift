import Foundation
import D2MoEFormats
import D2MoEKernels

/// The trained bit-width routers of a file (DESIGN §3.1), arranged by the layer numbering a
/// `BitWidthPolicy` is called with: MoE layers for routed experts, decoder layers for a dense
/// model's FFNs (each one expert, 0).
public struct BitRouterTable: Sendable {
    public let hidden: Int
    public let levels: Int
    /// [policy layer][expert] → index into `routers`.
    let index: [[Int]]
    let routers: [MWQRouter]

    /// `decoderLayers[i]`: the decoder layer of policy layer i; `experts`: experts per layer.
    /// Every (layer, expert) must have a router.
    public init(set: MWQRouterSet, decoderLayers: [Int], experts: Int, origin: String) throws {
        var byKey: [Int: Int] = [:]
        for (i, r) in set.routers.enumerated() { byKey[r.layer * 1_000_000 + r.expert] = i }
        index = try decoderLayers.map { l in
            try (0..<experts).map { e in
                guard let i = byKey[l * 1_000_000 + e] else {
                    throw ModelError("\(origin): no bit-width router for layer \(l) expert \(e) (train them with d2moe train-router)")
                }
                return i
            }
        }
        hidden = set.hidden
        levels = set.levels
        routers = set.routers
    }

    /// The router's logits for one input row.
    func logits(layer: Int, expert: Int, x: UnsafePointer<Float>, into z: inout [Float]) {
        let r = routers[index[layer][expert]]
        r.weight.withUnsafeBufferPointer { w in
            for k in 0..<levels { z[k] = Kernels.dot(w.baseAddress! + k * hidden, x, n: hidden) + r.bias[k] }
        }
    }

    /// The 0-based level argmax_k (z_k + bias·(k − (K−1)/2)) over the levels in `range`; ties go
    /// to the lower level. The shift is linear in k, so the chosen level never falls as the bias
    /// grows (the knob is monotone, which `solveBias` relies on).
    static func choose(_ z: UnsafePointer<Float>, levels: Int, bias: Float, range: ClosedRange<Int>? = nil) -> Int {
        let mid = Float(levels - 1) / 2
        let range = range ?? 0...(levels - 1)
        var best = range.lowerBound
        var bestValue = -Float.infinity
        for k in range {
            let v = z[k] + bias * (Float(k) - mid)
            if v > bestValue { bestValue = v; best = k }
        }
        return best
    }

    /// Average bits per expert-token over the calibration logits stored with the routers, at
    /// `bias`; nil when none were stored.
    public func calibrationAverageBits(bits: [Int], bias: Float, range: ClosedRange<Int>? = nil) -> Double? {
        var sum = 0.0, weight = 0.0
        for r in routers where !r.calibrationLogits.isEmpty {
            r.calibrationLogits.withUnsafeBufferPointer { z in
                for row in 0..<(r.calibrationLogits.count / levels) {
                    sum += r.calibrationWeight * Double(bits[Self.choose(z.baseAddress! + row * levels, levels: levels, bias: bias, range: range)])
                    weight += r.calibrationWeight
                }
            }
        }
        return weight > 0 ? sum / weight : nil
    }

    /// The levels whose bits bracket `target`: the highest level at or below it to the lowest at
    /// or above it (one level when `target` is a level's bits).
    public static func bracket(bits: [Int], target: Double) -> ClosedRange<Int> {
        let lo = bits.lastIndex { Double($0) <= target + 1e-9 } ?? 0
        let hi = bits.firstIndex { Double($0) >= target - 1e-9 } ?? bits.count - 1
        return min(lo, hi)...max(lo, hi)
    }

    /// The knob's bias whose average bits on the calibration logits come closest to `target`
    /// (`--target-bits`), by bisection: average bits are a non-decreasing step function of it.
    /// `range` limits the levels chosen from.
    public func solveBias(bits: [Int], target: Double, range: ClosedRange<Int>? = nil) throws -> Float {
        let calibrationAverageBits = { (bits: [Int], bias: Float) in self.calibrationAverageBits(bits: bits, bias: bias, range: range) }
        guard let lowest = calibrationAverageBits(bits, -1e6), let highest = calibrationAverageBits(bits, 1e6) else {
            throw ModelError("the routers carry no calibration logits to solve --target-bits on (train them again)")
        }
        guard target >= lowest - 1e-9, target <= highest + 1e-9 else {
            throw ModelError(String(format: "--target-bits %.3f is outside what the routers reach (%.3f to %.3f)", target, lowest, highest))
        }
        var lo: Float = -1, hi: Float = 1
        while calibrationAverageBits(bits, lo)! > target, lo > -1e6 { lo *= 2 }
        while calibrationAverageBits(bits, hi)! < target, hi < 1e6 { hi *= 2 }
        for _ in 0..<60 {
            let mid = (lo + hi) / 2
            if calibrationAverageBits(bits, mid)! < target { lo = mid } else { hi = mid }
        }
        let a = calibrationAverageBits(bits, lo)!, b = calibrationAverageBits(bits, hi)!
        return abs(a - target) < abs(b - target) ? lo : hi
    }
}

/// The dual-routing bit-width policy (`--bit-policy router`): each chosen expert's trained router
/// reads the token's normed hidden state and its argmax picks the level; `bias` (`--bits-bias`)
/// adds bias·(k − mean k) to the logits of level k, negative toward fewer bits.
public struct RouterBits: BitWidthPolicy {
    public let table: BitRouterTable
    public let bias: Float
    /// 0-based levels the argmax is taken over (nil: all).
    public let range: ClosedRange<Int>?
    public var name: String { "router" }

    public init(table: BitRouterTable, bias: Float = 0, range: ClosedRange<Int>? = nil) {
        self.table = table
        self.bias = bias
        self.range = range
    }

    public func levels(layer: Int, input: UnsafePointer<Float>, hidden: Int, routes: ExpertRoutes, nExperts: Int, levelCount: Int,
                       into levels: inout [Int]) {
        precondition(hidden == table.hidden, "bit-width routers of width \(table.hidden) given inputs of width \(hidden)")
        var z = [Float](repeating: 0, count: table.levels)
        let k = routes.topK
        for t in 0..<routes.tokens {
            for j in 0..<k {
                table.logits(layer: layer, expert: Int(routes.experts[t * k + j]), x: input + t * hidden, into: &z)
                let level = z.withUnsafeBufferPointer { BitRouterTable.choose($0.baseAddress!, levels: table.levels, bias: bias, range: range) }
                levels[t * k + j] = min(level + 1, levelCount)
            }
        }
    }
}

/// Bit-widths chosen per (token, expert), per layer and overall (`--stats`, `--json`).
public struct BitWidthStats: Codable, Sendable {
    public var policy: String
    /// Bits of each level.
    public var bits: [Int]
    /// [layer][level − 1]: expert-tokens run at that level.
    public var layers: [[Int]]

    public init(policy: String, bits: [Int], layers: [[Int]]) {
        self.policy = policy
        self.bits = bits
        self.layers = layers
    }

    /// From the streaming pipeline's counters.
    public init(_ s: ExpertStreamStats) {
        self.init(policy: s.bitPolicy, bits: s.bits, layers: s.layers.map(\.expertTokens))
    }

    /// Expert-tokens per level over all layers.
    public var total: [Int] { bits.indices.map { k in layers.reduce(0) { $0 + $1[k] } } }

    static func average(_ counts: [Int], _ bits: [Int]) -> Double {
        let n = counts.reduce(0, +)
        return n == 0 ? 0 : Double(zip(counts, bits).reduce(0) { $0 + $1.0 * $1.1 }) / Double(n)
    }

    /// Average bits per expert-token.
    public var averageBits: Double { Self.average(total, bits) }
    public var layerAverageBits: [Double] { layers.map { Self.average($0, bits) } }

    /// Share of expert-tokens at each level.
    public var distribution: [Double] {
        let t = total, n = max(t.reduce(0, +), 1)
        return t.map { Double($0) / Double(n) }
    }

    enum CodingKeys: String, CodingKey { case policy, bits, layers, total, averageBits = "average_bits", distribution }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(policy, forKey: .policy)
        try c.encode(bits, forKey: .bits)
        try c.encode(layers, forKey: .layers)
        try c.encode(total, forKey: .total)
        try c.encode(averageBits, forKey: .averageBits)
        try c.encode(distribution, forKey: .distribution)
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(policy: try c.decode(String.self, forKey: .policy), bits: try c.decode([Int].self, forKey: .bits),
                  layers: try c.decode([[Int]].self, forKey: .layers))
    }

    /// Lines for `--stats`: the overall distribution, then one line per layer when asked.
    public func summary(perLayer: Bool = true) -> String {
        func share(_ counts: [Int]) -> String {
            let n = max(counts.reduce(0, +), 1)
            return zip(bits, counts).map { String(format: "%d:%.1f%%", $0, 100 * Double($1) / Double(n)) }.joined(separator: " ")
        }
        var lines = [String(format: "bit-widths (%@): average %.3f bits per expert-token over %d | %@",
                            policy, averageBits, total.reduce(0, +), share(total))]
        if perLayer {
            for (l, c) in layers.enumerated() { lines.append(String(format: "  layer %2d: %.2f bits | %@", l, Self.average(c, bits), share(c))) }
        }
        return lines.joined(separator: "\n")
    }
}

extension RouterBits {
    /// The routers stored in `file` for policy layers `decoderLayers` with `experts` each, the knob
    /// from `options` (`targetBits` solved on the stored calibration logits, else `bitsBias`).
    static func make(file: MWQFile, decoderLayers: [Int], experts: Int, options: LoadOptions) throws -> RouterBits {
        let set: MWQRouterSet?
        do { set = try file.routers() } catch let e as FormatError { throw ModelError(e.description) }
        guard let set else { throw ModelError("\(file.path): --bit-policy router needs trained routers in the file (d2moe train-router)") }
        let table = try BitRouterTable(set: set, decoderLayers: decoderLayers, experts: experts, origin: file.path)
        if let target = options.targetBits {
            let bits = file.header.quantization.bits
            let range = options.adjacentRouterLevels ? BitRouterTable.bracket(bits: bits, target: target) : nil
            return RouterBits(table: table, bias: try table.solveBias(bits: bits, target: target, range: range), range: range)
        }
        return RouterBits(table: table, bias: Float(options.bitsBias))
    }
}
