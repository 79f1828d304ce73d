import D2MoEKernels

/// The keys and values of one sequence for every layer: position p of layer l lives at row p of
/// that layer's [capacity, kvWidth] arrays. Positions must be written before they are attended.
public final class KVCache: @unchecked Sendable {
    /// Maximum number of positions.
    public let capacity: Int
    /// nKVHeads · headDim of each layer.
    let kvWidths: [Int]
    /// Per layer: [capacity, kvWidth] keys, then values.
    private let keys: [AlignedBuffer]
    private let values: [AlignedBuffer]
    /// Number of positions written so far (the next position to fill).
    public internal(set) var count = 0

    init(capacity: Int, kvWidths: [Int]) {
        self.capacity = capacity
        self.kvWidths = kvWidths
        // Not zeroed: positions are written before they are attended, and zeroing would make the
        // whole capacity resident at once (1 GiB for olmoe-1b-7b's 4096 positions).
        keys = kvWidths.map { AlignedBuffer(uninitializedByteCount: capacity * $0 * 4) }
        values = kvWidths.map { AlignedBuffer(uninitializedByteCount: capacity * $0 * 4) }
    }

    /// Bytes held by the cache.
    public var byteCount: Int { keys.reduce(0) { $0 + $1.byteCount } * 2 }

    /// Forgets every position, keeping the memory.
    public func clear() { count = 0 }

    /// Drops positions from `position` on (for re-using a common prefix).
    public func truncate(to position: Int) { count = min(count, max(0, position)) }

    /// Makes this cache's first `count` positions a copy of `other`'s, so sequences that share a
    /// prompt prefix compute it once.
    public func copyPrefix(of other: KVCache, count: Int) {
        precondition(kvWidths == other.kvWidths, "caches of different models")
        precondition(count >= 0 && count <= other.count && count <= capacity, "prefix of \(count) positions does not fit")
        for l in kvWidths.indices {
            keys(layer: l).update(from: other.keys(layer: l), count: count * kvWidths[l])
            values(layer: l).update(from: other.values(layer: l), count: count * kvWidths[l])
        }
        self.count = count
    }

    func keys(layer: Int) -> UnsafeMutablePointer<Float> { keys[layer].floats() }
    func values(layer: Int) -> UnsafeMutablePointer<Float> { values[layer].floats() }
}

/// One token of a forward batch: which sequence (an index into the caches passed alongside), its
/// position there, and whether its logits are wanted.
public struct BatchToken: Sendable, Equatable {
    public var sequence: Int
    public var position: Int
    public var token: Int32
    public var wantsLogits: Bool

    public init(sequence: Int, position: Int, token: Int32, wantsLogits: Bool) {
        self.sequence = sequence
        self.position = position
        self.token = token
        self.wantsLogits = wantsLogits
    }
}
