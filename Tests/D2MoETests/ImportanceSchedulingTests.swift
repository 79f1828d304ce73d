import Foundation
import Testing
import D2MoE

/// Importance-driven expert scheduling (issue 9): SMoE substitution, HOBBIT's fallback, score and
/// HOBBIT eviction, the α fit, and all of it through the streaming engine.
@Suite(.serialized)
struct ImportanceSchedulingTests {
    /// Two tokens, six experts, top-2.
    static func routes(weighting: RouteWeighting = .normalized) -> ExpertRoutes {
        let p: [Float] = [0.40, 0.25, 0.20, 0.10, 0.03, 0.02,   // token 0 chooses 0, 1; S = 0.20
                          0.05, 0.05, 0.10, 0.60, 0.15, 0.05]   // token 1 chooses 3, 4; S = 0.10
        let experts: [Int32] = [0, 1, 3, 4]
        let weights: [Float] = weighting == .unit ? [1, 1, 1, 1] : [0.40 / 0.65, 0.25 / 0.65, 0.60 / 0.75, 0.15 / 0.75]
        return ExpertRoutes(topK: 2, experts: experts, weights: weights, probabilities: p, weighting: weighting)
    }

    static func resolve(_ policy: MissPolicy, _ r: inout ExpertRoutes, levels: inout [Int], resident: [Int]) -> MissCounts {
        var counts = MissCounts()
        policy.resolve(routes: &r, levels: &levels, nExperts: 6, levelCount: 3, residentLevel: { resident[$0] }, counts: &counts)
        return counts
    }

    @Test func smoeSubstitutesAMissingLowScoreExpertWithAResidentOneInRange() {
        // α = 0.3: token 0's expert 1 (0.25 < 1.3·0.20) is low-score; expert 2 (0.20 > 0.7·0.20) is resident.
        var r = Self.routes(), levels = [3, 3, 3, 3]
        let counts = Self.resolve(SMoESubstitution(alpha: 0.3), &r, levels: &levels, resident: [0, 0, 3, 0, 0, 0])
        #expect(r.experts == [0, 2, 3, 4])
        #expect(counts.substituted == 1)
        // own: renormalised over the final set {0, 2}.
        #expect(abs(r.weights[0] - 0.40 / 0.60) < 1e-6 && abs(r.weights[1] - 0.20 / 0.60) < 1e-6)
        // Token 1: expert 4 (0.15 ≥ 1.3·0.10) is important and untouched.
        #expect(r.weights[2] == Self.routes().weights[2] && r.weights[3] == Self.routes().weights[3])
    }

    @Test func smoeLeavesResidentImportantAndMustRunExpertsAlone() {
        // Resident at the chosen level: nothing to save.
        var r = Self.routes(), levels = [3, 3, 3, 3]
        #expect(Self.resolve(SMoESubstitution(alpha: 0.3), &r, levels: &levels, resident: [0, 3, 3, 0, 0, 0]).substituted == 0)
        // Resident only at a lower level than chosen counts as missing.
        r = Self.routes()
        #expect(Self.resolve(SMoESubstitution(alpha: 0.3), &r, levels: &levels, resident: [0, 2, 3, 0, 0, 0]).substituted == 1)
        // α = 0: substitution off.
        r = Self.routes()
        #expect(Self.resolve(SMoESubstitution(alpha: 0), &r, levels: &levels, resident: [0, 0, 3, 0, 0, 0]).substituted == 0)
        #expect(r.experts == Self.routes().experts)
        // A small α makes expert 1 important (0.25 ≥ 1.1·0.20).
        r = Self.routes()
        #expect(Self.resolve(SMoESubstitution(alpha: 0.1), &r, levels: &levels, resident: [0, 0, 3, 0, 0, 0]).substituted == 0)
    }

