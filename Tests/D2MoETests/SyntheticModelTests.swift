import Foundation
import Testing
import D2MoE
import D2MoEFormats
import D2MoEKernels

/// Synthetic models written straight into `.mwq` containers (`d2moe synth`).
@Suite struct SyntheticModelTests {
    /// A fresh folder per test; the caller removes it.
    static func folder() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("d2moe-synth-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    /// Every tiny shape (one per architecture) at v1: the file opens, every level of every record
    /// passes its checksum and has the documented size, and the model runs.
    @Test(arguments: ["tiny-moe", "tiny-qwen2-moe", "tiny-mixtral"])
    func tinyFileOpensVerifiesAndRuns(name: String) throws {
        let dir = try Self.folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("\(name).mwq").path
        let shape = try SyntheticModel.shape(named: name)
        let scheme = try MWQConverter.Scheme("v1")
        let summary = try SyntheticModel.write(shape: shape, scheme: scheme, seed: 7, to: path)
        let expected = try SyntheticModel.expectedSizes(shape: shape, scheme: scheme)
        #expect(summary.fileBytes == expected.fileBytes && summary.expertBytesPerLevel == expected.expertBytesPerLevel)

        let file = try MWQFile(path: path)
        #expect(file.file.size == summary.fileBytes)
        #expect(file.header.experts.count == shape.layers * shape.experts)
        #expect(file.header.config["d2moe_synthetic"] == .bool(true))
        let g = file.header.quantization.group
        for e in file.header.experts {
            _ = try file.verifiedPrefix(e, level: 3)
            // Level 1: ⌈R/32⌉·G·(4·b₁·g + 128) bytes per matrix, each sign level ⌈R/32⌉·G·(4·g + 64).
            let base = e.matrices.reduce(0) { $0 + ($1.rows + 31) / 32 * ($1.cols / g) * (4 * 2 * g + 128) }
            let sign = e.matrices.reduce(0) { $0 + ($1.rows + 31) / 32 * ($1.cols / g) * (4 * g + 64) }
            #expect(e.levelBytes == [base, sign, sign])
        }
        // Dequantized expert weights are centred, within ±0.02·1.25 at the base level.
        let m = try file.matrix(file.header.experts[0].matrices[0].name, level: 1).dequantize(level: 1)
        let mean = m.reduce(0, +) / Float(m.count)
        #expect(abs(mean) < 0.002 && m.allSatisfy { abs($0) <= 0.026 }, "mean \(mean)")

        let model = try ModelLoader.loadModel(path: path, options: LoadOptions(contextLength: 64))
        #expect(model.info.modelType == shape.modelType && model.info.expertCount == shape.experts)
        let ids: [Int32] = [256, 104, 105, 32, 33]
        let batch = ids.enumerated().map { BatchToken(sequence: 0, position: $0.offset, token: $0.element, wantsLogits: true) }
        let logits = try model.forward(batch, caches: [model.makeCache(capacity: 64)])
        #expect(logits.count == ids.count && logits.allSatisfy { $0.count == shape.vocab })
        #expect(logits.allSatisfy { $0.allSatisfy(\.isFinite) })
        #expect(logits[0] != logits[1])
    }

    @Test func sameSeedSameBytesOtherSeedOtherBytes() throws {
        let dir = try Self.folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let scheme = try MWQConverter.Scheme("v1")
        func write(_ name: String, seed: UInt64, resident: String = "f16") throws -> Data {
            let path = dir.appendingPathComponent(name).path
            try SyntheticModel.write(shape: SyntheticModel.tiny, scheme: scheme, resident: resident, seed: seed, to: path)
            return try Data(contentsOf: URL(fileURLWithPath: path))
        }
        let a = try write("a.mwq", seed: 1), b = try write("b.mwq", seed: 1), c = try write("c.mwq", seed: 2)
        #expect(a == b)
        #expect(a.count == c.count && a != c)
        // Q8_0 resident matrices load too, and the same seed gives the same bytes.
        let q1 = try write("q1.mwq", seed: 1, resident: "q8"), q2 = try write("q2.mwq", seed: 1, resident: "q8_0")
        #expect(q1 == q2 && q1.count < a.count)
        _ = try ModelLoader.loadModel(path: dir.appendingPathComponent("q1.mwq").path, options: LoadOptions(dtype: .q8_0, contextLength: 16))
    }

    /// The OLMoE-1B-7B shape's sizes, from the shapes alone: the real model's expert weights
    /// (16·64·3·2048·1024) at the documented bits per weight of each level,
    /// b₁ + (L − 1) + (32 + 16·(L − 1))/g, for group 128 2.25, 3.375 and 4.5.
    @Test func olmoeSizesMatchTheRealModel() throws {
        let shape = SyntheticModel.olmoe1B7B
        #expect(shape.expertWeights == 16 * 64 * 3 * 2048 * 1024)
        for (scheme, perLevel) in [("v1", [2.25, 1.125, 1.125]), ("v2", [5.25, 1.125, 1.125, 1.125]), ("rtn4", [4.25])] {
            let s = try SyntheticModel.expectedSizes(shape: shape, scheme: try MWQConverter.Scheme(scheme))
            #expect(s.group == 128 && s.expertRecords == 16 * 64)
            #expect(s.expertBytesPerLevel == perLevel.map { Int($0 * Double(shape.expertWeights) / 8) }, "\(scheme)")
            // Resident: embeddings and head (2·50304·2048), attention 4·2048² per layer, routers
            // 64·2048 per layer in float16; norms (2 + q/k per layer, final) in float32.
            let residentF16 = 2 * 50304 * 2048 + 16 * (4 * 2048 * 2048 + 64 * 2048)
            let residentF32 = 16 * 4 * 2048 + 2048
            #expect(s.residentBytes >= 2 * residentF16 + 4 * residentF32 && s.residentBytes < 2 * residentF16 + 4 * residentF32 + 64 * 200)
            let experts = s.expertBytesPerLevel.reduce(0, +)
            #expect(s.fileBytes > experts + s.residentBytes && s.fileBytes < experts + s.residentBytes + 4096 * (16 * 64 + 2) + (4 << 20))
        }
        // Mixtral at reduced depth scales with its layers.
        let m2 = try SyntheticModel.expectedSizes(shape: SyntheticModel.mixtral8x7B.withLayers(2), scheme: try MWQConverter.Scheme("v1"))
        #expect(m2.expertWeights == 2 * 8 * 3 * 4096 * 14336 && m2.expertRecords == 16)
        #expect(m2.expertBytesPerLevel[0] == Int(2.25 * Double(m2.expertWeights) / 8))
        #expect(throws: (any Error).self) { try SyntheticModel.shape(named: "olmoe-9b") }
    }

    /// A fill that throws, or a folder that cannot be written, leaves nothing under the final
    /// name (and no temporary file).
    @Test func failedWritesLeaveNoFile() throws {
        let dir = try Self.folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("broken.mwq").path
        struct Boom: Error {}
        let writer = try MWQStreamWriter(
            modelType: "olmoe", config: .object([:]), tokenizer: .object([:]),
            quantization: .init(scheme: "v1", bits: [2, 3, 4], group: 32, scales: "synthetic", resident: "f16"),
            resident: [.init(name: "a", shape: [4, 32], dtype: "f16")],
            records: (0..<3).map { .init(layer: 0, expert: $0, matrices: [.init(name: "m\($0)", rows: 32, cols: 32)]) })
        #expect(throws: Boom.self) {
            try writer.write(to: path, resident: { _, _, _ in }, level: { record, _, _, _ in if record == 2 { throw Boom() } })
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).isEmpty)
        // The same writer succeeds when nothing throws, and the file it writes opens.
        try writer.write(to: path, resident: { _, _, b in b.bindMemory(to: UInt16.self).initialize(repeating: Float16(1).bitPattern) },
                         level: { _, _, _, b in b.initializeMemory(as: UInt8.self, repeating: 0) })
        let file = try MWQFile(path: path)
        #expect(try file.floats("a").allSatisfy { $0 == 1 })
        for e in file.header.experts { _ = try file.verifiedPrefix(e, level: 3) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["broken.mwq"])

