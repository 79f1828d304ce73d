import Foundation
import Testing
import D2MoE
import D2MoEFormats

/// `train-router --objective kl` (the measured end-to-end cost per token) and the routers'
/// level range under `--router-levels adjacent`.
@Suite struct RouterObjectiveTests {
    /// Log-probabilities of each row of `logits`, in double precision.
    static func logProbabilities(_ logits: [Float]) -> [Double] {
        let m = Double(logits.max()!)
        let lse = m + Foundation.log(logits.reduce(0.0) { $0 + Foundation.exp(Double($1) - m) })
        return logits.map { Double($0) - lse }
    }

    /// `outputKL` resumes each pass at the lowered layer from the reference pass's residual
    /// stream; here every value is checked against whole passes of a model that routers force to
    /// the same levels (that layer at level k, every other at the highest), with the KL taken in
    /// double precision.
    @Test func theMeasuredKLEqualsWholePassesWithOneLayerLowered() throws {
        let dir = try BitRouterFormatTests.folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("llama.mwq").path
        _ = try MWQConverter.convert(model: TestPaths.fixtures.appendingPathComponent("llama").path, to: path, scheme: try MWQConverter.Scheme("v1"))
        let file = try MWQFile(path: path)
        let bits = file.header.quantization.bits
        let window = 6, windows = 2
        let tokens = (0..<(window * windows + 3)).map { Int32((41 * $0 + 7) % 100) }
        let model = try ModelLoader.loadModel(path: path, options: LoadOptions(contextLength: window))
        let hidden = model.info.hiddenSize, layers = model.info.layerCount
        let kl = try RouterTraining.outputKL(model: model, tokens: tokens, window: window, windows: windows, bits: bits)
        #expect(Set(kl.keys) == Set(0..<layers))
        // A dense block's rows are its tokens, in order, and carry their place in the stream.
        var co = RouterTrainingOptions()
        co.window = window; co.tokens = window * windows
        let samples = try RouterTraining.collect(model: model, tokens: tokens, levels: bits.count, options: co)
        #expect(samples.count == layers)
        #expect(samples.allSatisfy { $0.positions == (0..<Int32(window * windows)).map { $0 } })

        func logits(_ m: TransformerModel, _ w: Int) throws -> [[Float]] {
            let batch = (0..<window).map { BatchToken(sequence: 0, position: $0, token: tokens[w * window + $0], wantsLogits: true) }
            return try m.forward(batch, caches: [m.makeCache(capacity: window)])
        }
        let reference = try ModelLoader.loadModel(path: path, options: LoadOptions(contextLength: window))
        var largest = 0.0
        for layer in 0..<layers {
            for k in 0..<(bits.count - 1) {
                // Weightless routers whose biases pick level k in `layer` and the highest elsewhere.
                let routers = file.header.experts.map { e in
                    MWQRouter(layer: e.layer, expert: e.expert, weight: Array(repeating: 0, count: bits.count * hidden),
                              bias: bits.indices.map { $0 == (e.layer == layer ? k : bits.count - 1) ? 10 : 0 })
                }
                try MWQFile.writeRouters(MWQRouterSet(hidden: hidden, levels: bits.count, routers: routers), into: path)
                var o = LoadOptions(contextLength: window)
                o.bitPolicy = "router"
                let lowered = try ModelLoader.loadModel(path: path, options: o)
                for w in 0..<windows {
                    let p = try logits(reference, w), q = try logits(lowered, w)
                    for t in 0..<window {
                        let lp = Self.logProbabilities(p[t]), lq = Self.logProbabilities(q[t])
                        let expected = zip(lp, lq).reduce(0.0) { $0 + Foundation.exp($1.0) * ($1.0 - $1.1) }
                        let got = Double(kl[layer]![k][w * window + t])
                        largest = max(largest, expected)
                        #expect(abs(got - expected) <= 1e-8 + 1e-2 * expected, "layer \(layer) level \(k) token \(w * window + t): \(got) vs \(expected)")
                    }
                }
            }
        }
        #expect(largest > 1e-6, "lowering a layer should move the output measurably")
        // The model measured on is back to one level with nothing left hooked in.
        let again = try logits(model, 1)
        #expect(again == (try logits(reference, 1)))
    }

