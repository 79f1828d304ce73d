import Foundation

/// What an eviction policy sees of a resident piece.
public struct PieceUsage: Sendable {
    public var key: PieceKey
    /// Bytes it occupies.
    public var bytes: Int
    /// Tick of its last use (higher is more recent).
    public var lastUse: UInt64
    /// Uses since it was loaded.
    public var uses: Int
    /// Uses at the file's highest level (HOBBIT's high-precision use).
    public var highUses = 0
    /// The expert's average gate score over the last decode steps of its layer (score-based
    /// eviction; 0 for policies that do not ask for scores).
    public var score: Float = 0
    /// True while the expert is chosen in the MoE layer being computed.
    public var shielded = false
    /// How often the piece's layer steps need it: a moving average of 1 (needed) and 0 (not)
    /// over its layer's recent steps, 1 until seen (policies that do not ask see 1).
    public var needRate: Float = 1

    public init(key: PieceKey, bytes: Int, lastUse: UInt64, uses: Int) {
        self.key = key
        self.bytes = bytes
        self.lastUse = lastUse
        self.uses = uses
    }
}

/// Chooses which resident, unpinned piece to drop when the pool needs room.
public protocol EvictionPolicy: Sendable {
    /// The `--eviction` name.
    var name: String { get }
    /// Index into `candidates` (never empty) of the piece to evict. `currentLayer` is the MoE
    /// layer being computed, of `layerCount`.
    func victim(among candidates: [PieceUsage], currentLayer: Int, layerCount: Int) -> Int
    /// How many of each layer's recent steps of gate scores the pool keeps per expert (0: none).
    var scoreWindow: Int { get }
    /// Whether the pool keeps each piece's `needRate`.
    var wantsNeedRates: Bool { get }
}

extension EvictionPolicy {
    public var scoreWindow: Int { 0 }
    public var wantsNeedRates: Bool { false }
}

/// MoE layers until `layer` runs again when `current` is being computed (0: the current one).
func layersUntil(_ layer: Int, current: Int, layerCount: Int) -> Int {
    let n = max(layerCount, 1)
    return ((layer - current) % n + n) % n
}

/// The paper's rule: the layer whose turn comes last (the one just computed) goes first, its high
/// levels before its low ones; least recently used among equals.
public struct LayerDistanceEviction: EvictionPolicy {
    public init() {}
    public var name: String { "layer" }
    public func victim(among candidates: [PieceUsage], currentLayer: Int, layerCount: Int) -> Int {
        func rank(_ u: PieceUsage) -> (Int, Int, UInt64) {
            // Layers until this piece's layer runs again (0: the current one).
            (layersUntil(u.key.layer, current: currentLayer, layerCount: layerCount), u.key.level, UInt64.max - u.lastUse)
        }
        var best = 0
        for i in 1..<candidates.count where rank(candidates[i]) > rank(candidates[best]) { best = i }
        return best
    }
}

/// The layer rule with each piece's chance of being needed: the piece whose next use is expected
/// farthest away goes first. A piece needed in a fraction p of its layer's steps is next used,
/// on average, d + n·(1 − p)/p MoE layers from now (d: layers until its layer runs, n: MoE
/// layers). With many sequences every expert's base is needed every step (p = 1) and this is the
/// paper's rule; with one sequence the experts it keeps choosing stay and those it stopped
/// choosing go first, wherever their layer is (the paper's rule drops the layer just computed,
/// hot experts included, before anything else). Equal expectations: higher level, then LRU.
public struct ReuseDistanceEviction: EvictionPolicy {
    public init() {}
    public var name: String { "reuse" }
    public var wantsNeedRates: Bool { true }
    public func victim(among candidates: [PieceUsage], currentLayer: Int, layerCount: Int) -> Int {
        let n = Float(max(layerCount, 1))
        func rank(_ u: PieceUsage) -> (Float, Int, UInt64) {
            let p = max(u.needRate, 1e-3)
            let distance = Float(layersUntil(u.key.layer, current: currentLayer, layerCount: layerCount)) + n * (1 - p) / p
            return (distance, u.key.level, UInt64.max - u.lastUse)
        }
        var best = 0, bestRank = rank(candidates[0])
        for i in 1..<candidates.count {
            let r = rank(candidates[i])
            if r > bestRank { best = i; bestRank = r }
        }
        return best
    }
}

