import Foundation
import Testing
import D2MoE
import D2MoEFormats

/// The bit-width routers at inference (`--bit-policy router`) and their training.
@Suite struct BitRouterTests {
    static func uniform(_ rng: inout RouterRNG) -> Float { Float(Double(rng.next() >> 11) / Double(1 << 53)) * 2 - 1 }

    /// A table of seeded random routers: `layers` × `experts`, hidden 6, 3 levels.
    static func table(layers: Int, experts: Int, seed: UInt64) throws -> (BitRouterTable, MWQRouterSet) {
        var rng = RouterRNG(seed: seed)
        var routers: [MWQRouter] = []
        for l in 0..<layers {
            for e in 0..<experts {
                routers.append(MWQRouter(layer: l, expert: e, weight: (0..<18).map { _ in uniform(&rng) }, bias: (0..<3).map { _ in uniform(&rng) },
                                         calibrationLogits: (0..<(40 * 3)).map { _ in 2 * uniform(&rng) }))
            }
        }
        let set = MWQRouterSet(hidden: 6, levels: 3, routers: routers)
        return (try BitRouterTable(set: set, decoderLayers: Array(0..<layers), experts: experts, origin: "test"), set)
    }

    @Test func policyPicksTheArgmaxOfEachChosenExpertsRouter() throws {
        let (table, set) = try Self.table(layers: 2, experts: 4, seed: 9)
        var rng = RouterRNG(seed: 4)
        let tokens = 50, topK = 2
        var x = [Float]()
        for _ in 0..<(tokens * 6) { x.append(Self.uniform(&rng) * 3) }
        var experts = [Int32]()
        for i in 0..<(tokens * topK) { experts.append(Int32((i * 7 + i / 3) % 4)) }
        let routes = ExpertRoutes(topK: topK, experts: experts, weights: Array(repeating: 0.5, count: experts.count),
                                  probabilities: Array(repeating: 0.25, count: tokens * 4))
        var levels = [Int](repeating: 0, count: experts.count)
        RouterBits(table: table).levels(layer: 1, input: x, hidden: 6, routes: routes, nExperts: 4, levelCount: 3, into: &levels)
        var seen = Set<Int>()
        for t in 0..<tokens {
            for j in 0..<topK {
                // Plain double-precision logits of router (1, expert).
                let r = set.routers[4 + Int(experts[t * topK + j])]
                var z = [Double](repeating: 0, count: 3)
                for k in 0..<3 {
                    z[k] = Double(r.bias[k])
                    for j in 0..<6 { z[k] += Double(r.weight[k * 6 + j]) * Double(x[t * 6 + j]) }
                }
                let best = Self.argmax(z) + 1
                #expect(levels[t * topK + j] == best)
                seen.insert(best)
            }
        }
        #expect(seen.count > 1, "random routers should disagree somewhere")
    }

    @Test func theBiasMovesTheAverageBitsMonotonically() throws {
        let (table, _) = try Self.table(layers: 3, experts: 2, seed: 21)
        let bits = [2, 3, 4]
        var previous = -Double.infinity
        var values: [Double] = []
        for step in -40...40 {
            let b = try #require(table.calibrationAverageBits(bits: bits, bias: Float(step) * 0.25))
            #expect(b >= previous, "bias \(Float(step) * 0.25): \(b) after \(previous)")
            previous = b
            values.append(b)
        }
        #expect(values.first! == 2 && values.last! == 4)
        #expect(Set(values).count > 5)
        // --target-bits: the solved bias lands on the nearest reachable average.
        for target in [2.5, 3.0, 3.4] {
            let bias = try table.solveBias(bits: bits, target: target)
            let got = try #require(table.calibrationAverageBits(bits: bits, bias: bias))
            #expect(abs(got - target) < 0.05, "target \(target): \(got)")
        }
        #expect(throws: ModelError.self) { _ = try table.solveBias(bits: bits, target: 4.5) }
    }

