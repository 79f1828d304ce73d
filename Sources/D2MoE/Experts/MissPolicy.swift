import Foundation

/// What happened to the (token, expert) slots of one MoE layer step under a `MissPolicy`.
public struct MissCounts: Codable, Sendable, Equatable {
    /// Slots whose expert was replaced by another (SMoE substitution).
    public var substituted = 0
    /// Slots run at a lower level than the bit-width policy chose (HOBBIT's low-bit fallback).
    public var downgraded = 0
    /// Slots not computed at all (HOBBIT's skip).
    public var skipped = 0

    public init() {}

    mutating func add(_ o: MissCounts) {
        substituted += o.substituted; downgraded += o.downgraded; skipped += o.skipped
    }
}

/// What a miss policy may ask of the pool: the highest level of an expert whose pieces are all
/// resident or already on their way (0: none), as it stands when the layer step is planned.
public typealias ResidentLevel = (_ expert: Int) -> Int

/// Decides what to do with chosen experts that are not resident (DESIGN §3.5): run them as routed
/// (read them), run a resident substitute, run a lower level, or skip them. It runs once per MoE
/// layer step, after the bit-width policy, before anything is read.
public protocol MissPolicy: Sendable {
    /// The name shown in statistics.
    var name: String { get }
    /// Rewrites `routes` (experts and weights) and `levels` (0 skips a slot) in place.
    func resolve(routes: inout ExpertRoutes, levels: inout [Int], nExperts: Int, levelCount: Int,
                 residentLevel: ResidentLevel, counts: inout MissCounts)
    /// Whether slot `slot` of routes predicted for the next layer is worth reading ahead.
    func prefetchWants(routes: ExpertRoutes, slot: Int, nExperts: Int) -> Bool
}

extension MissPolicy {
    public func prefetchWants(routes: ExpertRoutes, slot: Int, nExperts: Int) -> Bool { true }
}

/// How a substitute expert's output is weighted.
public enum SubstituteWeight: String, Sendable, CaseIterable {
    /// As the model's router would have weighted it had it been chosen: its own gate score,
    /// renormalised over the token's final set when the model renormalises top-k, 1 for a
    /// MoEfied model's unweighted sum.
    case own
    /// The replaced expert's weight, unchanged.
    case inherit
    /// The replaced expert's weight times the substitute's gate score over the replaced one's.
    case scaled
}

/// Importance-driven substitution (DESIGN §3.5, "Enabling MoE on the Edge via Importance-Driven
/// Expert Scheduling"). Per token, with S = the (k+1)-th highest gate score: a chosen expert
/// scoring at least (1+α)·S always runs. A chosen expert below that which is neither resident nor
/// run anyway for another token of the batch is replaced by the best-scoring unchosen resident
/// expert with a score above (1−α)·S, failing that by the best-scoring (for this token) of the
/// experts the other tokens must run; with neither, it is read. α = 0 substitutes nothing.
public struct SMoESubstitution: MissPolicy {
    public let alpha: Double
    public let weighting: SubstituteWeight
    public init(alpha: Double, weighting: SubstituteWeight = .own) {
        self.alpha = alpha
        self.weighting = weighting
    }
    public var name: String { String(format: "smoe(α=%g, %@)", alpha, weighting.rawValue) }

    /// The (k+1)-th highest probability of token `t`; 0 when every expert is chosen.
    static func nextScore(_ routes: ExpertRoutes, token t: Int, nExperts: Int) -> Float {
        let k = routes.topK
        guard k < nExperts else { return 0 }
        let p = routes.probabilities[(t * nExperts)..<((t + 1) * nExperts)]
        // The k+1 largest by partial selection: n·(k+1) comparisons, k is small.
        var top = [Float](repeating: -.infinity, count: k + 1)
        for v in p where v > top[k] {
            var i = k
            while i > 0 && top[i - 1] < v { top[i] = top[i - 1]; i -= 1 }
            top[i] = v
        }
        return top[k]
    }

    func isImportant(_ routes: ExpertRoutes, slot s: Int, next: Float, nExperts: Int) -> Bool {
        let t = s / routes.topK
        return Double(routes.probabilities[t * nExperts + Int(routes.experts[s])]) >= (1 + alpha) * Double(next)
    }

    public func prefetchWants(routes: ExpertRoutes, slot: Int, nExperts: Int) -> Bool {
        isImportant(routes, slot: slot, next: Self.nextScore(routes, token: slot / routes.topK, nExperts: nExperts), nExperts: nExperts)
    }

