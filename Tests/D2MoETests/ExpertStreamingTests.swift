import Foundation
import Testing
import D2MoE
import D2MoEFormats

/// Routed experts streamed through a budgeted pool (issue 6): the logits never depend on the
/// budget, the pool never holds more than it, and bad files and budgets are clear errors.
@Suite(.serialized)
struct ExpertStreamingTests {
    static let directory = FileManager.default.temporaryDirectory.appendingPathComponent("d2moe-streaming-\(getpid())")

    /// The fixture converted once to a v1 (2/3/4-bit) container.
    static func converted(_ fixture: String) throws -> String {
        let path = directory.appendingPathComponent("\(fixture)-v1.mwq").path
        if !FileManager.default.fileExists(atPath: path) {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            _ = try MWQConverter.convert(model: TestPaths.fixtures.appendingPathComponent(fixture).path, to: path,
                                         scheme: try MWQConverter.Scheme("v1"))
        }
        return path
    }

    /// Logits of a prefill of 6 tokens in two sequences, then 4 decode steps of both.
    static func logits(_ model: TransformerModel) throws -> [[Float]] {
        let caches = [model.makeCache(capacity: 16), model.makeCache(capacity: 16)]
        var out: [[Float]] = []
        let vocab = Int32(model.info.vocabularySize)
        var batch: [BatchToken] = []
        for s in 0..<2 { for p in 0..<6 { batch.append(BatchToken(sequence: s, position: p, token: Int32((7 * p + 13 * s + 3) % Int(vocab)), wantsLogits: true)) } }
        out += try model.forward(batch, caches: caches)
        for step in 0..<4 {
            let b = (0..<2).map { s in BatchToken(sequence: s, position: 6 + step, token: Int32((11 * step + 5 * s + 1) % Int(vocab)), wantsLogits: true) }
            out += try model.forward(b, caches: caches)
        }
        return out
    }

