import Foundation
import Testing
import D2MoE
import D2MoEFormats

/// EdgeMoE's static per-expert bit-widths (issue 6, `--policy edgemoe`): the allocation follows
/// importance within the mean, the table round-trips, and the streamed model runs each expert at
/// its table's level.
@Suite(.serialized)
struct StaticExpertBitsTests {
    static let directory = FileManager.default.temporaryDirectory.appendingPathComponent("d2moe-static-bits-\(getpid())")

    @Test func allocationFollowsImportanceWithinTheMean() throws {
        let importance: [[Double]] = [[5, 1, 9, 3, 7, 2, 8, 4], [1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0, 10]]
        for average in [2.0, 2.5, 3.0, 3.3, 4.0] {
            let table = try ExpertBitTable.allocate(importance: importance, bits: [2, 3, 4], averageBits: average, origin: "test")
            for (l, row) in table.bits.enumerated() {
                let mean = Double(row.reduce(0, +)) / Double(row.count)
                #expect(mean <= average + 1e-9 && mean > average - 2.0 / Double(row.count), "layer \(l) at \(average): mean \(mean)")
                #expect(row.allSatisfy { [2, 3, 4].contains($0) })
                for a in row.indices { for b in row.indices where importance[l][a] > importance[l][b] { #expect(row[a] >= row[b], "layer \(l): \(row)") } }
            }
        }
        let half = try ExpertBitTable.allocate(importance: importance, bits: [2, 3, 4], averageBits: 3, origin: "test")
        #expect(half.bits[0] == [4, 2, 4, 2, 4, 2, 4, 2])
        // Equal importance: the lower ids first.
        #expect(half.bits[1] == [4, 4, 4, 4, 2, 2, 2, 2])
        #expect(throws: ModelError.self) { try ExpertBitTable.allocate(importance: importance, bits: [2, 3, 4], averageBits: 5, origin: "test") }
    }

    @Test func tableRoundTripsAndBadFilesAreClearErrors() throws {
        try FileManager.default.createDirectory(at: Self.directory, withIntermediateDirectories: true)
        let path = Self.directory.appendingPathComponent("bits.json").path
        let table = ExpertBitTable(bits: [[2, 4], [3, 3]], averageBits: 3, origin: "wiki")
        try table.write(path: path)
        var read = try ExpertBitTable.load(path: path)
        #expect(read.source == path)
        read.source = ""
        #expect(read == table)
        for (name, text, message) in [
            ("v2.json", "{\"d2moe_expert_bits\": 2, \"bits\": [[2]], \"average_bits\": 2}", "version 2"),
            ("garbage.json", "[1, 2", "not a d2moe expert bit-width file"),
        ] {
            let p = Self.directory.appendingPathComponent(name).path
            try Data(text.utf8).write(to: URL(fileURLWithPath: p))
            #expect { _ = try ExpertBitTable.load(path: p) } throws: { "\($0)".contains(message) }
        }
        // Checked against the model: layers, experts, and bit-widths the file holds.
        for (bits, message) in [([[2, 4]], "cover 1 MoE layers"), ([[2, 4], [3]], "bit-widths for 1 experts"), ([[2, 4], [3, 8]], "8 bits")] {
            #expect { _ = try StaticExpertBits(table: ExpertBitTable(bits: bits, averageBits: 3, origin: ""), fileBits: [2, 3, 4], moeLayers: 2, experts: 2) }
                throws: { "\($0)".contains(message) }
        }
    }

    /// Records each MoE layer's chosen experts, leaving the routes alone.
    final class Recorder: RoutingHook, @unchecked Sendable {
        var chosen: [Int: [Int32]] = [:]
        func routed(moeLayer: Int, batch: [BatchToken], routes: inout ExpertRoutes, nExperts: Int) throws {
            chosen[moeLayer, default: []] += routes.experts
        }
    }

    @Test func streamedExpertsRunAtTheirTablesLevels() throws {
        let path = try ExpertStreamingTests.converted("olmoe")
        let probe = try ModelLoader.loadModel(path: path, options: LoadOptions(contextLength: 16))
        let layers = probe.info.moeLayerCount, experts = probe.info.expertCount
        // Every expert at 3 bits: exactly the uniform 3-bit model.
        let resident = try ExpertStreamingTests.logits(try ModelLoader.loadModel(path: path, options: LoadOptions(contextLength: 16, bits: 3)))
        let flat = ExpertBitTable(bits: Array(repeating: Array(repeating: 3, count: experts), count: layers), averageBits: 3, origin: "")
        let (same, _) = try ExpertStreamingTests.streamed(path, budget: .fraction(0.3)) { $0.bitPolicy = "static"; $0.expertBits = flat }
        #expect(try ExpertStreamingTests.logits(same) == resident)
        // A mixed table through --policy edgemoe: each routed (token, expert) at its expert's level.
        let mixed = ExpertBitTable(bits: (0..<layers).map { l in (0..<experts).map { [2, 3, 4][($0 + l) % 3] } }, averageBits: 3, origin: "")
        let (model, backend) = try ExpertStreamingTests.streamed(path, budget: .fraction(0.3)) { try! $0.apply(policy: "edgemoe"); $0.expertBits = mixed }
        let recorder = Recorder()
        model.routingHook = recorder
        let logits = try ExpertStreamingTests.logits(model)
        #expect(logits != resident)
        let stats = backend.stats
        for l in 0..<layers {
            var expected = [0, 0, 0]
            for e in recorder.chosen[l, default: []] { expected[mixed.bits[l][Int(e)] - 2] += 1 }
            #expect(stats.layers[l].expertTokens == expected, "MoE layer \(l)")
        }
        #expect(stats.peakPoolBytes <= stats.budgetBytes)
        // edgemoe without a table says what it needs.
        #expect { _ = try ExpertStreamingTests.streamed(path, budget: .fraction(0.3)) { try! $0.apply(policy: "edgemoe") } }
            throws: { "\($0)".contains("--expert-bits FILE") }
    }

    @Test func importanceFromTracesAndText() throws {
        try FileManager.default.createDirectory(at: Self.directory, withIntermediateDirectories: true)
        let path = Self.directory.appendingPathComponent("trace.jsonl").path
        let lines = [
            "{\"layer\": 0, \"token\": 0, \"experts\": [1, 2], \"weights\": [0.75, 0.25]}",
            "{\"layer\": 1, \"token\": 0, \"experts\": [0, 2], \"weights\": [0.5, 0.5]}",
            "{\"layer\": 0, \"token\": 1, \"experts\": [1, 3], \"weights\": [0.5, 0.5]}",
            "{\"layer\": 1, \"token\": 1, \"experts\": [3, 2], \"weights\": [0.125, 0.875]}",
        ]
        try Data(lines.joined(separator: "\n").utf8).write(to: URL(fileURLWithPath: path))
        let imp = try ExpertImportance(trace: try RoutingTrace.load(path: path), moeLayers: 2, experts: 4)
        #expect(imp.importance == [[0, 1.25, 0.25, 0.5], [0.5, 0, 1.375, 0.125]])
        #expect(imp.tokens == [2, 2])
        #expect(throws: ModelError.self) { _ = try ExpertImportance(trace: try RoutingTrace.load(path: path), moeLayers: 3, experts: 4) }

        // From text through a model: every MoE layer sees every token, each token's top-k weights summed.
        let synth = Self.directory.appendingPathComponent("tiny-moe-v1.mwq").path
        if !FileManager.default.fileExists(atPath: synth) {
            try SyntheticModel.write(shape: SyntheticModel.tiny, scheme: try MWQConverter.Scheme("v1"), seed: 5, to: synth)
        }
        let engine = try Engine.load(path: synth, options: LoadOptions(contextLength: 64))
        let text = String(repeating: "the quick brown fox jumps over the lazy dog. ", count: 4)
        let measured = try ExpertImportance.measure(engine: engine, text: text, tokens: 150)
        let n = min(150, engine.tokenizer.encode(text, addSpecial: false, parseSpecial: false).count)
        #expect(measured.tokens == Array(repeating: n, count: engine.model.info.moeLayerCount))
        for row in measured.importance {
            let total = row.reduce(0, +)
            #expect(total > 0 && total <= Double(n) + 1e-3 && row.filter { $0 > 0 }.count > engine.model.info.expertsPerToken)
        }
        #expect(engine.model.routingHook == nil)
    }
}
