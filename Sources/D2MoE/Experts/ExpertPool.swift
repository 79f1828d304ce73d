import Foundation

/// The budgeted pool of expert pieces (DESIGN §3.4) and the I/O threads that fill it.
///
/// Accounting is by allocation: a piece's bytes count against the budget from the moment its
/// read is admitted (before its buffer exists) until its buffer is unmapped, so the pool never
/// holds more than `budget` bytes, not even while reads are in flight. Pinned pieces (being
/// computed, or waiting for the rest of their expert) are never evicted.
///
/// Three locks: `lock` over the pool (entries, budget, pins), which only the compute thread
/// takes; `ioQueue` over the reads waiting for a thread; `ioDone` over what the reads produce
/// (each entry's `state` and `dataOffset`). I/O threads never wait for `lock`: with one lock they
/// spent seconds of a run queued behind the compute thread's planning and evictions, with reads
/// waiting and none in flight (olmoe-1b-7b, 878 MiB, 32 requests).
final class ExpertPool: @unchecked Sendable {
    enum State { case loading, ready, failed(String) }

    final class Entry {
        let key: PieceKey
        let buffer: PieceBuffer
        /// Offset of the piece's first byte in `buffer`.
        var dataOffset = 0
        /// Under `ioDone`: read it with `ExpertPool.state(_:)`.
        fileprivate(set) var state = State.loading
        var pins = 1
        /// Read ahead of need (`--prefetch`) and not used yet.
        var prefetched = false
        /// Holds the pin its prefetch took, which the step of its layer hands over to its own.
        var prefetchPinned = false
        var usage: PieceUsage
        init(key: PieceKey, buffer: PieceBuffer, tick: UInt64) {
            self.key = key
            self.buffer = buffer
            usage = PieceUsage(key: key, bytes: buffer.byteCount, lastUse: tick, uses: 0)
        }
        /// Valid once `ExpertPool.state(_:)` has said `.ready`.
        var data: UnsafeRawPointer { UnsafeRawPointer(buffer.base + dataOffset) }
    }

    let budget: Int
    let store: ExpertStore
    let eviction: EvictionPolicy
    /// The lock over the pool's state below (not the I/O state).
    let lock = NSCondition()
    /// Over `queue`, `queueHead`, `inFlight`, the busy time and `stopped`; I/O threads wait on it for reads.
    private let ioQueue = NSCondition()
    /// Over entries' `state` and `dataOffset`, `bytesReadTotal` and `completions`; signalled when a read ends.
    private let ioDone = NSCondition()
    private(set) var entries: [PieceKey: Entry] = [:]
    /// Bytes allocated or admitted.
    private(set) var used = 0
    private(set) var peakUsed = 0
    /// Monotonic use counter for recency.
    private(set) var tick: UInt64 = 0
    /// MoE layer being computed, for policies that look at layer distance.
    var currentLayer = 0
    let layerCount: Int

    // Under `ioQueue`.
    /// Reads waiting for a thread; a taken slot is cleared at once, so no evicted piece's buffer
    /// outlives its accounting.
    private var queue: [Entry?] = []
    private var queueHead = 0
    private var inFlight = 0
    /// ∫ reads in flight dt (ns), and when `inFlight` last changed: the mean queue depth.
    private var depthTotal: UInt64 = 0
    private var depthChanged: UInt64 = 0
    private var ioIntervalStart = DispatchTime.now().uptimeNanoseconds
    private var ioBusyTotal: UInt64 = 0
    private var stopped = false
    // Under `ioDone`.
    private var bytesReadTotal = 0
    /// Reads finished (or failed) so far.
    private var completions = 0

    init(store: ExpertStore, budget: Int, eviction: EvictionPolicy, ioThreads: Int) {
        self.store = store
        self.budget = budget
        self.eviction = eviction
        layerCount = store.records.count
        for i in 0..<max(1, ioThreads) {
            // The threads keep the pool alive until `shutdown` (its owner's deinit) ends them; the
            // pool keeps no reference to them, or pool → thread → closure → pool would never be
            // freed (a sweep leaked a whole budget of buffers per configuration).
            let thread = Thread { self.ioLoop() }
            thread.name = "d2moe-io-\(i)"
            thread.stackSize = 256 << 10
            thread.start()
        }
    }