        let unwritable = dir.appendingPathComponent("missing-folder/x.mwq").path
        #expect(throws: (any Error).self) {
            try SyntheticModel.write(shape: SyntheticModel.tiny, scheme: try MWQConverter.Scheme("rtn4"), to: unwritable)
        }
        #expect(!FileManager.default.fileExists(atPath: unwritable))
    }

    /// The streaming CRC-32 (pieces, split across threads and combined) is `CRC32.checksum`.
    @Test func streamingCRCMatchesTheChecksum() {
        var state: UInt64 = 12345
        let bytes = (0..<(600 << 10) + 13).map { _ -> UInt8 in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return UInt8(truncatingIfNeeded: state >> 56)
        }
        bytes.withUnsafeBytes { all in
            for pieces in [[all.count], [1, 7, 300_000, all.count - 300_008], [200_000, 0, all.count - 200_000]] {
                var crc = CRC32Stream(), at = 0
                for n in pieces {
                    crc.update(UnsafeRawBufferPointer(rebasing: all[at..<(at + n)]))
                    at += n
                }
                #expect(crc.value == CRC32.checksum(all) && crc.count == all.count, "\(pieces)")
            }
            #expect(CRC32Stream().value == CRC32.checksum([UInt8]()))
        }
    }

    /// The file carries a tokenizer: `Engine.load` works and text round-trips.
    @Test func engineLoadsAndTokenizerRoundTrips() throws {
        let dir = try Self.folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("tiny.mwq").path
        try SyntheticModel.write(shape: SyntheticModel.tiny, scheme: try MWQConverter.Scheme("v1"), to: path)
        let engine = try Engine.load(path: path, options: LoadOptions(contextLength: 32))
        let t = engine.tokenizer
        let ids = t.encode("hi", addSpecial: true, parseSpecial: false)
        #expect(ids == [256, 104, 105])
        #expect(t.decode(ids) == "hi")
        let text = "Hello  wörld 😀 <s>"
        #expect(t.decode(t.encode(text, addSpecial: false, parseSpecial: false)) == text)
        #expect(t.vocabularySize == SyntheticModel.tiny.vocab)
    }
}
