import Foundation
import D2MoEFormats
import D2MoEKernels

/// How expert pieces missing from the pool are queued for reading.
public enum LoadOrder: String, Sendable, CaseIterable {
    /// Hottest-expert-bit-first (DESIGN §3.4): repeatedly the next missing level of the expert
    /// the most tokens still need.
    case hebf
    /// Expert id order, all levels of an expert together (the on-demand baselines).
    case expertID = "id"
}

/// Routed experts streamed from an `.mwq` file through a budgeted pool (DESIGN §3.4): the MoE
/// layer routes its tokens, the bit-width policy gives each (token, expert) a level, the missing
/// pieces are read on I/O threads in `order`, and each (expert, level) group of tokens is
/// computed as soon as the levels it needs are in, while the reads go on.
///
/// Expert outputs are summed per token in expert-id order, exactly as `ResidentExperts` does, so
/// a budget changes what is read, never the logits.
public final class StreamingExperts: ExpertBackend, @unchecked Sendable {
    let store: ExpertStore
    let pool: ExpertPool
    public let bitPolicy: BitWidthPolicy
    public let order: LoadOrder
    let activation: FeedForward.Activation
    private let scratch = Scratch()
    /// `--prefetch`: read the next MoE layer's likely experts while this one computes.
    public var prefetchEnabled = false
    public var wantsPrefetch: Bool { prefetchEnabled }
    /// A layer's prefetch is withheld while its next-layer prediction has been right less often
    /// than this (`--prefetch-min-accuracy`): a wrong guess reads bytes nobody uses and evicts
    /// pieces that would have been. The prediction is scored every step, prefetched or not, so a
    /// withheld layer resumes when its guesses improve. 0 always prefetches.
    public var prefetchMinAccuracy: Float = 0
    /// [MoE layer]: the prediction's accuracy averaged over recent steps (weight
    /// `accuracyWeight` for the newest); nil until the layer's prediction is first scored.
    private var predictionAccuracy: [Float?]
    static let accuracyWeight: Float = 0.2
    /// What to do with chosen experts that are not resident (`--policy smoe`, `hobbit`); nil
    /// reads every one.
    public var missPolicy: MissPolicy?
    /// The experts the last prefetch predicted for each layer, [tokens, topK], to score the
    /// prediction when the layer runs.
    private var predictions: [Int: [Int32]] = [:]
    /// The next layer's predicted routes, queued once this layer's own pieces are admitted.
    private var scheduledPrefetch: (layer: Int, routes: ExpertRoutes)?
    /// Prefetched pieces, pinned (protected) until their layer's step has run: layer → entries.
    private var prefetchPins: [Int: [ExpertPool.Entry]] = [:]
    private var statsStorage: ExpertStreamStats
    private let statsLock = NSLock()

    init(store: ExpertStore, budget: Int, eviction: EvictionPolicy, bitPolicy: BitWidthPolicy, order: LoadOrder,
         activation: FeedForward.Activation, ioThreads: Int) {
        self.store = store
        pool = ExpertPool(store: store, budget: budget, eviction: eviction, ioThreads: ioThreads)
        self.bitPolicy = bitPolicy
        self.order = order
        self.activation = activation
        predictionAccuracy = Array(repeating: nil, count: store.records.count)
        statsStorage = ExpertStreamStats(layers: store.records.count, bits: store.file.header.quantization.bits, budget: budget,
                                         directIO: store.directIO, eviction: eviction.name, bitPolicy: bitPolicy.name)
    }

    deinit { pool.shutdown() }

    /// Bytes of every expert at every level in the file.
    public var expertBytes: Int { store.totalBytes }
    public var budget: Int { pool.budget }
    /// Pool bytes of the largest expert at all its levels: the smallest budget that can run.
    public var largestExpertBytes: Int {
        var most = 0
        for l in store.records.indices {
            for e in 0..<store.expertCount {
                most = max(most, (1...store.levels).reduce(0) { $0 + store.allocationBytes(PieceKey(layer: l, expert: e, level: $1)) })
            }
        }
        return most
    }
    public var directIO: Bool { store.directIO }