    static func streamed(_ path: String, budget: MemoryBudget, bits: Int? = nil, configure: (inout ExpertStreaming) -> Void = { _ in })
        throws -> (TransformerModel, StreamingExperts) {
        var options = LoadOptions(contextLength: 16, bits: bits)
        var s = ExpertStreaming(budget: budget)
        configure(&s)
        options.streaming = s
        let model = try ModelLoader.loadModel(path: path, options: options)
        return (model, try #require(model.experts as? StreamingExperts))
    }

    /// Bytes of the largest expert at all its levels, as the pool allocates them.
    static func oneExpert(_ backend: StreamingExperts) -> Int { backend.largestExpertBytes }

    /// At every level, with a pool of one expert (so every expert step evicts), direct and
    /// buffered reads, each eviction policy: the logits equal the all-resident model's exactly.
    @Test(arguments: ["olmoe", "qwen2_moe", "mixtral"])
    func tightBudgetGivesTheResidentLogits(fixture: String) throws {
        let path = try Self.converted(fixture)
        for bits in [2, 3, 4] {
            let resident = try Self.logits(try ModelLoader.loadModel(path: path, options: LoadOptions(contextLength: 16, bits: bits)))
            let (_, probe) = try Self.streamed(path, budget: .fraction(1))
            let budget = Self.oneExpert(probe)
            for (eviction, direct) in [("layer", true), ("reuse", false), ("lru", false), ("lfu", true)] {
                let (model, backend) = try Self.streamed(path, budget: .bytes(budget), bits: bits) {
                    $0.eviction = eviction
                    $0.directIO = direct
                }
                let streamed = try Self.logits(model)
                #expect(streamed == resident, "\(fixture) at \(bits) bits, \(eviction): logits differ")
                let stats = backend.stats
                #expect(stats.peakPoolBytes <= budget, "pool peak \(stats.peakPoolBytes) over budget \(budget)")
                #expect(stats.evictions > 0, "a one-expert pool must evict")
                // Evicted pieces' buffers take the next reads (same size, or assembled from their
                // pages): the pool never unmaps pages here, so fresh pages never pass the budget.
                #expect(stats.buffersReused > 0 && stats.buffersReused + stats.buffersMapped == stats.total.piecesRead.reduce(0, +),
                        "reused \(stats.buffersReused), mapped \(stats.buffersMapped), read \(stats.total.piecesRead)")
                #expect(stats.freshPageBytes <= budget, "fresh pages \(stats.freshPageBytes) bytes, budget \(budget)")
                // One prompt step and four generation steps; a step's I/O busy and compute busy
                // fit in its wall time, so the efficiency is at least 1.
                #expect(stats.promptSteps.count == 1 && stats.generationSteps.count == 4)
                for steps in [stats.promptSteps, stats.generationSteps] {
                    #expect(steps.ioBusy <= steps.wall + 1e-6 && steps.computeBusy <= steps.wall + 1e-6 && steps.efficiency >= 1 - 1e-9,
                            "steps: wall \(steps.wall), I/O \(steps.ioBusy), compute \(steps.computeBusy)")
                }
                let total = stats.total
                #expect(total.bytesRead > 0 && total.piecesRead.reduce(0, +) > 0)
                // Pieces needed = pieces read + pieces found; only levels up to `bits` are touched.
                let level = [2, 3, 4].firstIndex(of: bits)! + 1
                #expect(total.piecesRead[level...].allSatisfy { $0 == 0 } && total.hits[level...].allSatisfy { $0 == 0 })
                #expect(total.expertTokens[level - 1] == total.expertTokens.reduce(0, +))
            }
        }
    }

    /// The synthetic tiny olmoe (experts 256x128, v1): its 2-bit base pieces span more pages than
    /// its sign levels, unlike the fixtures' one-page pieces.
    static func tinySynthetic() throws -> String {
        let synth = directory.appendingPathComponent("tiny-moe-v1.mwq").path
        if !FileManager.default.fileExists(atPath: synth) {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            try SyntheticModel.write(shape: try SyntheticModel.shape(named: "tiny-moe"), scheme: try MWQConverter.Scheme("v1"), seed: 3, to: synth)
        }
        return synth
    }

    /// Pieces of different sizes take each other's pages: with gate-score bit-widths (so steps
    /// need different levels of their experts) and a pool of one and a half experts, the fresh
    /// pages given to reads stay within the budget while the pieces read add up to several
    /// budgets, and the logits are those of a pool that holds everything.
    @Test func piecesOfOtherSizesRecycleEachOthersPages() throws {
        let path = try Self.tinySynthetic()
        let (whole, probe) = try Self.streamed(path, budget: .fraction(1)) { $0.bitPolicy = "gate" }
        let reference = try Self.logits(whole)
        let budget = Self.oneExpert(probe) * 3 / 2
        for direct in [true, false] {
            let (model, backend) = try Self.streamed(path, budget: .bytes(budget)) { $0.directIO = direct; $0.bitPolicy = "gate" }
            #expect(try Self.logits(model) == reference, "direct I/O \(direct): logits differ")
            let stats = backend.stats
            #expect(stats.peakPoolBytes <= budget)
            #expect(stats.total.bytesRead > 2 * budget, "read \(stats.total.bytesRead) bytes with a budget of \(budget)")
            #expect(stats.freshPageBytes <= budget, "direct I/O \(direct): fresh pages \(stats.freshPageBytes) bytes, budget \(budget)")
        }
    }

    /// Next-layer prefetch reads ahead under the budget, is used, and changes no logit.
    @Test func prefetchKeepsTheLogitsAndTheBudget() throws {
        let path = try Self.converted("olmoe")
        let resident = try Self.logits(try ModelLoader.loadModel(path: path, options: LoadOptions(contextLength: 16, bits: 3)))
        let (_, probe) = try Self.streamed(path, budget: .fraction(1))
        let budget = 5 * Self.oneExpert(probe)
        let (model, backend) = try Self.streamed(path, budget: .bytes(budget), bits: 3) { $0.prefetch = true; $0.prefetchMinAccuracy = 0 }
        #expect(try Self.logits(model) == resident)
        let stats = backend.stats
        #expect(stats.total.prefetchWithheld == 0)
        #expect(stats.peakPoolBytes <= budget)
        #expect(stats.total.prefetched > 0 && stats.total.prefetchHits > 0, "prefetched \(stats.total.prefetched), used \(stats.total.prefetchHits)")
        #expect(stats.total.prefetchHits <= stats.total.prefetched)
        // The first MoE layer is read ahead too, during the last one of the step before.
        #expect(stats.layers.count > 1 && stats.layers[0].prefetched > 0 && stats.layers[0].prefetchHits > 0,
                "first MoE layer: prefetched \(stats.layers[0].prefetched), used \(stats.layers[0].prefetchHits)")
    }

    /// A layer whose next-layer prediction has been right less often than the minimum is not
    /// read ahead (its prediction is still scored); the logits do not change.
    @Test func prefetchIsWithheldWhileItsPredictionsMiss() throws {
        let path = try Self.converted("olmoe")
        let resident = try Self.logits(try ModelLoader.loadModel(path: path, options: LoadOptions(contextLength: 16, bits: 3)))
        let (_, probe) = try Self.streamed(path, budget: .fraction(1))
        let budget = 5 * Self.oneExpert(probe)
        var runs: [ExpertStreamStats] = []
        // 0: always; above 1: never once a layer's prediction has been scored.
        for minimum: Float in [0, 1.01] {
            let (model, backend) = try Self.streamed(path, budget: .bytes(budget), bits: 3) { $0.prefetch = true }
            backend.prefetchMinAccuracy = minimum
            #expect(try Self.logits(model) == resident, "minimum accuracy \(minimum): logits differ")
            runs.append(backend.stats)
            #expect(backend.stats.peakPoolBytes <= budget)
        }
        let (always, gated) = (runs[0].total, runs[1].total)
        #expect(always.prefetchWithheld == 0 && gated.prefetchWithheld > 0, "withheld \(always.prefetchWithheld) / \(gated.prefetchWithheld)")
        #expect(gated.prefetched < always.prefetched, "prefetched \(gated.prefetched) with the gate, \(always.prefetched) without")
        // Scored either way: the same routes, so the same accuracy.
        #expect(gated.predictedSlots == always.predictedSlots && gated.predictedHits == always.predictedHits)
        // Steps after every layer was scored prefetch nothing: at most the first two steps did.
        let layers = runs[1].layers.count
        #expect(gated.prefetchWithheld >= 3 * layers, "withheld in \(gated.prefetchWithheld) layer steps of \(5 * layers)")
    }

    /// A streaming model that has run (with and without prefetch) is freed with its pool and
    /// I/O threads once dropped: a sweep loads one model per configuration in one process.
    @Test func droppedModelsAreFreed() throws {
        let path = try Self.converted("olmoe")
        for prefetch in [false, true] {
            weak var weakModel: TransformerModel?
            weak var weakBackend: StreamingExperts?
            func run() throws {
                let (model, backend) = try Self.streamed(path, budget: .fraction(0.5), bits: 3) { $0.prefetch = prefetch }
                _ = try Self.logits(model)
                weakModel = model
                weakBackend = backend
            }
            try run()
            #expect(weakModel == nil && weakBackend == nil, "prefetch \(prefetch): the model or its expert backend outlived its last reference")
            weak var weakEngine: Engine?
            let synth = Self.directory.appendingPathComponent("tiny-moe-v1.mwq").path
            if !FileManager.default.fileExists(atPath: synth) {
                try SyntheticModel.write(shape: try SyntheticModel.shape(named: "tiny-moe"), scheme: try MWQConverter.Scheme("v1"), seed: 3, to: synth)
            }
            func bench() throws {
                var options = LoadOptions(contextLength: 16, bits: 3)
                var s = ExpertStreaming(budget: .fraction(0.5))
                s.prefetch = prefetch
                options.streaming = s
                let engine = try Engine.load(path: synth, options: options)
                _ = try SpeedBenchmark.run(engine: engine, promptTokens: 4, generateTokens: 2, repetitions: 1, requests: 2)
                weakEngine = engine
                weakModel = engine.model
                weakBackend = engine.model.experts as? StreamingExperts
            }
            try bench()
            #expect(weakEngine == nil && weakModel == nil && weakBackend == nil, "prefetch \(prefetch): a benchmarked engine outlived its last reference")
        }
    }

    /// Both benchmark drivers run the rounds they describe: lockstep routes P + G tokens per
    /// sequence and round, the scheduler P (its pp round) + 1 (the tg round's one-token prompt) + G.
    @Test func benchmarkDriversRouteTheTokensTheyDescribe() throws {
        let synth = Self.directory.appendingPathComponent("tiny-moe-v1.mwq").path
        if !FileManager.default.fileExists(atPath: synth) {
            try FileManager.default.createDirectory(at: Self.directory, withIntermediateDirectories: true)
            try SyntheticModel.write(shape: try SyntheticModel.shape(named: "tiny-moe"), scheme: try MWQConverter.Scheme("v1"), seed: 3, to: synth)
        }
        var options = LoadOptions(contextLength: 16, bits: 3)
        options.streaming = ExpertStreaming(budget: .fraction(0.5))
        let engine = try Engine.load(path: synth, options: options)
        let (p, g, n, reps) = (4, 3, 2, 2)
        for driver in SpeedBenchmark.Driver.allCases {
            let r = try SpeedBenchmark.run(engine: engine, promptTokens: p, generateTokens: g, repetitions: reps, requests: n, driver: driver)
            let routed = try #require(r.experts?.layers.first?.tokens)
            let expected = reps * n * (p + g + (driver == .scheduler ? 1 : 0))
            #expect(r.driver == driver)
            #expect(routed == expected, "\(driver): \(routed) tokens routed through the first MoE layer, expected \(expected)")
            #expect(r.promptTokensPerSecond > 0 && r.generationTokensPerSecond > 0, "\(driver): pp \(r.promptTokensPerSecond), tg \(r.generationTokensPerSecond)")
        }
        // Too long for the context: a clear error from either driver.
        for driver in SpeedBenchmark.Driver.allCases {
            #expect(throws: GenerationError.self) { try SpeedBenchmark.run(engine: engine, promptTokens: 12, generateTokens: 8, repetitions: 1, driver: driver) }
        }
    }

    /// A pool that holds everything reads each piece once and then only hits.
    @Test func ampleBudgetReadsEachPieceOnce() throws {
        let path = try Self.converted("olmoe")
        // (A fraction of 100% is of the stored bytes; direct I/O rounds each piece up to 4 KiB.)
        let (model, backend) = try Self.streamed(path, budget: .bytes(1 << 30))
        _ = try Self.logits(model)
        let first = backend.stats.total
        backend.resetStats()
        _ = try Self.logits(model)
        let second = backend.stats.total
        #expect(first.piecesRead.reduce(0, +) > 0)
        #expect(second.piecesRead.reduce(0, +) == 0 && second.bytesRead == 0, "second pass read \(second.piecesRead)")
        #expect(backend.stats.evictions == 0)
        let pieces = 2 * 8 * 3  // layers × experts × levels
        #expect(first.piecesRead.reduce(0, +) <= pieces)
        #expect(backend.poolBytes <= backend.budget)
    }

    /// Gate-score levels mix bit-widths, and the budget still does not change the logits.
    @Test func gatePolicyMixesLevelsAndIgnoresTheBudget() throws {
        let path = try Self.converted("olmoe")
        let (ample, _) = try Self.streamed(path, budget: .fraction(1)) { $0.bitPolicy = "gate"; $0.gateThresholds = [0.5, 0.9] }
        let reference = try Self.logits(ample)
        let (_, probe) = try Self.streamed(path, budget: .fraction(1))
        let budget = Self.oneExpert(probe)
        let (tight, backend) = try Self.streamed(path, budget: .bytes(budget)) { $0.bitPolicy = "gate"; $0.gateThresholds = [0.5, 0.9] }
        #expect(try Self.logits(tight) == reference)
        let stats = backend.stats
        #expect(stats.peakPoolBytes <= budget)
        // The top expert of each token runs at 4 bits; the second, with under half the weight, lower.
        #expect(stats.total.expertTokens[2] >= stats.total.expertTokens.reduce(0, +) / 2)
        #expect(stats.averageBits > 2 && stats.averageBits < 4, "average bits \(stats.averageBits)")
        let uniform = try Self.logits(try ModelLoader.loadModel(path: path, options: LoadOptions(contextLength: 16, bits: 4)))
        #expect(reference != uniform, "mixed levels should change the logits")
    }

    @Test func gatePolicyLevels() {
        // One token, top-3 of 4 experts with probabilities 0.5, 0.3, 0.15 (and 0.05 unchosen).
        let routes = ExpertRoutes(topK: 3, experts: [2, 0, 1], weights: [0.5, 0.3, 0.15], probabilities: [0.3, 0.15, 0.5, 0.05])
        var levels = [0, 0, 0]
        GateScoreBits(thresholds: [0.6, 0.9]).levels(layer: 0, input: [Float](repeating: 0, count: 1), hidden: 0, routes: routes, nExperts: 4, levelCount: 3, into: &levels)
        // Shares before each: 0, 0.5/0.95 = 0.53, 0.8/0.95 = 0.84.
        #expect(levels == [3, 3, 2])
        GateScoreBits(thresholds: [0.5, 0.8]).levels(layer: 0, input: [Float](repeating: 0, count: 1), hidden: 0, routes: routes, nExperts: 4, levelCount: 3, into: &levels)
        #expect(levels == [3, 2, 1])
    }

    @Test func budgetSmallerThanOneExpertIsAClearError() throws {
        let path = try Self.converted("olmoe")
        let (model, _) = try Self.streamed(path, budget: .bytes(4096))
        #expect {
            _ = try Self.logits(model)
        } throws: { error in
            "\(error)".contains("memory budget (4096 bytes) cannot hold expert")
        }
    }

    /// A flipped byte inside an expert record: the run fails naming the piece; the file is untouched.
    @Test func corruptPieceIsReportedNotComputed() throws {
        let path = try Self.converted("olmoe")
        let copy = Self.directory.appendingPathComponent("corrupt-\(UUID().uuidString).mwq").path
        try FileManager.default.copyItem(atPath: path, toPath: copy)
        defer { try? FileManager.default.removeItem(atPath: copy) }
        let header = try MWQFile(path: copy).header
        let record = header.experts.first { $0.layer == 0 && $0.expert == 0 }!
        let handle = try #require(FileHandle(forUpdatingAtPath: copy))
        try handle.seek(toOffset: UInt64(record.offset + 10))
        let byte = try #require(handle.readData(ofLength: 1).first)
        try handle.seek(toOffset: UInt64(record.offset + 10))
        handle.write(Data([byte ^ 0xFF]))
        try handle.close()
        // Every expert is needed by some token across enough steps; a full budget keeps going after the error.
        let (model, _) = try Self.streamed(copy, budget: .fraction(1)) { $0.bitPolicy = "uniform" }
        let caches = [model.makeCache(capacity: 64)]
        let batch = (0..<64).map { BatchToken(sequence: 0, position: $0, token: Int32($0 % model.info.vocabularySize), wantsLogits: false) }
        #expect {
            _ = try model.forward(batch, caches: caches)
        } throws: { error in
            "\(error)".contains("expert piece (layer 0, expert 0, level 1) checksum mismatch")
        }
    }

    @Test func memoryBudgetParsing() throws {
        #expect(try MemoryBudget(parsing: "512MiB") == .bytes(512 << 20))
        #expect(try MemoryBudget(parsing: "2GiB") == .bytes(2 << 30))
        #expect(try MemoryBudget(parsing: "1.5GB") == .bytes(1_500_000_000))
        #expect(try MemoryBudget(parsing: "4096") == .bytes(4096))
        #expect(try MemoryBudget(parsing: "25%") == .fraction(0.25))
        #expect(MemoryBudget.fraction(0.25).bytes(ofExperts: 1000) == 250)
        for bad in ["", "abc", "-1GiB", "0", "150%", "12XB"] {
            #expect(throws: ModelError.self, "\(bad)") { try MemoryBudget(parsing: bad) }
        }
    }

    @Test func streamingNeedsAnMWQFileWithRoutedExperts() throws {
        var options = LoadOptions(contextLength: 16)
        options.streaming = ExpertStreaming(budget: .bytes(1 << 20))
        #expect {
            _ = try ModelLoader.loadModel(path: TestPaths.fixtures.appendingPathComponent("olmoe").path, options: options)
        } throws: { "\($0)".contains("--memory-budget streams experts from .mwq files") }
        let dense = try Self.converted("llama")
        #expect {
            _ = try ModelLoader.loadModel(path: dense, options: options)
        } throws: { "\($0)".contains("this model has none") }
    }
}