    /// Ends the I/O threads; reads still queued are dropped.
    func shutdown() {
        ioQueue.lock()
        stopped = true
        ioQueue.broadcast()
        ioQueue.unlock()
    }

    // MARK: Under the lock

    /// The entry for `key` if it is loading or ready; a failed read is removed and thrown.
    func entry(_ key: PieceKey) throws -> Entry? {
        guard let e = entries[key] else { return nil }
        if case .failed(let message) = state(e) {
            remove(e)
            throw ModelError(message)
        }
        return e
    }

    func pin(_ e: Entry) {
        e.pins += 1
    }

    func unpin(_ e: Entry) {
        precondition(e.pins > 0, "unpinning an unpinned piece \(e.key)")
        e.pins -= 1
    }

    /// Gives back the pin a prefetch took on `e`, if it still holds it.
    func dropPrefetchPin(_ e: Entry) {
        guard e.prefetchPinned else { return }
        e.prefetchPinned = false
        unpin(e)
    }

    /// Records a use of a piece for recency and frequency policies; `high`: by a group at the
    /// file's highest level.
    func touch(_ e: Entry, high: Bool = false) {
        tick += 1
        e.usage.lastUse = tick
        e.usage.uses += 1
        if high { e.usage.highUses += 1 }
    }

    // Gate scores for score-based eviction: per MoE layer, a ring of the last `scoreWindow`
    // steps' mean probability of every expert ([layer][step slot · experts + expert]).
    private var scoreRing: [[Float]] = []
    private var scoreSteps: [Int] = []
    /// Experts chosen in `currentLayer`'s step, shielded from score-based eviction until it ends.
    var shielded: Set<Int> = []

    /// Adds one step of layer `layer`'s mean gate score per expert.
    func recordScores(layer: Int, _ means: [Float]) {
        let window = eviction.scoreWindow, experts = store.expertCount
        guard window > 0, means.count == experts else { return }
        if scoreRing.isEmpty {
            scoreRing = Array(repeating: Array(repeating: 0, count: window * experts), count: layerCount)
            scoreSteps = Array(repeating: 0, count: layerCount)
        }
        let slot = scoreSteps[layer] % window
        for e in 0..<experts { scoreRing[layer][slot * experts + e] = means[e] }
        scoreSteps[layer] += 1
    }

    // Per piece (layer, expert, level), for `needRate` policies: a moving average of whether
    // its layer's steps needed it.
    private var needRates: [Float] = []
    /// Weight of the latest step in a need rate: a piece unneeded for 4 steps falls to 0.32.
    static let needRateWeight: Float = 0.25

    /// Records which pieces step `layer` needs: `wanted[e]`, the levels expert e reads (empty if
    /// none).
    func recordNeeds(layer: Int, wanted: [[Int]]) {
        guard eviction.wantsNeedRates else { return }
        let experts = store.expertCount, levels = store.levels
        if needRates.isEmpty { needRates = Array(repeating: 1, count: layerCount * experts * levels) }
        for e in 0..<min(experts, wanted.count) {
            let base = (layer * experts + e) * levels
            for k in 1...levels {
                let x: Float = wanted[e].contains(k) ? 1 : 0
                needRates[base + k - 1] += Self.needRateWeight * (x - needRates[base + k - 1])
            }
        }
    }

    private func needRate(_ key: PieceKey) -> Float {
        guard !needRates.isEmpty else { return 1 }
        return needRates[(key.layer * store.expertCount + key.expert) * store.levels + key.level - 1]
    }

    /// The expert's mean gate score over its layer's recorded steps (at most the window).
    func averageScore(layer: Int, expert: Int) -> Float {
        guard !scoreRing.isEmpty else { return 0 }
        let window = eviction.scoreWindow, experts = store.expertCount
        let n = min(scoreSteps[layer], window)
        guard n > 0 else { return 0 }
        var sum: Float = 0
        for i in 0..<n { sum += scoreRing[layer][i * experts + expert] }
        return sum / Float(n)
    }