    /// Counters since the last `resetStats`.
    public var stats: ExpertStreamStats {
        statsLock.lock()
        defer { statsLock.unlock() }
        var s = statsStorage
        pool.lock.lock()
        s.peakPoolBytes = pool.peakUsed
        s.poolBytes = pool.residentBytes
        s.evictions = pool.evictions
        s.buffersMapped = pool.buffersMapped
        s.buffersReused = pool.buffersReused
        s.freshPageBytes = pool.freshPageBytes
        pool.lock.unlock()
        return s
    }

    public func resetStats() {
        statsLock.lock()
        statsStorage = ExpertStreamStats(layers: statsStorage.layers.count, bits: statsStorage.bits, budget: statsStorage.budgetBytes,
                                         directIO: statsStorage.directIO, eviction: statsStorage.eviction, bitPolicy: statsStorage.bitPolicy)
        statsLock.unlock()
    }

    // The current forward pass: when it began, the pool's I/O busy time then, and the time its
    // compute thread has waited for reads. Compute thread only.
    private var stepStart: UInt64 = 0, stepIOStart: UInt64 = 0, stepDepthStart: UInt64 = 0, stepIdle: UInt64 = 0

    public func stepBegan() {
        stepStart = DispatchTime.now().uptimeNanoseconds
        stepIOStart = pool.ioBusyNanoseconds()
        stepDepthStart = pool.ioDepthNanoseconds()
        stepIdle = 0
    }

    public func stepEnded(prompt: Bool) {
        guard stepStart > 0 else { return }
        // I/O first: its interval then lies within the step's (begun after it, ended before it).
        let io = Double(pool.ioBusyNanoseconds() - stepIOStart) / 1e9
        let depth = Double(pool.ioDepthNanoseconds() - stepDepthStart) / 1e9
        let wall = Double(DispatchTime.now().uptimeNanoseconds - stepStart) / 1e9
        statsLock.lock()
        let steps: WritableKeyPath<ExpertStreamStats, ExpertStreamStats.Steps> = prompt ? \.promptSteps : \.generationSteps
        statsStorage[keyPath: steps].add(wall: wall, ioBusy: io, computeIdle: Double(stepIdle) / 1e9, ioDepthTime: depth)
        statsLock.unlock()
        stepStart = 0
    }

    /// Bytes the pool holds now (its own accounting).
    public var poolBytes: Int {
        pool.lock.lock()
        defer { pool.lock.unlock() }
        return pool.residentBytes
    }

    /// Asks the next `compute` to also read what `routes` (the next MoE layer's router applied to
    /// the current hidden state) will need in `layer`, once its own pieces are queued.
    public func schedulePrefetch(layer: Int, routes: ExpertRoutes) {
        scheduledPrefetch = (layer, routes)
        predictions[layer] = routes.experts
    }

    /// The predicted pieces of `layer`, one list per expert, hottest first: what `admitPrefetch`
    /// queues, as far as the budget allows each time it is called. Called under the pool's lock.
    /// `x`: the current layer's input, from which the next layer's routes were predicted (the
    /// bit-width routers of `layer` read it as their prediction too).
    private func planPrefetch(layer: Int, x: UnsafePointer<Float>, routes: ExpertRoutes) -> [[PieceKey]] {
        let levelCount = store.levels
        var levels = [Int](repeating: levelCount, count: routes.experts.count)
        bitPolicy.levels(layer: layer, input: x, hidden: store.hidden, routes: routes, nExperts: store.expertCount,
                         levelCount: levelCount, into: &levels)
        var need = [Int: Set<Int>](), count = [Int: Int]()
        for (s, e) in routes.experts.enumerated() {
            if let miss = missPolicy, !miss.prefetchWants(routes: routes, slot: s, nExperts: store.expertCount) { continue }
            need[Int(e), default: []].formUnion(store.levelsRead(at: levels[s]))
            count[Int(e), default: 0] += 1
        }
        // Hottest predicted experts first, all the levels they will read.
        return need.keys.sorted(by: { (count[$0]!, -$0) > (count[$1]!, -$1) }).map { e in
            need[e]!.sorted().map { PieceKey(layer: layer, expert: e, level: $0) }
        }
    }