    /// A dense block's row costs its own token's KL at each level; in a sparse block a token's KL
    /// is shared among its experts' rows by gate-weighted squared error; rows without a token
    /// keep their NMSE weighted by the layer's mean KL per unit of mean NMSE; everything is
    /// scaled so the mean lowest-level cost equals the NMSE's.
    @Test func measuredKLReplacesTheRowsCosts() {
        let levels = 3
        // Layer 0: a dense block, rows at tokens 2 and 0.
        let dense = RouterSamples(layer: 0, expert: 0, hidden: 1, levels: levels, inputs: [0, 0],
                                  errors: [0.4, 0.1, 0, 0.2, 0.05, 0], energy: [1, 2], positions: [2, 0])
        // Layer 1: one expert's row with no known token.
        let unknown = RouterSamples(layer: 1, expert: 3, hidden: 1, levels: levels, inputs: [0], errors: [0.6, 0.3, 0], energy: [1])
        // Layer 2: two experts at token 1, gate weights 1 and 2.
        var a = RouterSamples(layer: 2, expert: 0, hidden: 1, levels: levels, inputs: [0], errors: [0.3, 0.1, 0], energy: [1], positions: [1])
        var b = RouterSamples(layer: 2, expert: 1, hidden: 1, levels: levels, inputs: [0], errors: [0.1, 0.1, 0], energy: [1], positions: [1])
        a.gateWeights = [1]; b.gateWeights = [2]
        let kl: [Int: [[Float]]] = [0: [[0.5, 0.7, 0.9, 0.3], [0.1, 0.2, 0.3, 0.1]],
                                    1: [[0.2, 0.2, 0.2, 0.2], [0.04, 0.04, 0.04, 0.04]],
                                    2: [[0, 0.7, 0, 0], [0, 0.2, 0, 0]]]
        var samples = [dense, unknown, a, b]
        let means = RouterTraining.apply(kl: kl, to: &samples, levels: levels)
        #expect(abs(means[0]![0] - 0.6) < 1e-6 && abs(means[1]![1] - 0.04) < 1e-6)
        // Before scaling:
        // - dense rows [0.9, 0.3, 0] and [0.5, 0.1, 0];
        // - the unknown row [0.6·0.2/0.6, 0.3·0.04/0.3, 0] = [0.2, 0.04, 0];
        // - w²·error at token 1: 0.3 and 0.4 at the lowest level, 0.1 and 0.4 at the middle one, so
        //   [0.7·3/7, 0.2·1/5, 0] = [0.3, 0.04, 0] and [0.7·4/7, 0.2·4/5, 0] = [0.4, 0.16, 0].
        // The lowest-level costs sum to 2.3 against the NMSE's 1.6.
        let s = Float(1.6 / 2.3)
        let want: [[Float]] = [[0.9, 0.3, 0, 0.5, 0.1, 0], [0.2, 0.04, 0], [0.3, 0.04, 0], [0.4, 0.16, 0]].map { $0.map { $0 * s } }
        for (got, w) in zip(samples.map(\.errors), want) {
            #expect(zip(got, w).allSatisfy { abs($0 - $1) < 1e-6 }, "\(got) vs \(w)")
        }
        // A dropped row loses the layer's lowest-level KL per unit NMSE (0.6/0.3 for layer 0).
        #expect(abs(samples[0].energy[1] - 2 * 2 * s) < 1e-6)
        #expect(abs(samples[1].energy[0] - 1 * (0.2 / 0.6) * s) < 1e-6)
    }