    /// Makes room for the pieces `keys` by evicting unpinned ready pieces; false (evicting
    /// nothing more than needed) when pinned pieces leave too little. The buffers of evicted
    /// pieces are kept (still counted) and handed to the reads that follow, whole or as pages
    /// moved into a buffer of another size (`PieceBuffer.assemble`): mapping fresh buffers instead
    /// cost a page fault and the zeroing of every page read into, and a TLB shootdown per buffer
    /// unmapped (about a tenth of the CPU time of an olmoe-1b-7b run at 32 requests, beside
    /// compute on two cores).
    func reserve(_ keys: [PieceKey]) -> Bool {
        // Buffers set aside by an earlier call whose reads did not start go back.
        for buffer in claimed.values { spare.append(buffer); spareBytes += buffer.byteCount }
        claimed = [:]
        let sizes = keys.map { store.allocationBytes($0) }
        let bytes = sizes.reduce(0, +)
        guard bytes <= budget else { return false }
        while used - spareBytes + bytes > budget {
            ioDone.lock()
            var candidates = entries.values.filter { e in
                guard e.pins == 0, case .ready = e.state else { return false }
                return true
            }
            ioDone.unlock()
            guard !candidates.isEmpty else { return false }
            // "+Budget": base levels stay while they fill at most `lowLevelShare` of the budget.
            if lowLevelShare > 0, Double(lowLevelBytes) <= lowLevelShare * Double(budget) {
                let upper = candidates.filter { $0.key.level > 1 }
                if !upper.isEmpty { candidates = upper }
            }
            let scored = eviction.scoreWindow > 0, rated = eviction.wantsNeedRates
            let usages = candidates.map { c -> PieceUsage in
                var u = c.usage
                if scored { u.score = averageScore(layer: u.key.layer, expert: u.key.expert) }
                if rated { u.needRate = needRate(u.key) }
                u.shielded = u.key.layer == currentLayer && shielded.contains(u.key.expert)
                return u
            }
            let i = eviction.victim(among: usages, currentLayer: currentLayer, layerCount: layerCount)
            remove(candidates[i])
            evictions += 1
        }
        assignSpare(keys, sizes: sizes)
        peakUsed = max(peakUsed, used)
        return true
    }

    /// Hands spare buffers to the pieces `keys`: a spare buffer of the same size as it is, else
    /// one assembled from spare buffers' pages (moved, not copied) and fresh pages only for what
    /// the spare buffers lack. Moving pages changes no count, and reserve left room for the rest.
    private func assignSpare(_ keys: [PieceKey], sizes: [Int]) {
        var open: [Int] = []  // indices of keys without a same-size buffer
        for (i, key) in keys.enumerated() {
            if let j = spare.lastIndex(where: { $0.byteCount == sizes[i] }) {
                claimed[key] = spare.remove(at: j)
                spareBytes -= sizes[i]
            } else {
                open.append(i)
            }
        }
        // Largest last: a donor gives its pages from the end of the list.
        spare.sort { $0.byteCount < $1.byteCount }
        for i in open {
            if let (buffer, moved) = PieceBuffer.assemble(byteCount: sizes[i], from: &spare) {
                claimed[keys[i]] = buffer
                spareBytes -= moved
                used += sizes[i] - moved
                freshPageBytes += sizes[i] - moved
            } else {
                used += sizes[i]  // startLoad maps it or fails
            }
        }
        // Only when a buffer could not take every page it needed from the spares.
        while used > budget, let buffer = spare.first {
            spare.removeFirst()
            spareBytes -= buffer.byteCount
            used -= buffer.byteCount
        }
    }

    /// Reads into a buffer mapped for them, and reads into spare buffers or buffers assembled
    /// from spare pages.
    private(set) var buffersMapped = 0
    private(set) var buffersReused = 0
    /// Bytes of fresh pages given to reads (each page is faulted in and zeroed by the read): at
    /// most the budget plus what was unmapped, as later reads recycle pages.
    private(set) var freshPageBytes = 0
    /// Spare buffers: unused, mapped, counted in `used`.
    private var spare: [PieceBuffer] = []
    private var spareBytes = 0
    /// Buffers `reserve` set aside for the reads of these pieces.
    private var claimed: [PieceKey: PieceBuffer] = [:]

    private(set) var evictions = 0
    /// Share of the budget in which level-1 pieces are kept in preference to higher levels.
    var lowLevelShare = 0.0
    /// Bytes of resident or loading level-1 pieces.
    private(set) var lowLevelBytes = 0