    /// Reserves and queues the planned pieces that are missing, expert by expert from `next`, until
    /// the budget cannot take the next expert without waiting; returns where it stopped. Queued
    /// pieces stay pinned until their layer runs. Called under the pool's lock.
    private func admitPrefetch(_ plan: [[PieceKey]], from next: Int, stats: inout ExpertStreamStats.Layer) throws -> Int {
        var i = next
        while i < plan.count {
            let keys = plan[i].filter { pool.entries[$0] == nil }
            if !keys.isEmpty {
                guard pool.reserve(keys) else { break }
                for key in keys {
                    let entry = try pool.startLoad(key)
                    entry.prefetched = true
                    entry.prefetchPinned = true
                    prefetchPins[key.layer, default: []].append(entry)
                    stats.prefetched += 1
                }
            }
            i += 1
        }
        return i
    }

    /// One (expert, level) group: the slots that run expert `expert` at `level`.
    private struct Group {
        let expert: Int
        let level: Int
        var slots: [Int]
    }

    public func compute(layer: Int, input x: UnsafePointer<Float>, routes routed: ExpertRoutes,
                        output out: UnsafeMutablePointer<Float>) throws {
        let start = DispatchTime.now().uptimeNanoseconds
        let levelCount = store.levels, nExperts = store.expertCount, hidden = store.hidden
        let topK = routed.topK, slots = routed.tokens * topK
        var levels = [Int](repeating: levelCount, count: slots)
        bitPolicy.levels(layer: layer, input: x, hidden: hidden, routes: routed, nExperts: nExperts, levelCount: levelCount, into: &levels)
        var layerStats = ExpertStreamStats.Layer(levels: levelCount)
        layerStats.tokens = routed.tokens
        if let predicted = predictions.removeValue(forKey: layer), predicted.count == routed.experts.count, slots > 0 {
            for t in 0..<routed.tokens {
                let actual = routed.experts[(t * topK)..<((t + 1) * topK)]
                layerStats.predictedHits += predicted[(t * topK)..<((t + 1) * topK)].filter { actual.contains($0) }.count
            }
            layerStats.predictedSlots += slots
            let accuracy = Float(layerStats.predictedHits) / Float(slots)
            let w = Self.accuracyWeight
            predictionAccuracy[layer] = predictionAccuracy[layer].map { (1 - w) * $0 + w * accuracy } ?? accuracy
        }
        var routes = routed
        if pool.eviction.scoreWindow > 0 || missPolicy != nil {
            pool.lock.lock()
            if pool.eviction.scoreWindow > 0, routes.tokens > 0 {
                var means = [Float](repeating: 0, count: nExperts)
                for t in 0..<routes.tokens { for e in 0..<nExperts { means[e] += routes.probabilities[t * nExperts + e] } }
                for e in 0..<nExperts { means[e] /= Float(routes.tokens) }
                pool.recordScores(layer: layer, means)
            }
            if let miss = missPolicy {
                // The highest level of each expert whose pieces are all in the pool or on their way.
                let resident = (0..<nExperts).map { e in
                    (1...levelCount).last { l in store.levelsRead(at: l).allSatisfy { pool.entries[PieceKey(layer: layer, expert: e, level: $0)] != nil } } ?? 0
                }
                miss.resolve(routes: &routes, levels: &levels, nExperts: nExperts, levelCount: levelCount,
                             residentLevel: { resident[$0] }, counts: &layerStats.misses)
            }
            pool.lock.unlock()
        }
        // B[e][k]: tokens of expert e at level k; tokens needing level k of e are those at ≥ k.
        var groupIndex = [Int: Int](), groups: [Group] = []
        var tokensAt = [[Int]](repeating: [Int](repeating: 0, count: levelCount + 1), count: nExperts)
        for s in 0..<slots {
            let e = Int(routes.experts[s]), l = levels[s]
            if l == 0 { continue }  // skipped by the miss policy
            guard e >= 0, e < nExperts, l >= 1, l <= levelCount else { throw ModelError("expert \(e) at level \(l) is out of range") }
            let key = e * (levelCount + 1) + l
            if let g = groupIndex[key] { groups[g].slots.append(s) } else {
                groupIndex[key] = groups.count
                groups.append(Group(expert: e, level: l, slots: [s]))
            }
            tokensAt[e][l] += 1
            layerStats.expertTokens[l - 1] += 1
        }
        let experts = (0..<nExperts).filter { e in tokensAt[e].contains { $0 > 0 } }
        // The levels (pieces) each expert's groups read, ascending: 1...highest when nested, the
        // levels used otherwise.
        var wanted = [[Int]](repeating: [], count: nExperts)
        for e in experts {
            var set = Set<Int>()
            for l in 1...levelCount where tokensAt[e][l] > 0 { set.formUnion(store.levelsRead(at: l)) }
            wanted[e] = set.sorted()
        }
        /// Tokens that need piece k of expert e.
        func needing(_ e: Int, _ k: Int) -> Int {
            (1...levelCount).reduce(0) { $0 + (store.levelsRead(at: $1).contains(k) ? tokensAt[e][$1] : 0) }
        }

        // The order missing pieces are read in, from the pool as it is now.
        pool.lock.lock()
        pool.currentLayer = layer
        pool.shielded = Set(experts)
        pool.recordNeeds(layer: layer, wanted: wanted)
        // Prefetched pieces this step does not read were mispredicted: their protection ends now,
        // so that they cannot hold budget the step's own pieces need.
        for entry in prefetchPins[layer] ?? [] where !wanted[entry.key.expert].contains(entry.key.level) {
            pool.dropPrefetchPin(entry)
        }
        var missing: [PieceKey] = []
        var missingPerExpert = [Int: [Int]]()
        for e in experts {
            for k in wanted[e] where pool.entries[PieceKey(layer: layer, expert: e, level: k)] == nil {
                missingPerExpert[e, default: []].append(k)
            }
        }
        pool.lock.unlock()
        switch order {
        case .expertID:
            for e in experts { for k in missingPerExpert[e] ?? [] { missing.append(PieceKey(layer: layer, expert: e, level: k)) } }
        case .hebf:
            var heads = missingPerExpert.mapValues { _ in 0 }
            while true {
                var best: (e: Int, tokens: Int)?
                for (e, ks) in missingPerExpert where heads[e]! < ks.count {
                    let n = needing(e, ks[heads[e]!])
                    if best == nil || n > best!.tokens || (n == best!.tokens && e < best!.e) { best = (e, n) }
                }
                guard let b = best else { break }
                missing.append(PieceKey(layer: layer, expert: b.e, level: missingPerExpert[b.e]![heads[b.e]!]))
                heads[b.e]! += 1
            }
        }
        var rank = [PieceKey: Int]()
        for (i, key) in missing.enumerated() { rank[key] = i }
        // Experts are admitted (their missing pieces reserved and queued) in the order of their
        // first missing piece; fully resident experts first, as they can run at once.
        var firstMissing = [Int: Int]()
        for (i, key) in missing.enumerated() where firstMissing[key.expert] == nil { firstMissing[key.expert] = i }
        let pending = experts.sorted { (firstMissing[$0] ?? -1, $0) < (firstMissing[$1] ?? -1, $1) }
        var pendingHead = 0
        var pinned = [Int: [ExpertPool.Entry?]]()  // expert → its wanted pieces by level − 1, pinned
        var remainingGroups = [Int](repeating: 0, count: nExperts)
        for g in groups { remainingGroups[g.expert] += 1 }
        var done = [Bool](repeating: false, count: groups.count)
        var doneCount = 0
        let slotOut = scratch.floats(.expertSlots, max(slots, 1) * hidden)
        var computeBusy: UInt64 = 0, computeIdle: UInt64 = 0

        pool.lock.lock()
        let ioStart = pool.ioBusyNanoseconds()
        let bytesStart = pool.bytesRead
        var prefetch = prefetchEnabled ? scheduledPrefetch : nil
        scheduledPrefetch = nil
        if let p = prefetch, p.layer < predictionAccuracy.count, let accuracy = predictionAccuracy[p.layer], accuracy < prefetchMinAccuracy {
            prefetch = nil
            layerStats.prefetchWithheld += 1
        }
        // The next layer's predicted pieces, and how many of its experts are queued: retried
        // whenever this layer frees budget.
        var prefetchPlan: [[PieceKey]]?
        var prefetchNext = 0
        defer {
            // On every exit (errors included) give back the pins this step holds, and the
            // protection of what was prefetched for it.
            for entries in pinned.values { for case let e? in entries { pool.unpin(e) } }
            for e in prefetchPins.removeValue(forKey: layer) ?? [] { pool.dropPrefetchPin(e) }
            pool.shielded = []
            pool.lock.unlock()
        }

        /// Pins the expert's resident pieces and reserves and queues its missing ones; false
        /// (holding nothing) when the pool cannot make room now.
        func admit(_ e: Int) throws -> Bool {
            var held = [ExpertPool.Entry?](repeating: nil, count: levelCount)
            var absent: [Int] = []
            for k in wanted[e] {
                let key = PieceKey(layer: layer, expert: e, level: k)
                if let entry = try pool.entry(key) {
                    pool.pin(entry)
                    held[k - 1] = entry
                    // The step's pin replaces the prefetch's: once the expert's groups are done,
                    // its budget can go to the experts after it.
                    pool.dropPrefetchPin(entry)
                } else {
                    absent.append(k)
                }
            }
            guard pool.reserve(absent.map { PieceKey(layer: layer, expert: e, level: $0) }) else {
                for case let entry? in held { pool.unpin(entry) }
                return false
            }
            // Queue in the step's order; pieces evicted since planning go last.
            let keys = absent.map { PieceKey(layer: layer, expert: e, level: $0) }
                .sorted { (rank[$0] ?? Int.max, $0.level) < (rank[$1] ?? Int.max, $1.level) }
            var started = [Int: ExpertPool.Entry]()
            for key in keys {
                started[key.level] = try pool.startLoad(key)
                layerStats.piecesRead[key.level - 1] += 1
            }
            for k in wanted[e] where held[k - 1] != nil {
                layerStats.hits[k - 1] += 1
                if held[k - 1]!.prefetched { layerStats.prefetchHits += 1; held[k - 1]!.prefetched = false }
            }
            pinned[e] = (1...levelCount).map { held[$0 - 1] ?? started[$0] }
            return true
        }

        while doneCount < groups.count {
            let seen = pool.completionCount()
            // Admit as many waiting experts as the budget allows, in order.
            while pendingHead < pending.count, try admit(pending[pendingHead]) { pendingHead += 1 }
            if pendingHead == pending.count, let p = prefetch {
                if prefetchPlan == nil { prefetchPlan = planPrefetch(layer: p.layer, x: x, routes: p.routes) }
                if prefetchNext < prefetchPlan!.count { prefetchNext = try admitPrefetch(prefetchPlan!, from: prefetchNext, stats: &layerStats) }
            }
            // A group whose levels have all arrived, hottest expert first.
            var ready: Int?
            for (i, g) in groups.enumerated() where !done[i] {
                guard let entries = pinned[g.expert] else { continue }
                var ok = true
                for k in store.levelsRead(at: g.level) {
                    let entry = entries[k - 1]!
                    switch pool.state(entry) {
                    case .failed(let message): throw ModelError(message)
                    case .loading: ok = false
                    case .ready: continue
                    }
                    break
                }
                if ok { ready = i; break }
            }
            if let i = ready {
                let g = groups[i], entries = pinned[g.expert]!
                for k in store.levelsRead(at: g.level) { pool.touch(entries[k - 1]!, high: g.level == levelCount) }
                pool.lock.unlock()
                let t0 = DispatchTime.now().uptimeNanoseconds
                run(g, record: store.records[layer][g.expert], entries: entries, x: x, routes: routes, slotOut: slotOut)
                computeBusy += DispatchTime.now().uptimeNanoseconds - t0
                pool.lock.lock()
                done[i] = true
                doneCount += 1
                remainingGroups[g.expert] -= 1
                if remainingGroups[g.expert] == 0, let entries = pinned.removeValue(forKey: g.expert) {
                    for case let e? in entries { pool.unpin(e) }
                }
                continue
            }
            // Any read, not only this step's: a prefetched piece whose protection ended is not
            // evictable until it has arrived.
            if !pool.readsPending() {
                // A read that ended after the scan above: look again before calling the step stuck.
                if pool.completionCount() != seen { continue }
                // Prefetched pieces of experts not admitted yet only hold protection: give it up
                // before giving up the step.
                let protected = (prefetchPins[layer] ?? []).filter(\.prefetchPinned)
                if !protected.isEmpty {
                    protected.forEach(pool.dropPrefetchPin)
                    continue
                }
                guard pendingHead < pending.count else { throw ModelError("expert step of MoE layer \(layer) made no progress") }
                let e = pending[pendingHead]
                let bytes = wanted[e].reduce(0) { $0 + store.allocationBytes(PieceKey(layer: layer, expert: e, level: $1)) }
                throw ModelError("the memory budget (\(pool.budget) bytes) cannot hold expert \(e) of MoE layer \(layer) at levels \(wanted[e]) (\(bytes) bytes) beside \(pool.residentBytes) pinned bytes")
            }
            let t0 = DispatchTime.now().uptimeNanoseconds
            pool.waitForCompletion(after: seen)
            computeIdle += DispatchTime.now().uptimeNanoseconds - t0
        }
        layerStats.ioBusy = Double(pool.ioBusyNanoseconds() - ioStart) / 1e9
        layerStats.bytesRead = pool.bytesRead - bytesStart
        // Sum per token in expert-id order, as ResidentExperts does (the lock is released by the defer).
        for e in experts {
            for s in 0..<slots where Int(routes.experts[s]) == e && levels[s] > 0 {
                Kernels.axpy(routes.weights[s], slotOut + s * hidden, out + (s / topK) * hidden, n: hidden)
            }
        }
        layerStats.computeBusy = Double(computeBusy) / 1e9
        layerStats.computeIdle = Double(computeIdle) / 1e9
        stepIdle += computeIdle
        layerStats.wall = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        statsLock.lock()
        statsStorage.layers[layer].add(layerStats)
        statsLock.unlock()
    }