    /// The router policy on a model held in memory: extreme biases give exactly the uniform
    /// levels, no bias mixes them, and the statistics count every (token, expert).
    @Test(arguments: ["llama", "tiny-moe"])
    func mixedLevelsOnResidentExperts(model: String) throws {
        let dir = try BitRouterFormatTests.folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path: String
        if model == "llama" {
            path = dir.appendingPathComponent("llama.mwq").path
            _ = try MWQConverter.convert(model: TestPaths.fixtures.appendingPathComponent("llama").path, to: path, scheme: try MWQConverter.Scheme("v1"))
        } else {
            path = try BitRouterFormatTests.tinyMoE(in: dir)
        }
        let file = try MWQFile(path: path)
        let hidden = try ModelLoader.loadModel(path: path, options: LoadOptions(contextLength: 16)).info.hiddenSize
        try MWQFile.writeRouters(BitRouterFormatTests.randomRouters(for: file, hidden: hidden, seed: 8, scale: 2), into: path)
        func routed(bias: Double) throws -> ([[Float]], BitWidthStats) {
            var o = LoadOptions(contextLength: 16)
            o.bitPolicy = "router"
            o.bitsBias = bias
            let m = try ModelLoader.loadModel(path: path, options: o)
            let batch = (0..<6).map { BatchToken(sequence: 0, position: $0, token: Int32(37 * $0 % 100), wantsLogits: true) }
            let logits = try m.forward(batch, caches: [m.makeCache(capacity: 16)])
            return (logits, try #require(m.bitRouting).stats)
        }
        func uniform(_ bits: Int) throws -> [[Float]] {
            let m = try ModelLoader.loadModel(path: path, options: LoadOptions(contextLength: 16, bits: bits))
            let batch = (0..<6).map { BatchToken(sequence: 0, position: $0, token: Int32(37 * $0 % 100), wantsLogits: true) }
            return try m.forward(batch, caches: [m.makeCache(capacity: 16)])
        }
        let (low, lowStats) = try routed(bias: -1e6)
        let (high, highStats) = try routed(bias: 1e6)
        let (mixed, stats) = try routed(bias: 0)
        #expect(low == (try uniform(2)))
        #expect(high == (try uniform(4)))
        #expect(lowStats.averageBits == 2 && highStats.averageBits == 4)
        let slots = (model == "llama" ? 1 : 2) * 6 * stats.layers.count
        #expect(stats.total.reduce(0, +) == slots)
        #expect(stats.averageBits > 2 && stats.averageBits < 4, "\(stats.total)")
        #expect(mixed != low && mixed != high)

        if model == "tiny-moe" {
            // Streamed through the pool, the same routers give the same logits.
            var o = LoadOptions(contextLength: 16)
            var s = ExpertStreaming(budget: .fraction(0.5))
            s.bitPolicy = "router"
            o.streaming = s
            let m = try ModelLoader.loadModel(path: path, options: o)
            let batch = (0..<6).map { BatchToken(sequence: 0, position: $0, token: Int32(37 * $0 % 100), wantsLogits: true) }
            #expect(try m.forward(batch, caches: [m.makeCache(capacity: 16)]) == mixed)
            let streamed = BitWidthStats(try #require(m.experts as? StreamingExperts).stats)
            #expect(streamed.total == stats.total)
        }
    }

    /// A problem with a known answer: rows whose first feature s is high lose much at low bits,
    /// the rest lose little. Costs NMSE_k + α·b_k make the hard rows want 4 bits, the easy ones 2.
    static func synthetic(rows: Int, hardShare: Double, seed: UInt64) -> RouterSamples {
        var rng = RouterRNG(seed: seed)
        var s = RouterSamples(layer: 0, expert: 0, hidden: 8, levels: 3)
        for _ in 0..<rows {
            var x = (0..<8).map { _ in uniform(&rng) }
            let hard = Double(rng.next() >> 11) / Double(1 << 53) < hardShare
            // Hardness grows smoothly with x0 within each class, so capacity can move a threshold.
            x[0] = hard ? 0.2 + 0.8 * abs(x[0]) : -0.2 - 0.8 * abs(x[0])
            let h = hard ? x[0] : 0.02
            s.inputs += x
            s.errors += [Float(1.2 * h), Float(0.3 * h), 0]
            s.energy.append(1)
        }
        s.seen = rows
        return s
    }

    static func argmax(_ z: [Double]) -> Int {
        var best = 0
        for k in z.indices where z[k] > z[best] { best = k }
        return best
    }

    static func share(_ r: MWQRouter, of samples: RouterSamples, level: Int) -> Double {
        var n = 0
        for row in 0..<samples.rows {
            var z = [Double](repeating: 0, count: 3)
            for k in 0..<3 {
                z[k] = Double(r.bias[k])
                for j in 0..<8 { z[k] += Double(r.weight[k * 8 + j]) * Double(samples.inputs[row * 8 + j]) }
            }
            if argmax(z) == level { n += 1 }
        }
        return Double(n) / Double(samples.rows)
    }

    @Test func trainingLowersTheLossDeterministicallyAndCapacityMovesTheDistribution() throws {
        let data = Self.synthetic(rows: 3000, hardShare: 0.8, seed: 1)
        let test = Self.synthetic(rows: 1000, hardShare: 0.8, seed: 2)
        var o = RouterTrainingOptions()
        o.alpha = 0.05
        o.epochs = 6
        o.batch = 100
        o.learningRate = 0.05
        let a = try RouterTraining.fit([data], bits: [2, 3, 4], options: o)
        #expect(a.epochs.last!.loss < a.epochs.first!.loss * 0.8, "\(a.epochs.map(\.loss))")
        // Rows with x0 < 0 are easy (cheapest at 2 bits), the rest hard (cheapest at 4).
        let top = Self.share(a.routers[0], of: test, level: 2), bottom = Self.share(a.routers[0], of: test, level: 0)
        #expect(top > 0.7 && bottom > 0.15, "4-bit share \(top), 2-bit share \(bottom)")
        // Same seed, same routers; another seed, other routers.
        #expect(try RouterTraining.fit([data], bits: [2, 3, 4], options: o).routers == a.routers)
        var other = o
        other.seed = 99
        #expect(try RouterTraining.fit([data], bits: [2, 3, 4], options: other).routers != a.routers)

        // 80% of rows want 4 bits; a 30% capacity there pushes the least hard of them to 3 bits.
        var capped = o
        capped.capacity = [0.3, 0.4, 0.3]
        let c = try RouterTraining.fit([data], bits: [2, 3, 4], options: capped)
        let cappedTop = Self.share(c.routers[0], of: test, level: 2)
        #expect(c.epochs.allSatisfy { $0.dropped > 0 })
        #expect(cappedTop < top - 0.2, "4-bit share with capacity \(cappedTop), without \(top)")
        #expect(Self.share(c.routers[0], of: test, level: 1) > Self.share(a.routers[0], of: test, level: 1) + 0.1)
    }

    /// The command's library path on a synthetic MoE: collect, fit, write, and serve.
    @Test func trainRouterEndToEnd() throws {
        let dir = try BitRouterFormatTests.folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = try BitRouterFormatTests.tinyMoE(in: dir)
        var o = RouterTrainingOptions()
        o.tokens = 128
        o.window = 64
        o.rowsPerRouter = 48
        o.epochs = 2
        let text = String(repeating: "the quick brown fox jumps over the lazy dog. ", count: 20)
        let summary = try RouterTraining.train(model: path, text: text, corpus: "test", options: o)
        #expect(summary.routers == 16 && summary.calibrationTokens == 128 && summary.epochs.count == 2)
        let set = try #require(try MWQFile(path: path).routers())
        #expect(set.routers.count == 16)
        // Experts no calibration token reached get a weightless router (the layer's prior).
        let trained = set.routers.filter { !$0.calibrationLogits.isEmpty }
        #expect(!trained.isEmpty)
        #expect(set.routers.filter { $0.calibrationLogits.isEmpty }.allSatisfy { r in r.weight.allSatisfy { $0 == 0 } })
        var options = LoadOptions(contextLength: 16)
        options.bitPolicy = "router"
        options.targetBits = 3
        let engine = try Engine.load(path: path, options: options)
        let batch = (0..<8).map { BatchToken(sequence: 0, position: $0, token: Int32(100 + $0), wantsLogits: $0 == 7) }
        _ = try engine.model.forward(batch, caches: [engine.model.makeCache(capacity: 16)])
        #expect(try #require(engine.model.bitRouting).stats.total.reduce(0, +) == 2 * 8 * 2)

        // --sensitivity: the same run with per-layer weights from the output's KL divergence;
        // the model it measured on is back to one level afterwards, so the routers still fit.
        o.sensitivity = true
        let weighted = try RouterTraining.train(model: path, text: text, corpus: "test", options: o)
        #expect(weighted.routers == 16 && weighted.epochs.allSatisfy { $0.loss.isFinite })
        let note = try #require(try MWQFile(path: path).routers()?.training)
        #expect(note["sensitivity"] == .bool(true))
        #expect(try #require(try MWQFile(path: path).routers()) != set)
    }
}