    @Test func smoeFallsBackToAnotherTokensTopExpert() {
        // Nothing resident in range: expert 5 (0.02) is resident but below 0.7·0.20. Token 1 must
        // run 3 and 4; for token 0, 3 scores higher.
        var r = Self.routes(), levels = [3, 3, 3, 3]
        let counts = Self.resolve(SMoESubstitution(alpha: 0.3, weighting: .inherit), &r, levels: &levels, resident: [0, 0, 0, 0, 0, 3])
        #expect(r.experts == [0, 3, 3, 4])
        #expect(counts.substituted == 1)
        #expect(r.weights == Self.routes().weights, "inherit keeps the replaced weight")
        // scaled: the replaced weight × p(3)/p(1).
        r = Self.routes()
        _ = Self.resolve(SMoESubstitution(alpha: 0.3, weighting: .scaled), &r, levels: &levels, resident: [0, 0, 0, 0, 0, 3])
        #expect(abs(r.weights[1] - Self.routes().weights[1] * 0.10 / 0.25) < 1e-6)
        // Unit weights stay 1 under own.
        r = Self.routes(weighting: .unit)
        _ = Self.resolve(SMoESubstitution(alpha: 0.3), &r, levels: &levels, resident: [0, 0, 0, 0, 0, 3])
        #expect(r.weights == [1, 1, 1, 1] && r.experts == [0, 3, 3, 4])
    }

    @Test func smoeKeepsAnExpertAnotherTokenMustRun() {
        // Token 1 now chooses 1 with a high score: token 0's low-score expert 1 is read anyway.
        var r = Self.routes()
        r.experts = [0, 1, 1, 4]
        r.probabilities[6 + 1] = 0.6
        r.probabilities[6 + 3] = 0.05
        var levels = [3, 3, 3, 3]
        #expect(Self.resolve(SMoESubstitution(alpha: 0.3), &r, levels: &levels, resident: [0, 0, 3, 0, 0, 0]).substituted == 0)
    }

    @Test func smoePrefetchWantsOnlyImportantExperts() {
        let policy = SMoESubstitution(alpha: 0.3), r = Self.routes()
        #expect((0..<4).map { policy.prefetchWants(routes: r, slot: $0, nExperts: 6) } == [true, false, true, true])
    }

    /// One token choosing three experts with probabilities 0.5, 0.3, 0.2 (shares before them 0, 0.5, 0.8).
    static func hobbitRoutes() -> ExpertRoutes {
        ExpertRoutes(topK: 3, experts: [2, 0, 1], weights: [0.3, 0.2, 0.5], probabilities: [0.3, 0.2, 0.5, 0, 0, 0])
    }

    @Test func hobbitFallsBackByCumulativeGateWeight() {
        // Slot order by score: expert 2 (share 0), 0 (0.5), 1 (0.8).
        var r = Self.hobbitRoutes(), levels = [3, 3, 3]
        var counts = Self.resolve(HobbitFallback(t1: 0.6, t2: 0.9), &r, levels: &levels, resident: [0, 0, 0, 0, 0, 0])
        #expect(levels == [3, 3, 1] && counts.downgraded == 1 && counts.skipped == 0)
        // T1 = 0.4: expert 0 goes low too; a resident level 2 is used instead of reading the base.
        levels = [3, 3, 3]
        counts = Self.resolve(HobbitFallback(t1: 0.4, t2: 0.9), &r, levels: &levels, resident: [0, 2, 0, 0, 0, 0])
        #expect(levels == [3, 1, 2] && counts.downgraded == 2)
        // T2 = 0.7: expert 1 is skipped unless something of it is resident.
        levels = [3, 3, 3]
        counts = Self.resolve(HobbitFallback(t1: 0.6, t2: 0.7), &r, levels: &levels, resident: [0, 0, 0, 0, 0, 0])
        #expect(levels == [3, 3, 0] && counts.skipped == 1)
        levels = [3, 3, 3]
        counts = Self.resolve(HobbitFallback(t1: 0.6, t2: 0.7), &r, levels: &levels, resident: [0, 1, 0, 0, 0, 0])
        #expect(levels == [3, 3, 1] && counts.skipped == 0 && counts.downgraded == 1)
        // Hits run as chosen whatever their share; the top expert always reads its level.
        levels = [3, 3, 3]
        counts = Self.resolve(HobbitFallback(t1: 0, t2: 0), &r, levels: &levels, resident: [0, 3, 0, 0, 0, 0])
        #expect(levels == [3, 0, 3] && counts.skipped == 1)
        #expect(r.experts == Self.hobbitRoutes().experts, "HOBBIT never changes the experts")
    }