    public func resolve(routes: inout ExpertRoutes, levels: inout [Int], nExperts: Int, levelCount: Int,
                        residentLevel: ResidentLevel, counts: inout MissCounts) {
        let k = routes.topK, tokens = routes.tokens
        guard alpha > 0, k < nExperts, tokens > 0 else { return }
        let next = (0..<tokens).map { Self.nextScore(routes, token: $0, nExperts: nExperts) }
        // Experts some token must run: they will be read (or are resident) whatever happens here.
        var mustRun = [Bool](repeating: false, count: nExperts)
        for s in 0..<(tokens * k) where isImportant(routes, slot: s, next: next[s / k], nExperts: nExperts) {
            mustRun[Int(routes.experts[s])] = true
        }
        var changed = [Bool](repeating: false, count: tokens)
        for t in 0..<tokens {
            let p = routes.probabilities[(t * nExperts)..<((t + 1) * nExperts)]
            let row = t * k
            for j in 0..<k {
                let s = row + j, e = Int(routes.experts[s])
                if isImportant(routes, slot: s, next: next[t], nExperts: nExperts) || mustRun[e] || residentLevel(e) >= levels[s] { continue }
                // k is small: a scan of the token's row beats building a set per miss.
                func inSet(_ c: Int) -> Bool { (0..<k).contains { Int(routes.experts[row + $0]) == c } }
                var best: Int?
                // An unchosen resident expert scoring within α of S (every unchosen one is ≤ S).
                let floor = (1 - alpha) * Double(next[t])
                for c in 0..<nExperts where !inSet(c) && Double(p[t * nExperts + c]) > floor && residentLevel(c) >= levels[s] {
                    if best == nil || p[t * nExperts + c] > p[t * nExperts + best!] { best = c }
                }
                if best == nil {
                    for c in 0..<nExperts where !inSet(c) && mustRun[c] {
                        if best == nil || p[t * nExperts + c] > p[t * nExperts + best!] { best = c }
                    }
                }
                guard let c = best else { continue }
                let old = p[t * nExperts + e], new = p[t * nExperts + c]
                routes.experts[s] = Int32(c)
                switch weighting {
                case .own: break  // below, over the token's final set
                case .inherit: break
                case .scaled: routes.weights[s] *= old > 0 ? new / old : 0
                }
                changed[t] = true
                counts.substituted += 1
            }
        }
        guard weighting == .own else { return }
        for t in 0..<tokens where changed[t] {
            let row = t * k
            switch routes.weighting {
            case .unit: break
            case .probability:
                for j in 0..<k { routes.weights[row + j] = routes.probabilities[t * nExperts + Int(routes.experts[row + j])] }
            case .normalized:
                var sum: Float = 0
                for j in 0..<k { sum += routes.probabilities[t * nExperts + Int(routes.experts[row + j])] }
                for j in 0..<k { routes.weights[row + j] = routes.probabilities[t * nExperts + Int(routes.experts[row + j])] / max(sum, .leastNormalMagnitude) }
            }
        }
    }
}

/// HOBBIT's mixed-precision fallback (DESIGN §3.5). A chosen expert that is resident at its level
/// runs as chosen. On a miss, by the share of the token's chosen gate weight held by its more
/// important experts: ≤ T1 reads the level chosen; ≤ T2 runs the highest resident level at or
/// above `lowLevel`, else reads `lowLevel` (the base, or the first planes, of the MWQ record);
/// above T2 runs whatever level is resident, else is skipped. The top expert (share 0) always
/// runs at its level.
public struct HobbitFallback: MissPolicy {
    public let t1: Double
    public let t2: Double
    /// The level a mid-importance miss reads (1 = the base).
    public let lowLevel: Int
    public init(t1: Double = 0.6, t2: Double = 0.9, lowLevel: Int = 1) {
        self.t1 = t1
        self.t2 = t2
        self.lowLevel = lowLevel
    }
    public var name: String { String(format: "hobbit(T1=%g, T2=%g, low level %d)", t1, t2, lowLevel) }

    public func resolve(routes: inout ExpertRoutes, levels: inout [Int], nExperts: Int, levelCount: Int,
                        residentLevel: ResidentLevel, counts: inout MissCounts) {
        let k = routes.topK
        for t in 0..<routes.tokens {
            var order: [(slot: Int, p: Float)] = (0..<k).map { j in
                (t * k + j, routes.probabilities[t * nExperts + Int(routes.experts[t * k + j])])
            }
            order.sort { $0.p > $1.p || ($0.p == $1.p && $0.slot < $1.slot) }
            let total = max(order.reduce(0) { $0 + Double($1.p) }, .leastNormalMagnitude)
            var before = 0.0
            for (s, p) in order {
                defer { before += Double(p) }
                let chosen = levels[s], have = residentLevel(Int(routes.experts[s]))
                let share = before / total
                if have >= chosen || share <= t1 { continue }
                let low = min(lowLevel, chosen)
                if share <= t2 {
                    levels[s] = have >= low ? have : low
                } else if have >= 1 {
                    levels[s] = have
                } else {
                    levels[s] = 0
                    counts.skipped += 1
                    continue
                }
                if levels[s] < chosen { counts.downgraded += 1 }
            }
        }
    }
}

/// Chooses α for SMoE substitution from a per-token latency target, as the paper does: measure
/// decode latency at a few α, fit latency = a + b·α by least squares, and take the smallest
/// candidate α whose fitted latency meets the target (the largest candidate when none does).
public enum AlphaTuning {
    public struct Result: Codable, Sendable {
        /// (α, measured milliseconds per token) pairs.
        public var samples: [[Double]]
        public var intercept: Double
        public var slope: Double
        public var alpha: Double
        /// False when no candidate's fitted latency met the target.
        public var meetsTarget: Bool
    }

    public static func choose(targetMilliseconds: Double, candidates: [Double], measured: [Double: Double]) -> Result {
        let xs = candidates.filter { measured[$0] != nil }, ys = xs.map { measured[$0]! }
        let n = Double(xs.count)
        let mx = xs.reduce(0, +) / max(n, 1), my = ys.reduce(0, +) / max(n, 1)
        let sxx = xs.reduce(0) { $0 + ($1 - mx) * ($1 - mx) }
        let sxy = zip(xs, ys).reduce(0) { $0 + ($1.0 - mx) * ($1.1 - my) }
        let slope = sxx > 0 ? sxy / sxx : 0, intercept = my - slope * mx
        let sorted = candidates.sorted()
        let pick = sorted.first { intercept + slope * $0 <= targetMilliseconds }
        return Result(samples: zip(xs, ys).map { [$0.0, $0.1] }, intercept: intercept, slope: slope,
                      alpha: pick ?? sorted.last ?? 0, meetsTarget: pick != nil)
    }
}