    /// Computes one group's tokens through the expert at its level, into their slot rows.
    private func run(_ g: Group, record r: ExpertStore.Record, entries: [ExpertPool.Entry?], x: UnsafePointer<Float>,
                     routes: ExpertRoutes, slotOut: UnsafeMutablePointer<Float>) {
        let hidden = store.hidden, inter = store.intermediate
        func linear(_ m: Int, rows: Int, cols: Int) -> Linear {
            let read = store.levelsRead(at: g.level)
            let levels = read.map { k in entries[k - 1]!.data + r.matrixOffsets[k - 1][m] }
            let view = MWQMatrixView(rows: rows, cols: cols, group: store.group, baseBits: store.quantization.baseBits(at: g.level), levels: levels)
            return Linear(packed: PackedMWQ(view: view, level: read.count, owner: entries[read.lowerBound - 1]!.buffer))
        }
        let ffn = FeedForward(gate: linear(0, rows: inter, cols: hidden), up: linear(1, rows: inter, cols: hidden),
                              down: linear(2, rows: hidden, cols: inter), activation: activation)
        let n = g.slots.count
        let gathered = scratch.floats(.gathered, n * hidden)
        for (row, slot) in g.slots.enumerated() {
            (gathered + row * hidden).update(from: x + (slot / routes.topK) * hidden, count: hidden)
        }
        let y = scratch.floats(.expertOut, n * hidden)
        ffn(gathered, tokens: n, y, gateBuffer: scratch.floats(.expertGate, n * inter), upBuffer: scratch.floats(.expertUp, n * inter))
        for (row, slot) in g.slots.enumerated() {
            (slotOut + slot * hidden).update(from: y + row * hidden, count: hidden)
        }
    }
}

