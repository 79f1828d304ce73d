import Foundation
import Testing
import D2MoE

/// Every architecture against Hugging Face transformers: tiny random checkpoints made by
/// scripts/make_hf_fixtures.py, whose logits transformers computed in float32; and the same
/// OLMoE checkpoint as a GGUF file in llama.cpp's layout (scripts/reference/olmoe_gguf_fixture.py).
@Suite struct ArchitectureFixtureTests {
    static let architectures = ["llama", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gemma3", "olmoe/model.gguf"]
    static let tolerance: Float = 1e-4

    struct Expected {
        let inputIDs: [[Int32]]
        let logits: [[[Float]]]
        let generatedIDs: [Int32]
        let stepLogits: [[Float]]

        /// `name`: a fixture folder, or a file inside one (its expected.json applies).
        init(_ name: String) throws {
            let folder = name.split(separator: "/")[0]
            let json = try TestPaths.json(TestPaths.fixtures.appendingPathComponent("\(folder)/expected.json"))
            func floats(_ any: Any) -> [Float] { (any as! [Any]).map { Float(($0 as! NSNumber).doubleValue) } }
            inputIDs = (json["input_ids"] as! [[Int]]).map { $0.map(Int32.init) }
            logits = (json["logits"] as! [[Any]]).map { $0.map(floats) }
            generatedIDs = (json["generated_ids"] as! [Int]).map(Int32.init)
            stepLogits = (json["step_logits"] as! [Any]).map(floats)
        }
    }

    func load(_ name: String) throws -> TransformerModel {
        try ModelLoader.loadModel(path: TestPaths.fixtures.appendingPathComponent(name).path)
    }

    @Test(arguments: architectures)
    func eachSequenceMatchesTransformers(_ name: String) throws {
        let model = try load(name)
        let expected = try Expected(name)
        for (s, ids) in expected.inputIDs.enumerated() {
            let cache = model.makeCache(capacity: 64)
            let batch = ids.enumerated().map { BatchToken(sequence: 0, position: $0.offset, token: $0.element, wantsLogits: true) }
            let logits = try model.forward(batch, caches: [cache])
            for p in 0..<ids.count {
                let err = relativeError(logits[p], expected.logits[s][p])
                #expect(err <= Self.tolerance, "\(name) sequence \(s) position \(p): relative error \(err)")
            }
        }
    }

    @Test(arguments: architectures)
    func sequencesBatchedTogetherMatchTransformers(_ name: String) throws {
        // Two sequences of different lengths in one forward, each with its own cache.
        let model = try load(name)
        let expected = try Expected(name)
        let caches = expected.inputIDs.map { _ in model.makeCache(capacity: 64) }
        var batch: [BatchToken] = []
        var origin: [(Int, Int)] = []
        for (s, ids) in expected.inputIDs.enumerated() {
            for (p, id) in ids.enumerated() {
                batch.append(BatchToken(sequence: s, position: p, token: id, wantsLogits: true))
                origin.append((s, p))
            }
        }
        let logits = try model.forward(batch, caches: caches)
        for (i, (s, p)) in origin.enumerated() {
            #expect(relativeError(logits[i], expected.logits[s][p]) <= Self.tolerance, "\(name) batched seq \(s) pos \(p)")
        }
    }

    @Test(arguments: architectures)
    func incrementalDecodingWithTheCacheMatchesTransformers(_ name: String) throws {
        let model = try load(name)
        let expected = try Expected(name)
        let prompt = expected.inputIDs[0]
        let cache = model.makeCache(capacity: 64)
        // The prompt in two chunks, then one token at a time.
        let split = prompt.count / 2
        for range in [0..<split, split..<prompt.count] {
            let batch = range.map { BatchToken(sequence: 0, position: $0, token: prompt[$0], wantsLogits: $0 == prompt.count - 1) }
            _ = try model.forward(batch, caches: [cache])
        }
        var position = prompt.count
        for (step, id) in expected.generatedIDs.enumerated() {
            let logits = try model.forward([BatchToken(sequence: 0, position: position, token: id, wantsLogits: true)], caches: [cache])
            #expect(relativeError(logits[0], expected.stepLogits[step]) <= Self.tolerance, "\(name) decode step \(step)")
            position += 1
        }
    }

    /// The OLMoE checkpoint and its GGUF file (experts stacked per projection) quantize to the
    /// same containers: the same expert records and, at every level, the same logits.
    @Test func olmoeGGUFQuantizesLikeItsCheckpoint() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("d2moe-olmoe-gguf-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let ids = try Expected("olmoe").inputIDs[0]
        var logits: [[[Float]]] = []
        for (i, source) in ["olmoe", "olmoe/model.gguf"].enumerated() {
            let out = dir.appendingPathComponent("\(i).mwq").path
            let summary = try MWQConverter.convert(model: TestPaths.fixtures.appendingPathComponent(source).path, to: out,
                                                   scheme: try MWQConverter.Scheme("v1"))
            #expect(summary.expertRecords == 2 * 8, "\(source): \(summary.expertRecords) expert records")
            var perLevel: [[Float]] = []
            for bits in [2, 3, 4] {
                let model = try ModelLoader.loadModel(path: out, options: LoadOptions(contextLength: 64, bits: bits))
                let batch = ids.enumerated().map { BatchToken(sequence: 0, position: $0.offset, token: $0.element, wantsLogits: true) }
                perLevel += try model.forward(batch, caches: [model.makeCache(capacity: 64)])
            }
            logits.append(perLevel)
        }
        #expect(logits[0] == logits[1])
    }

    @Test func missingConfigFieldIsNamed() throws {
        let dir = try TestPaths.editedFixture("llama") { $0.removeValue(forKey: "hidden_size") }
        defer { try? FileManager.default.removeItem(at: dir) }
        #expect { try ModelLoader.loadModel(path: dir.path) } throws: { error in
            String(describing: error).contains("missing field 'hidden_size'")
        }
    }

    /// A KV cache sized for a long context holds in memory only the positions written: zeroing
    /// it at creation made the whole capacity resident (1 GiB for olmoe-1b-7b at 4096 positions).
    @Test func aLargeKVCacheBecomesResidentOnlyAsItIsWritten() throws {
        let model = try load("llama")
        let capacity = (512 << 20) / model.kvBytesPerPosition
        let before = ProcessMemory.residentBytes
        let cache = model.makeCache(capacity: capacity)
        let grown = ProcessMemory.residentBytes - before
        #expect(cache.byteCount >= 512 << 20)
        #expect(grown < 128 << 20, "a \(cache.byteCount >> 20) MiB cache made \(grown >> 20) MiB resident before any write")
        // Positions written and attended still give the logits of a fresh small cache.
        let small = model.makeCache(capacity: 8)
        let batch = [BatchToken(sequence: 0, position: 0, token: 1, wantsLogits: false),
                     BatchToken(sequence: 0, position: 1, token: 2, wantsLogits: true)]
        #expect(try model.forward(batch, caches: [cache]) == model.forward(batch, caches: [small]))
    }

    @Test func positionPastTheContextIsAnErrorNotACrash() throws {
        let model = try load("llama")
        let cache = model.makeCache(capacity: 4)
        #expect { try model.forward([BatchToken(sequence: 0, position: 4, token: 1, wantsLogits: true)], caches: [cache]) } throws: { error in
            String(describing: error).contains("past the context")
        }
    }
}