    static func usage(layer: Int, expert: Int, level: Int, lastUse: UInt64, uses: Int, high: Int = 0, score: Float = 0,
                      shielded: Bool = false) -> PieceUsage {
        var u = PieceUsage(key: PieceKey(layer: layer, expert: expert, level: level), bytes: 1, lastUse: lastUse, uses: uses)
        u.highUses = high
        u.score = score
        u.shielded = shielded
        return u
    }

    @Test func scoreEvictionDropsTheLowestAverageScoreUnlessShielded() {
        let policy = ScoreEviction(window: 4)
        let c = [Self.usage(layer: 0, expert: 0, level: 1, lastUse: 1, uses: 9, score: 0.30),
                 Self.usage(layer: 0, expert: 1, level: 1, lastUse: 9, uses: 1, score: 0.05, shielded: true),
                 Self.usage(layer: 1, expert: 2, level: 1, lastUse: 5, uses: 5, score: 0.10),
                 Self.usage(layer: 1, expert: 2, level: 2, lastUse: 5, uses: 5, score: 0.10)]
        // Expert 1 scores lowest but is chosen in this layer; expert 2's higher level goes first.
        #expect(policy.victim(among: c, currentLayer: 0, layerCount: 2) == 3)
        #expect(policy.victim(among: Array(c[0...2]), currentLayer: 0, layerCount: 2) == 2)
        // When only shielded pieces are left, one of them goes rather than none.
        #expect(policy.victim(among: [c[1]], currentLayer: 0, layerCount: 2) == 0)
        #expect(LRUEviction().victim(among: c, currentLayer: 0, layerCount: 2) == 0)
    }

    @Test func hobbitEvictionWeighsRecencyFrequencyPrecisionAndDistance() {
        let c = [Self.usage(layer: 1, expert: 0, level: 1, lastUse: 10, uses: 8, high: 6),   // next layer, hot
                 Self.usage(layer: 3, expert: 1, level: 1, lastUse: 2, uses: 1, high: 0),    // ran last, cold
                 Self.usage(layer: 2, expert: 2, level: 1, lastUse: 5, uses: 4, high: 3)]
        #expect(HobbitEviction().victim(among: c, currentLayer: 0, layerCount: 4) == 1)
        // Recency alone would pick the same; frequency and precision can outvote it.
        let d = [Self.usage(layer: 1, expert: 0, level: 1, lastUse: 1, uses: 9, high: 9),
                 Self.usage(layer: 1, expert: 1, level: 1, lastUse: 9, uses: 1, high: 0)]
        #expect(LRUEviction().victim(among: d, currentLayer: 0, layerCount: 4) == 0)
        #expect(HobbitEviction().victim(among: d, currentLayer: 0, layerCount: 4) == 1)
    }

    @Test func reuseEvictionIsTheLayerRuleUntilNeedsDiffer() {
        // Layer 3 ran last (current 0 of 4): both rules drop its high level first, then its base.
        var c = [Self.usage(layer: 1, expert: 0, level: 1, lastUse: 4, uses: 1),
                 Self.usage(layer: 3, expert: 1, level: 1, lastUse: 9, uses: 1),
                 Self.usage(layer: 3, expert: 1, level: 2, lastUse: 9, uses: 1),
                 Self.usage(layer: 2, expert: 2, level: 1, lastUse: 2, uses: 1)]
        #expect(LayerDistanceEviction().victim(among: c, currentLayer: 0, layerCount: 4) == 2)
        #expect(ReuseDistanceEviction().victim(among: c, currentLayer: 0, layerCount: 4) == 2)
        #expect(ReuseDistanceEviction().victim(among: Array(c[0...1]) + [c[3]], currentLayer: 0, layerCount: 4) == 1)
        // Layer 3's expert is needed every step, layer 1's expert 0 one step in ten: 1 + 4·9 = 37
        // layers away against 3, so it goes first; the layer rule still drops layer 3's.
        c[0].needRate = 0.1
        for i in 1...3 { c[i].needRate = 1 }
        #expect(ReuseDistanceEviction().victim(among: c, currentLayer: 0, layerCount: 4) == 0)
        #expect(LayerDistanceEviction().victim(among: c, currentLayer: 0, layerCount: 4) == 2)
        // Half the steps: 2 + 4·1 = 6 for layer 2's expert against 3 + 0 for layer 3's.
        c[0].needRate = 1
        c[3].needRate = 0.5
        #expect(ReuseDistanceEviction().victim(among: c, currentLayer: 0, layerCount: 4) == 3)
    }

