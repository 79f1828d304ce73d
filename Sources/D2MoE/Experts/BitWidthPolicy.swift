/// Chooses the level (bit-width) each chosen expert of each token runs at (DESIGN §3.4: the
/// pipeline counts B[e][k] from these).
public protocol BitWidthPolicy: Sendable {
    /// The `--bit-policy` name.
    var name: String { get }
    /// levels[t·topK + j] = the 1-based level (of `levelCount`) for expert slot j of token t.
    /// `input` [routes.tokens, hidden] is what enters the MoE layer (after its norm), the rows
    /// the routes were computed from: trained bit-width routers read it, rules on gate scores
    /// ignore it. `layer` counts MoE layers (decoder layers for a dense model's FFNs).
    func levels(layer: Int, input: UnsafePointer<Float>, hidden: Int, routes: ExpertRoutes, nExperts: Int, levelCount: Int,
                into levels: inout [Int])
}

/// Every expert at one level (`--bits N`).
public struct UniformBits: BitWidthPolicy {
    /// 1-based level.
    public let level: Int
    public init(level: Int) { self.level = level }
    public var name: String { "uniform" }
    public func levels(layer: Int, input: UnsafePointer<Float>, hidden: Int, routes: ExpertRoutes, nExperts: Int, levelCount: Int,
                       into levels: inout [Int]) {
        let l = min(max(level, 1), levelCount)
        for i in levels.indices { levels[i] = l }
    }
}

/// HOBBIT's rule (DESIGN §3.5) by gate scores: a token's chosen experts ranked by router
/// probability; an expert whose more important companions already hold less than `thresholds[0]`
/// of the chosen probability runs at the highest level (so the top expert always does), below
/// `thresholds[1]` one level lower, and the rest at the lowest level.
public struct GateScoreBits: BitWidthPolicy {
    public let thresholds: [Double]
    public init(thresholds: [Double] = [0.6, 0.9]) { self.thresholds = thresholds }
    public var name: String { "gate" }
    public func levels(layer: Int, input: UnsafePointer<Float>, hidden: Int, routes: ExpertRoutes, nExperts: Int, levelCount: Int,
                       into levels: inout [Int]) {
        let k = routes.topK
        for t in 0..<routes.tokens {
            var scores: [(slot: Int, p: Float)] = (0..<k).map { j in
                (j, routes.probabilities[t * nExperts + Int(routes.experts[t * k + j])])
            }
            scores.sort { $0.p > $1.p || ($0.p == $1.p && $0.slot < $1.slot) }
            let total = max(scores.reduce(0) { $0 + Double($1.p) }, .leastNormalMagnitude)
            var before = 0.0
            for s in scores {
                let share = before / total
                let level: Int
                if share < thresholds[0] { level = levelCount }
                else if thresholds.count > 1, share < thresholds[1] { level = max(1, levelCount - 1) }
                else { level = 1 }
                levels[t * k + s.slot] = level
                before += Double(s.p)
            }
        }
    }
}