extension StreamingExperts {
    /// Builds the backend for a model whose routed experts were left out at build time.
    static func make(for model: TransformerModel, file: MWQFile, config: ConfigReader, options: LoadOptions,
                     streaming: ExpertStreaming) throws -> StreamingExperts {
        var decoderLayers: [Int: Int] = [:]
        var nExperts = 0
        for (i, layer) in model.layers.enumerated() {
            if case .sparse(let moe) = layer.ffn { decoderLayers[moe.moeLayer] = i; nExperts = moe.nExperts }
        }
        guard !decoderLayers.isEmpty, decoderLayers.count == model.info.moeLayerCount else {
            throw ModelError("\(file.path): --memory-budget streams routed experts, and this model has none (a dense model's FFNs are not routed)")
        }
        guard let sample = file.header.experts.first(where: { $0.layer == decoderLayers[0] }),
              let gate = sample.matrices.first(where: { $0.name.hasSuffix("gate_proj.weight") || $0.name.hasSuffix("w1.weight") }) else {
            throw ModelError("\(file.path): no expert record for the first MoE layer")
        }
        let store = try ExpertStore(file: file, decoderLayers: (0..<decoderLayers.count).map { decoderLayers[$0]! },
                                    expertCount: nExperts, hidden: model.info.hiddenSize, intermediate: gate.rows,
                                    directIO: streaming.directIO)
        let bits = file.header.quantization.bits
        if streaming.policy == "matryoshka-free", file.header.quantization.isNested {
            throw ModelError("\(file.path): --policy matryoshka-free reads separate copies of each bit-width, and this file's levels are nested (\(file.header.quantization.scheme)); quantize or synthesize the model with --scheme mfree")
        }
        let policy: BitWidthPolicy
        switch streaming.bitPolicy {
        case "uniform":
            let level = try options.bits.map { b in
                guard let i = bits.firstIndex(of: b) else { throw ModelError("\(file.path): --bits \(b) is not stored in this file (it holds \(bits))") }
                return i + 1
            } ?? bits.count
            policy = UniformBits(level: level)
        case "gate":
            guard !streaming.gateThresholds.isEmpty, streaming.gateThresholds.allSatisfy({ $0 > 0 && $0 <= 1 }) else {
                throw ModelError("gate thresholds must be in (0, 1], got \(streaming.gateThresholds)")
            }
            policy = GateScoreBits(thresholds: streaming.gateThresholds)
        case "static":
            guard let table = streaming.expertBits else {
                throw ModelError("the static bit policy\(streaming.policy == "edgemoe" ? " of --policy edgemoe" : "") needs per-expert bit-widths: --expert-bits FILE (written by d2moe calibrate-bits)")
            }
            policy = try StaticExpertBits(table: table, fileBits: bits, moeLayers: decoderLayers.count, experts: nExperts)
        case "router":
            policy = try RouterBits.make(file: file, decoderLayers: (0..<decoderLayers.count).map { decoderLayers[$0]! },
                                         experts: nExperts, options: options)
        default:
            throw ModelError("unknown bit-width policy '\(streaming.bitPolicy)' (uniform, gate, static, router)")
        }
        let budget = streaming.budget.bytes(ofExperts: store.totalBytes)
        guard budget > 0 else { throw ModelError("the memory budget is 0 bytes") }
        guard streaming.ioThreads >= 1, streaming.ioThreads <= 64 else { throw ModelError("I/O threads must be in 1...64") }
        let activation = try CommonConfig(config).activation
        guard streaming.scoreWindow >= 1 else { throw ModelError("the score window must be ≥ 1 step, got \(streaming.scoreWindow)") }
        let eviction = try EvictionPolicies.named(streaming.eviction, scoreWindow: streaming.scoreWindow)
        let miss: MissPolicy?
        switch streaming.missPolicy {
        case "none": miss = nil
        case "smoe":
            guard (0...1).contains(streaming.alpha) else { throw ModelError("--alpha must be in [0, 1], got \(streaming.alpha)") }
            miss = SMoESubstitution(alpha: streaming.alpha, weighting: streaming.substituteWeight)
        case "hobbit":
            let (t1, t2) = streaming.hobbitThresholds
            guard 0 <= t1, t1 <= t2, t2 <= 1 else { throw ModelError("HOBBIT's thresholds need 0 ≤ T1 ≤ T2 ≤ 1, got \(t1), \(t2)") }
            guard (1...bits.count).contains(streaming.hobbitLowLevel) else {
                throw ModelError("HOBBIT's low level must be in 1...\(bits.count) (this file's levels \(bits)), got \(streaming.hobbitLowLevel)")
            }
            miss = HobbitFallback(t1: t1, t2: t2, lowLevel: streaming.hobbitLowLevel)
        default: throw ModelError("unknown miss policy '\(streaming.missPolicy)' (none, smoe, hobbit)")
        }
        let backend = StreamingExperts(store: store, budget: budget, eviction: eviction,
                                       bitPolicy: policy, order: streaming.order, activation: activation, ioThreads: streaming.ioThreads)
        backend.prefetchEnabled = streaming.prefetch
        guard (0...1).contains(streaming.prefetchMinAccuracy) else {
            throw ModelError("the prefetch's minimum prediction accuracy must be in [0, 1], got \(streaming.prefetchMinAccuracy)")
        }
        backend.prefetchMinAccuracy = Float(streaming.prefetchMinAccuracy)
        backend.missPolicy = miss
        guard (0...1).contains(streaming.lowLevelShare) else { throw ModelError("the base-level share must be in [0, 1]") }
        backend.pool.lowLevelShare = streaming.lowLevelShare
        return backend
    }
}