    @Test func alphaFitPicksTheSmallestAlphaMeetingTheTarget() {
        let candidates = [0, 0.1, 0.2, 0.3, 0.4]
        let measured = Dictionary(uniqueKeysWithValues: candidates.map { ($0, 50 - 40 * $0) })  // 50 → 34 ms
        let r = AlphaTuning.choose(targetMilliseconds: 40, candidates: candidates, measured: measured)
        #expect(abs(r.slope + 40) < 1e-9 && abs(r.intercept - 50) < 1e-9)
        #expect(r.alpha == 0.3 && r.meetsTarget)
        let none = AlphaTuning.choose(targetMilliseconds: 10, candidates: candidates, measured: measured)
        #expect(none.alpha == 0.4 && !none.meetsTarget)
        #expect(AlphaTuning.choose(targetMilliseconds: 60, candidates: candidates, measured: measured).alpha == 0)
    }

    // MARK: Through the engine

    static func pair(_ configure: (inout ExpertStreaming) -> Void, experts: Int = 3) throws
        -> (resident: [[Float]], streamed: [[Float]], stats: ExpertStreamStats, budget: Int) {
        let path = try ExpertStreamingTests.converted("olmoe")
        let resident = try ExpertStreamingTests.logits(try ModelLoader.loadModel(path: path, options: LoadOptions(contextLength: 16)))
        let (_, probe) = try ExpertStreamingTests.streamed(path, budget: .fraction(1))
        let budget = experts * ExpertStreamingTests.oneExpert(probe)
        let (model, backend) = try ExpertStreamingTests.streamed(path, budget: .bytes(budget), configure: configure)
        let streamed = try ExpertStreamingTests.logits(model)
        return (resident, streamed, backend.stats, budget)
    }

    /// Eviction policies change what is read, never the logits.
    @Test(arguments: ["evict-score", "evict-lru", "evict-lfu", "evict-layer"])
    func evictionPresetsKeepTheLogits(preset: String) throws {
        let (resident, streamed, stats, budget) = try Self.pair { try! $0.apply(policy: preset) }
        let same = streamed == resident
        #expect(same, "logits differ")
        #expect(stats.peakPoolBytes <= budget && stats.evictions > 0)
        #expect(stats.total.misses == MissCounts())
    }

    @Test func hobbitEvictionKeepsTheLogits() throws {
        let (resident, streamed, stats, budget) = try Self.pair { $0.eviction = "hobbit" }
        let same = streamed == resident
        #expect(same, "logits differ")
        #expect(stats.peakPoolBytes <= budget && stats.evictions > 0)
    }

    @Test func smoeSubstitutesUnderATightBudgetAndNotAtAlphaZero() throws {
        // The fixture's random routers score experts almost alike: α = 1 makes every chosen expert
        // below 2·S substitutable by any resident one; 8 of the 16 experts fit.
        let on = try Self.pair({ try! $0.apply(policy: "smoe"); $0.alpha = 1 }, experts: 8)
        #expect(on.stats.total.misses.substituted > 0, "no substitution at α 1 with an 8-expert pool")
        #expect(on.stats.peakPoolBytes <= on.budget)
        #expect(on.streamed.allSatisfy { $0.allSatisfy(\.isFinite) })
        let changed = on.streamed != on.resident
        #expect(changed, "substituted experts left every logit as it was")
        #expect(on.stats.total.predictedSlots > 0 && on.stats.predictionAccuracy > 0 && on.stats.predictionAccuracy <= 1)
        let off = try Self.pair({ try! $0.apply(policy: "smoe"); $0.alpha = 0 }, experts: 8)
        let same = off.streamed == off.resident
        #expect(same)
        #expect(off.stats.total.misses == MissCounts())
        #expect(on.stats.total.bytesRead < off.stats.total.bytesRead, "substitution read \(on.stats.total.bytesRead) bytes, none \(off.stats.total.bytesRead)")
    }