    @Test func adjacentLevelsBracketTheTarget() throws {
        let bits = [2, 3, 4]
        #expect(BitRouterTable.bracket(bits: bits, target: 3.5) == 1...2)
        #expect(BitRouterTable.bracket(bits: bits, target: 2.2) == 0...1)
        #expect(BitRouterTable.bracket(bits: bits, target: 3) == 1...1)
        #expect(BitRouterTable.bracket(bits: bits, target: 9) == 2...2)
        #expect(BitRouterTable.bracket(bits: [5, 6, 7, 8], target: 6.4) == 1...2)

        let (table, _) = try BitRouterTests.table(layers: 3, experts: 2, seed: 21)
        for target in [2.4, 3.3, 3.7] {
            let range = BitRouterTable.bracket(bits: bits, target: target)
            let bias = try table.solveBias(bits: bits, target: target, range: range)
            let got = try #require(table.calibrationAverageBits(bits: bits, bias: bias, range: range))
            #expect(abs(got - target) < 0.05, "target \(target): \(got)")
            // Whatever the bias, only the bracketing levels are chosen.
            for b in [-1e6, -1, 0, 1, 1e6] as [Float] {
                let avg = try #require(table.calibrationAverageBits(bits: bits, bias: b, range: range))
                #expect(avg >= Double(bits[range.lowerBound]) && avg <= Double(bits[range.upperBound]))
            }
            var rng = RouterRNG(seed: 5)
            let x = (0..<(20 * 6)).map { _ in BitRouterTests.uniform(&rng) * 3 }
            let experts = (0..<40).map { Int32($0 % 2) }
            let routes = ExpertRoutes(topK: 2, experts: experts, weights: Array(repeating: 0.5, count: 40),
                                      probabilities: Array(repeating: 0.5, count: 40))
            var levels = [Int](repeating: 0, count: 40)
            RouterBits(table: table, bias: bias, range: range).levels(layer: 2, input: x, hidden: 6, routes: routes, nExperts: 2,
                                                                      levelCount: 3, into: &levels)
            #expect(levels.allSatisfy { range.contains($0 - 1) })
        }
    }

    /// The command's path with `--objective kl` on a sparse model (rows without positions); the
    /// note records the objective.
    @Test func trainRouterWithTheKLObjective() throws {
        let dir = try BitRouterFormatTests.folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = try BitRouterFormatTests.tinyMoE(in: dir)
        var o = RouterTrainingOptions()
        o.tokens = 64
        o.window = 32
        o.rowsPerRouter = 48
        o.epochs = 2
        o.objective = .kl
        let text = String(repeating: "the quick brown fox jumps over the lazy dog. ", count: 20)
        // Every routed row carries its token: each token appears once per chosen expert per layer.
        let engine = try Engine.load(path: path, options: LoadOptions(contextLength: o.window))
        let ids = engine.tokenizer.encode(text, addSpecial: false, parseSpecial: false)
        var all = o
        all.rowsPerRouter = 10_000
        let rows = try RouterTraining.collect(model: engine.model, tokens: ids, levels: 3, options: all)
        for layer in Set(rows.map(\.layer)) {
            var perToken = [Int32: Int]()
            for s in rows where s.layer == layer { for p in s.positions { perToken[p, default: 0] += 1 } }
            #expect(perToken.count == o.tokens && perToken.values.allSatisfy { $0 == engine.model.info.expertsPerToken })
        }
        let summary = try RouterTraining.train(model: path, text: text, corpus: "test", options: o)
        #expect(summary.epochs.allSatisfy { $0.loss.isFinite && $0.loss > 0 })
        let set = try #require(try MWQFile(path: path).routers())
        guard case .string(let objective)? = set.training?["objective"] else { Issue.record("no objective in the note"); return }
        #expect(objective.hasPrefix("kl"))
        o.sensitivity = true
        #expect(throws: ModelError.self) { _ = try RouterTraining.train(model: path, text: text, corpus: "test", options: o) }
    }
}