/// Routing traces: the two real ones read as their README describes, and d2moe's own format
/// round-trips through recording and replay.
@Suite(.serialized)
struct RoutingTraceTests {
    static let traces = TestPaths.packageRoot.deletingLastPathComponent().appendingPathComponent("shared/data/routing-traces")

    @Test(.enabled(if: TestPaths.exists(traces.appendingPathComponent("prompt_478_data.csv").path), "SKIP: ../shared/data/routing-traces absent"))
    func realTracesReadAsDocumented() throws {
        let deepseek = try RoutingTrace.load(path: Self.traces.appendingPathComponent("prompt_478_data.csv").path)
        #expect(deepseek.count == 2850 && deepseek.layerCount == 26 && deepseek.topK == 6 && deepseek.expertCount == 64)
        #expect(deepseek.tokens[0][0]?.experts == [8, 26, 56, 57, 60, 43] && deepseek.tokens[0][0]?.weights == nil)
        #expect(deepseek.tokens.joined().allSatisfy { $0 != nil })
        let mixtral = try RoutingTrace.load(path: Self.traces.appendingPathComponent("routing_raw.jsonl").path)
        #expect(mixtral.count == 135 + 83 && mixtral.layerCount == 32 && mixtral.topK == 2 && mixtral.expertCount == 8)
        #expect(mixtral.tokens[0][0]?.experts == [5, 2])
        #expect(abs((mixtral.tokens[0][0]?.weights?[0] ?? 0) - 0.7783125) < 1e-6)
        // The collector dropped 122 prefill and 77 decode records; they stay unknown.
        #expect(mixtral.tokens.prefix(135).joined().filter { $0 == nil }.count == 122)
        #expect(mixtral.tokens.dropFirst(135).joined().filter { $0 == nil }.count == 77)
    }