    /// Starts reading `key`, reserved by `reserve`; the new entry is pinned once.
    func startLoad(_ key: PieceKey) throws -> Entry {
        let bytes = store.allocationBytes(key)
        let buffer: PieceBuffer
        if let b = claimed.removeValue(forKey: key) {
            buffer = b
            buffersReused += 1
        } else {
            do { buffer = try PieceBuffer(byteCount: bytes) } catch { used -= bytes; throw error }
            buffersMapped += 1
            freshPageBytes += bytes
        }
        let e = Entry(key: key, buffer: buffer, tick: tick)
        entries[key] = e
        if key.level == 1 { lowLevelBytes += buffer.byteCount }
        ioQueue.lock()
        queue.append(e)
        ioQueue.signal()
        ioQueue.unlock()
        return e
    }

    /// Where a piece's read is.
    func state(_ e: Entry) -> State {
        ioDone.lock()
        defer { ioDone.unlock() }
        return e.state
    }

    /// Reads finished so far: take it before looking at states, then `waitForCompletion(after:)`
    /// cannot miss a read that ends in between.
    func completionCount() -> Int {
        ioDone.lock()
        defer { ioDone.unlock() }
        return completions
    }

    /// Waits, with `lock` released, until a read ends after `seen` had.
    func waitForCompletion(after seen: Int) {
        lock.unlock()
        ioDone.lock()
        while completions == seen { ioDone.wait() }
        ioDone.unlock()
        lock.lock()
    }

    /// Whether reads are queued or in flight.
    func readsPending() -> Bool {
        ioQueue.lock()
        defer { ioQueue.unlock() }
        return queueHead < queue.count || inFlight > 0
    }

    /// Bytes read so far.
    var bytesRead: Int {
        ioDone.lock()
        defer { ioDone.unlock() }
        return bytesReadTotal
    }

    /// Drops a piece. Its buffer becomes spare once its read has ended (until then an I/O thread
    /// may still write to it, so its bytes are given back and it is unmapped after the read).
    func remove(_ e: Entry) {
        guard entries[e.key] === e else { return }
        entries[e.key] = nil
        if e.key.level == 1 { lowLevelBytes -= e.buffer.byteCount }
        if case .loading = state(e) {
            used -= e.buffer.byteCount

        } else {
            spare.append(e.buffer)
            spareBytes += e.buffer.byteCount
        }
    }

    /// Cumulative time during which at least one read was in flight, up to now.
    func ioBusyNanoseconds() -> UInt64 {
        ioQueue.lock()
        defer { ioQueue.unlock() }
        return ioBusyTotal + (inFlight > 0 ? DispatchTime.now().uptimeNanoseconds - ioIntervalStart : 0)
    }

    /// ∫ reads in flight dt so far, in nanoseconds: divided by the busy time, the mean number of
    /// reads in flight while any is.
    func ioDepthNanoseconds() -> UInt64 {
        ioQueue.lock()
        defer { ioQueue.unlock() }
        return depthTotal + UInt64(inFlight) * (inFlight > 0 ? DispatchTime.now().uptimeNanoseconds - depthChanged : 0)
    }

    var residentBytes: Int { used }

    // MARK: I/O threads

    private func ioLoop() {
        ioQueue.lock()
        while true {
            while queueHead == queue.count && !stopped { ioQueue.wait() }
            if stopped { break }
            guard let e = queue[queueHead] else { queueHead += 1; continue }
            queue[queueHead] = nil
            queueHead += 1
            if queueHead > 1024 && queueHead * 2 > queue.count {
                queue.removeFirst(queueHead)
                queueHead = 0
            }
            let started = DispatchTime.now().uptimeNanoseconds
            if inFlight == 0 { ioIntervalStart = started } else { depthTotal += UInt64(inFlight) * (started - depthChanged) }
            depthChanged = started
            inFlight += 1
            ioQueue.unlock()
            let result = Result { try store.read(e.key, into: e.buffer) }
            ioDone.lock()
            switch result {
            case .success(let offset):
                e.dataOffset = offset
                e.state = .ready
                bytesReadTotal += store.pieceBytes(e.key)
            case .failure(let error):
                e.state = .failed(String(describing: error))
            }
            completions += 1
            ioDone.broadcast()
            ioDone.unlock()
            ioQueue.lock()
            let ended = DispatchTime.now().uptimeNanoseconds
            depthTotal += UInt64(inFlight) * (ended - depthChanged)
            depthChanged = ended
            inFlight -= 1
            if inFlight == 0 { ioBusyTotal += ended - ioIntervalStart }
        }
        ioQueue.unlock()
    }
}