/// Least recently used.
public struct LRUEviction: EvictionPolicy {
    public init() {}
    public var name: String { "lru" }
    public func victim(among candidates: [PieceUsage], currentLayer: Int, layerCount: Int) -> Int {
        var best = 0
        for i in 1..<candidates.count where candidates[i].lastUse < candidates[best].lastUse { best = i }
        return best
    }
}

/// Least frequently used; least recently used among equals.
public struct LFUEviction: EvictionPolicy {
    public init() {}
    public var name: String { "lfu" }
    public func victim(among candidates: [PieceUsage], currentLayer: Int, layerCount: Int) -> Int {
        var best = 0
        for i in 1..<candidates.count {
            let c = candidates[i], b = candidates[best]
            if c.uses < b.uses || (c.uses == b.uses && c.lastUse < b.lastUse) { best = i }
        }
        return best
    }
}

/// Score-based eviction (DESIGN §3.5): the expert with the lowest average gate score over its
/// layer's last `window` steps goes first (every expert's score counts at every step, chosen or
/// not); the current layer's chosen experts are shielded while anything else can go. Among one
/// expert's pieces the highest level goes first, so its base stays longest; then LRU.
public struct ScoreEviction: EvictionPolicy {
    public let window: Int
    public init(window: Int = 8) { self.window = max(1, window) }
    public var name: String { "score" }
    public var scoreWindow: Int { window }
    public func victim(among candidates: [PieceUsage], currentLayer: Int, layerCount: Int) -> Int {
        let anyUnshielded = candidates.contains { !$0.shielded }
        func worse(_ a: PieceUsage, _ b: PieceUsage) -> Bool {
            if anyUnshielded, a.shielded != b.shielded { return !a.shielded }
            if a.score != b.score { return a.score < b.score }
            if a.key.level != b.key.level { return a.key.level > b.key.level }
            return a.lastUse < b.lastUse
        }
        var best = 0
        for i in 1..<candidates.count where worse(candidates[i], candidates[best]) { best = i }
        return best
    }
}

/// HOBBIT's multidimensional cache priority: the mean of four ranks among the candidates, each in
/// [0, 1] with 1 the most worth keeping: recency (LRU), frequency (LFU), high-precision use (LHU)
/// and nearness of the piece's layer to the one being computed (FLD, the layer that runs next is
/// nearest). The lowest priority goes. Equal weights; HOBBIT tunes them per model.
public struct HobbitEviction: EvictionPolicy {
    public init() {}
    public var name: String { "hobbit" }
    public func victim(among candidates: [PieceUsage], currentLayer: Int, layerCount: Int) -> Int {
        let n = candidates.count
        guard n > 1 else { return 0 }
        /// Rank of each candidate by `value` ascending, scaled to [0, 1]; equal values share the
        /// lowest rank among them, so a tie in one dimension favours no one.
        func ranks<T: Comparable>(_ value: (PieceUsage) -> T) -> [Double] {
            let values = candidates.map(value)
            let order = values.indices.sorted { values[$0] < values[$1] }
            var r = [Double](repeating: 0, count: n)
            var first = 0
            for (i, c) in order.enumerated() {
                if i > 0, values[order[i - 1]] < values[c] { first = i }
                r[c] = Double(first) / Double(n - 1)
            }
            return r
        }
        let recency = ranks { $0.lastUse }, frequency = ranks { $0.uses }, high = ranks { $0.highUses }
        // Layers until the piece's layer runs: the fewer, the nearer (so higher rank).
        let nearness = ranks { -layersUntil($0.key.layer, current: currentLayer, layerCount: layerCount) }
        var best = 0, bestPriority = Double.infinity
        for i in 0..<n {
            let p = (recency[i] + frequency[i] + high[i] + nearness[i]) / 4
            if p < bestPriority { best = i; bestPriority = p }
        }
        return best
    }
}

/// The eviction policies by `--eviction` name.
public enum EvictionPolicies {
    public static let names = ["layer", "reuse", "lru", "lfu", "score", "hobbit"]
    public static func named(_ name: String, scoreWindow: Int = 8) throws -> EvictionPolicy {
        switch name {
        case "layer": return LayerDistanceEviction()
        case "reuse": return ReuseDistanceEviction()
        case "lru": return LRUEviction()
        case "lfu": return LFUEviction()
        case "score": return ScoreEviction(window: scoreWindow)
        case "hobbit": return HobbitEviction()
        default: throw ModelError("unknown eviction policy '\(name)' (\(names.joined(separator: ", ")))")
        }
    }
}