    @Test func recordedTraceReplaysToTheSameLogits() throws {
        let path = try ExpertStreamingTests.converted("olmoe")
        let plain = try ModelLoader.loadModel(path: path, options: LoadOptions(contextLength: 16))
        let reference = try ExpertStreamingTests.logits(plain)
        let file = ExpertStreamingTests.directory.appendingPathComponent("trace-\(UUID().uuidString).jsonl").path
        defer { try? FileManager.default.removeItem(atPath: file) }
        let recorded = try ModelLoader.loadModel(path: path, options: LoadOptions(contextLength: 16))
        recorded.routingHook = try TraceRecorder(path: file)
        #expect(try ExpertStreamingTests.logits(recorded) == reference)
        recorded.routingHook = nil
        let trace = try RoutingTrace.load(path: file)
        // 12 prefill + 8 decode tokens routed through each of 2 layers.
        #expect(trace.count == 20 && trace.layerCount == 2 && trace.topK == 2)
        // Replayed in the order recorded (token i = the i-th routed), on a streamed model: the same logits.
        let (streamed, _) = try ExpertStreamingTests.streamed(path, budget: .bytes(1 << 30))
        let replay = OrderedReplay(trace)
        streamed.routingHook = replay
        #expect(try ExpertStreamingTests.logits(streamed) == reference)
        // A different trace changes what runs.
        let shifted = try RoutingTrace.load(path: file)
        let (other, _) = try ExpertStreamingTests.streamed(path, budget: .bytes(1 << 30))
        other.routingHook = TraceReplay(trace: shifted, sequenceOffset: 7)
        #expect(try ExpertStreamingTests.logits(other) != reference)
    }