    @Test func hobbitSkipsAndDowngradesUnderATightBudget() throws {
        // Top-2: the second expert's share before it is ≥ 0.5, so T1 = 0.3 never reads it whole on a miss.
        let low = try Self.pair { try! $0.apply(policy: "hobbit"); $0.hobbitThresholds = (0.3, 1) }
        #expect(low.stats.total.misses.downgraded > 0 && low.stats.total.misses.skipped == 0, "\(low.stats.total.misses)")
        let on = try Self.pair { try! $0.apply(policy: "hobbit"); $0.hobbitThresholds = (0.3, 0.3) }
        let m = on.stats.total.misses
        #expect(m.skipped > 0, "\(m)")
        #expect(m.substituted == 0)
        #expect(on.stats.peakPoolBytes <= on.budget && low.stats.peakPoolBytes <= low.budget)
        // Skipped (token, expert) pairs are not counted as computed.
        #expect(on.stats.total.expertTokens.reduce(0, +) == on.stats.total.tokens * 2 - m.skipped)
        // With both thresholds at 1 every miss reads its full level: the resident logits.
        let full = try Self.pair { try! $0.apply(policy: "hobbit"); $0.hobbitThresholds = (1, 1) }
        let same = full.streamed == full.resident
        #expect(same)
        #expect(full.stats.total.misses == MissCounts())
    }

    /// A replayed trace scores only what it chose: its weights, or 1/k without them; the rest 0.
    @Test func traceReplayScoresOnlyTheTracesChoice() throws {
        let dir = ExpertStreamingTests.directory
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        for (name, line, expected) in [("plain", "{\"layer\": 0, \"experts\": [4, 1]}", [Float](arrayLiteral: 0.5, 0.5)),
                                       ("weighted", "{\"layer\": 0, \"experts\": [4, 1], \"weights\": [0.7, 0.3]}", [0.7, 0.3])] {
            let path = dir.appendingPathComponent("score-\(name).jsonl").path
            try Data((line + "\n").utf8).write(to: URL(fileURLWithPath: path))
            let replay = TraceReplay(trace: try RoutingTrace.load(path: path))
            var r = ExpertRoutes(topK: 2, experts: [0, 2], weights: [0.5, 0.5], probabilities: [Float](repeating: 1 / 6, count: 6))
            try replay.routed(moeLayer: 0, batch: [BatchToken(sequence: 0, position: 0, token: 1, wantsLogits: false)], routes: &r, nExperts: 6)
            #expect(r.experts == [4, 1])
            #expect(r.probabilities == [0, expected[1], 0, 0, expected[0], 0])
            // No S_{k+1}: nothing to substitute, whatever is resident.
            var levels = [3, 3]
            #expect(Self.resolve(SMoESubstitution(alpha: 0.9), &r, levels: &levels, resident: [3, 3, 3, 3, 0, 0]).substituted == 0)
        }
    }

    @Test func badSchedulingOptionsAreClearErrors() throws {
        let path = try ExpertStreamingTests.converted("olmoe")
        func message(_ configure: (inout ExpertStreaming) -> Void) -> String {
            do { _ = try ExpertStreamingTests.streamed(path, budget: .fraction(0.5), configure: configure); return "" } catch { return String(describing: error) }
        }
        #expect(message { try! $0.apply(policy: "smoe"); $0.alpha = 1.5 }.contains("--alpha"))
        #expect(message { try! $0.apply(policy: "hobbit"); $0.hobbitThresholds = (0.9, 0.5) }.contains("T1"))
        #expect(message { try! $0.apply(policy: "hobbit"); $0.hobbitLowLevel = 4 }.contains("low level"))
        #expect(message { $0.eviction = "score"; $0.scoreWindow = 0 }.contains("score window"))
        var s = ExpertStreaming(budget: .fraction(1))
        #expect(throws: (any Error).self) { try s.apply(policy: "evict-mru") }
    }
}