    @Test func badTracesAreClearErrors() throws {
        let dir = ExpertStreamingTests.directory
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        for (name, text, message) in [
            ("empty.jsonl", "", "the trace is empty"),
            ("garbage.jsonl", "{\"layer\": 0, \"experts\": [1, 2]}\nnot json\n", "line 2 is not a JSON object"),
            ("mixed.jsonl", "{\"layer\": 0, \"experts\": [1, 2]}\n{\"layer\": 1, \"experts\": [1]}\n", "different numbers of experts"),
            ("bad.csv", "Layer ID,Batch Number,Token,Activated Expert IDs\n1,0,x,[a]\n", "bad expert ids"),
        ] {
            let path = dir.appendingPathComponent(name).path
            try Data(text.utf8).write(to: URL(fileURLWithPath: path))
            #expect { _ = try RoutingTrace.load(path: path) } throws: { "\($0)".contains(message) }
        }
        // A trace whose top-k differs from the model's says how to fix it.
        let path = dir.appendingPathComponent("top3.jsonl").path
        try Data("{\"layer\": 0, \"experts\": [1, 2, 3]}\n".utf8).write(to: URL(fileURLWithPath: path))
        let model = try ModelLoader.loadModel(path: try ExpertStreamingTests.converted("olmoe"), options: LoadOptions(contextLength: 16))
        model.routingHook = TraceReplay(trace: try RoutingTrace.load(path: path))
        #expect { _ = try ExpertStreamingTests.logits(model) } throws: { "\($0)".contains("set --experts-per-token 3") }
    }
}

/// Replays token i of each layer to the i-th token routed through it (the recording's order).
private final class OrderedReplay: RoutingHook {
    let trace: RoutingTrace
    var next: [Int: Int] = [:]
    init(_ trace: RoutingTrace) { self.trace = trace }
    func routed(moeLayer: Int, batch: [BatchToken], routes: inout ExpertRoutes, nExperts: Int) throws {
        for t in batch.indices {
            let i = next[moeLayer, default: 0]
            next[moeLayer] = i + 1
            let r = trace.tokens[i][moeLayer]!
            for j in 0..<routes.topK {
                routes.experts[t * routes.topK + j] = r.experts[j]
                routes.weights[t * routes.topK + j] = r.weights![j]
            }
        }
    }
}
