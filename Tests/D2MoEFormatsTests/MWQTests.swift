import Foundation
import Testing
import D2MoEFormats

/// The MWQ matrix format and the .mwq container: sizes, round trips, nesting, corruption.
struct MWQTests {
    /// Deterministic pseudo-random weights with a few outliers, like real checkpoints.
    static func weights(_ n: Int, seed: UInt64) -> [Float] {
        var s = seed
        return (0..<n).map { i in
            s = s &* 6364136223846793005 &+ 1442695040888963407
            let u = Float(s >> 40) / Float(1 << 24) - 0.5
            return i % 97 == 0 ? u * 0.5 : u * 0.05
        }
    }

    static func quantize(_ w: [Float], rows: Int, cols: Int, group: Int, base: Int, signs: Int, search: Bool = true) throws -> MWQMatrix {
        try w.withUnsafeBufferPointer { try MWQMatrix.quantize($0, rows: rows, cols: cols, group: group, baseBits: base, signLevels: signs, search: search) }
    }

    static func mse(_ a: [Float], _ b: [Float]) -> Double {
        zip(a, b).reduce(0) { $0 + Double(($1.0 - $1.1) * ($1.0 - $1.1)) } / Double(a.count)
    }

    @Test(arguments: [32, 64, 128, 256], [1, 2, 3, 4, 5, 8])
    func sizesMatchTheDocumentedLayout(group: Int, base: Int) throws {
        let cols = group * 2
        for rows in [64, 3] {
            let m = try Self.quantize(Self.weights(rows * cols, seed: 1), rows: rows, cols: cols, group: group, base: base, signs: 2)
            // Rows are stored in blocks of 32, the last one padded.
            let stored = (rows + 31) / 32 * 32
            #expect(m.levelBytes(0).count == MWQMatrix.baseByteCount(rows: rows, cols: cols, group: group, baseBits: base))
            #expect(m.levelBytes(0).count == stored * cols * base / 8 + stored * (cols / group) * 4)
            #expect(m.levelBytes(1).count == MWQMatrix.signByteCount(rows: rows, cols: cols, group: group))
            #expect(m.levelBytes(1).count == stored * cols / 8 + stored * (cols / group) * 2)
            #expect((0..<3).allSatisfy { m.levelBytes($0).count == m.storedByteCount($0) })
            // Bits per weight at level k: b₁ + (k−1) + (32 + 16(k−1))/group.
            let bpw = Double(m.levelBytes(0).count + m.levelBytes(1).count + m.levelBytes(2).count) * 8 / Double(stored * cols)
            #expect(bpw == Double(base + 2) + Double(32 + 32) / Double(group))
        }
    }

    /// The sliced C checksum equals the byte-wise reference at every length and alignment, and
    /// the standard check value.
    @Test func fastCRC32MatchesTheReference() {
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
        var bytes = [UInt8](repeating: 0, count: 1 << 20)
        var s: UInt64 = 7
        for i in bytes.indices { s = s &* 6364136223846793005 &+ 1442695040888963407; bytes[i] = UInt8(s >> 56) }
        bytes.withUnsafeBytes { all in
            for offset in 0..<9 {
                for n in [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 4096] {
                    let part = UnsafeRawBufferPointer(rebasing: all[offset..<(offset + n)])
                    #expect(CRC32.checksum(part) == CRC32.referenceChecksum(part), "offset \(offset), \(n) bytes")
                }
            }
            #expect(CRC32.checksum(all) == CRC32.referenceChecksum(all))
        }
    }

    @Test func levelsRoundTripThroughTheirBytes() throws {
        let m = try Self.quantize(Self.weights(5 * 256, seed: 2), rows: 5, cols: 256, group: 64, base: 3, signs: 3)
        for k in 0..<m.levels.count {
            let bytes = m.levelBytes(k)
            let parsed = try bytes.withUnsafeBytes { try MWQMatrix.level(k, from: $0, rows: 5, cols: 256, group: 64, baseBits: 3) }
            #expect(parsed == m.levels[k])
        }
        #expect(throws: FormatError.self) {
            try [UInt8](repeating: 0, count: 10).withUnsafeBytes { try MWQMatrix.level(0, from: $0, rows: 5, cols: 256, group: 64, baseBits: 3) }
        }
    }

    /// Each added level lowers the error, and a lower level is exactly the prefix of a higher one:
    /// quantizing with fewer sign levels gives the same bytes for the levels both have.
    @Test func levelsNestAndEachOneHelps() throws {
        let w = Self.weights(16 * 256, seed: 3)
        let full = try Self.quantize(w, rows: 16, cols: 256, group: 128, base: 2, signs: 2)
        var previous = Double.infinity
        for level in 1...3 {
            let e = Self.mse(full.dequantize(level: level), w)
            #expect(e < previous * 0.8, "level \(level): \(e) vs \(previous)")
            previous = e
        }
        // Plain min/max bases do not depend on the level count, so the prefix property is exact.
        let a = try Self.quantize(w, rows: 16, cols: 256, group: 128, base: 2, signs: 2, search: false)
        let b = try Self.quantize(w, rows: 16, cols: 256, group: 128, base: 2, signs: 1, search: false)
        #expect(Array(a.levels.prefix(2)) == b.levels)
    }

    /// Independent round-to-nearest at 8 bits is close to the weights (error ≈ step²/12).
    @Test func eightBitBaseIsNearExact() throws {
        let w = Self.weights(4 * 128, seed: 4)
        let m = try Self.quantize(w, rows: 4, cols: 128, group: 32, base: 8, signs: 0)
        let d = m.dequantize(level: 1)
        let maxError = zip(d, w).map { abs($0 - $1) }.max()!
        #expect(maxError < 0.5 * 1.0 / 255 * 1.01 + 1e-3)
    }

    @Test func badShapesAreRejected() {
        let w = [Float](repeating: 0, count: 100)
        #expect(throws: FormatError.self) { try Self.quantize(w, rows: 1, cols: 100, group: 32, base: 2, signs: 0) }
        #expect(throws: FormatError.self) { try Self.quantize(w, rows: 1, cols: 100, group: 48, base: 2, signs: 0) }
        #expect(throws: FormatError.self) { try Self.quantize([Float](repeating: 0, count: 64), rows: 1, cols: 64, group: 32, base: 9, signs: 0) }
    }

    /// `spillDirectory`: the writer keeps its records in a spill file there instead of in memory.
    static func writeSample(_ path: String, spillDirectory: String? = nil) throws -> (MWQMatrix, [Float]) {
        let m = try quantize(weights(8 * 128, seed: 5), rows: 8, cols: 128, group: 64, base: 2, signs: 2)
        let resident = weights(300, seed: 6)
        var writer = try MWQWriter(modelType: "llama", config: .object(["hidden_size": .int(128)]), tokenizer: .object(["kind": .string("none")]),
                                   quantization: .init(scheme: "v1", bits: [2, 3, 4], group: 64, scales: "minmax", resident: "f16"),
                                   spillDirectory: spillDirectory)
        try writer.addResident("norm.weight", shape: [300], values: resident, dtype: "f32")
        try writer.addResident("embed.weight", shape: [3, 100], values: resident, dtype: "f16")
        try writer.addResident("head.weight", shape: [5, 32], values: Array(resident.prefix(160)), dtype: "q8_0")
        writer.addResident("proj.weight", matrix: try projection())
        try writer.addExpert(layer: 0, expert: 1, matrices: [("a.weight", m), ("b.weight", m)])
        let m2 = try quantize(weights(40 * 64, seed: 7), rows: 40, cols: 64, group: 64, base: 2, signs: 2)
        try writer.addExpert(layer: 1, expert: 0, matrices: [("d.weight", m2)])
        try writer.write(to: path)
        return (m, resident)
    }

    /// A resident projection as `--resident q4` stores it: a 4-bit base in groups of 32.
    static func projection() throws -> MWQMatrix {
        try quantize(weights(40 * 96, seed: 9), rows: 40, cols: 96, group: 32, base: 4, signs: 0)
    }

    /// Records kept in a spill file give the same file, byte for byte, and leave nothing behind.
    @Test func spilledRecordsWriteTheSameFile() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mwq-spill-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let memory = dir.appendingPathComponent("memory.mwq").path, spilled = dir.appendingPathComponent("spilled.mwq").path
        _ = try Self.writeSample(memory)
        _ = try Self.writeSample(spilled, spillDirectory: dir.path)
        let a = try Data(contentsOf: URL(fileURLWithPath: memory)), b = try Data(contentsOf: URL(fileURLWithPath: spilled))
        #expect(a.count > 3 * 4096 && a == b)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() == ["memory.mwq", "spilled.mwq"])
        #expect(throws: FormatError.self) { _ = try Self.writeSample(dir.appendingPathComponent("x.mwq").path, spillDirectory: "/nonexistent/dir") }
    }

    @Test func containerRoundTrip() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("mwq-\(UUID().uuidString).mwq").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (m, resident) = try Self.writeSample(path)
        let file = try MWQFile(path: path)
        #expect(try file.floats("norm.weight") == resident)
        #expect(try file.floats("embed.weight") == resident.map { Float(Float16($0)) })
        // Q8_0: per 32 a float16 scale amax/127, every value within half a step (and the scale's rounding).
        let q8 = try file.floats("head.weight")
        for b in 0..<5 {
            let block = resident[(32 * b)..<(32 * b + 32)], step = block.map { abs($0) }.max()! / 127
            for c in block.indices { #expect(abs(q8[c] - resident[c]) <= step * 0.5 + abs(resident[c]) * 1e-3) }
        }
        // A packed resident matrix: its tiles in place, and as floats its level-1 weights.
        let projection = try Self.projection()
        let tensor = try #require(file.residentTensor("proj.weight"))
        #expect(tensor.dtype == "mwq4" && tensor.group == 32 && tensor.shape == [40, 96])
        #expect(tensor.bytes == MWQMatrix.baseByteCount(rows: 40, cols: 96, group: 32, baseBits: 4))
        #expect(try file.floats("proj.weight") == projection.dequantize(level: 1))
        let view = try #require(try file.packedResident("proj.weight"))
        #expect(view.rows == 40 && view.cols == 96 && view.group == 32 && view.baseBits == 4)
        #expect(Array(UnsafeRawBufferPointer(start: view.levels[0], count: tensor.bytes)) == projection.levelBytes(0))
        #expect(try file.packedResident("embed.weight") == nil)
        let record = try #require(file.expertRecord(containing: "b.weight"))
        #expect(record.offset % 4096 == 0 && record.layer == 0 && record.expert == 1)
        #expect(record.levelBytes == m.levels.indices.map { 2 * m.levelBytes($0).count })
        for level in 1...3 {
            let back = try file.matrix("b.weight", level: level)
            #expect(back.levels == Array(m.levels.prefix(level)))
        }
        // Level k is a byte prefix of the record: level 1 of both matrices, then level 2 of both.
        let prefix = try file.verifiedPrefix(record, level: 2)
        #expect(Array(prefix[0..<m.levelBytes(0).count]) == m.levelBytes(0))
        #expect(Array(prefix[(2 * m.levelBytes(0).count)...].prefix(m.levelBytes(1).count)) == m.levelBytes(1))
        #expect(throws: FormatError.self) { try file.matrix("b.weight", level: 4) }
        #expect(throws: FormatError.self) { try file.matrix("c.weight", level: 1) }
    }

    /// Damaged files give errors that name the problem.
    @Test(arguments: ["magic", "version", "header", "resident", "packed", "expert", "truncated"])
    func corruptFilesAreRejected(_ damage: String) throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("mwq-\(UUID().uuidString).mwq").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        _ = try Self.writeSample(path)
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let header = try MWQFile(path: path).header
        let expected: String
        switch damage {
        case "magic": bytes[0] = 0x58; expected = "bad magic"
        case "version": bytes[8] = 9; expected = "version 9"
        case "header": bytes[20] = 0x7B; expected = "not valid JSON"
        case "resident": bytes[header.residentOffset + 5] ^= 0xFF; expected = "resident section checksum"
        case "expert": bytes[header.experts[0].offset + 3] ^= 0x01; expected = "level 1 checksum"
        case "packed":
            // A 3-bit base where 4-bit planes are stored: the sizes disagree.
            let key = Array("\"mwq4\"".utf8)
            let at = try #require((0..<(bytes.count - key.count)).first { Array(bytes[$0..<($0 + key.count)]) == key })
            bytes[at + 4] = UInt8(ascii: "3")
            expected = "resident tensor 'proj.weight' has an inconsistent type, size or offset"
        default: bytes = Array(bytes.prefix(header.experts[0].offset + 100)); expected = "past the end"
        }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        #expect { let f = try MWQFile(path: path); _ = try f.matrix("a.weight", level: 3) } throws: { error in
            "\(error)".contains(expected)
        }
    }
}

/// GPTQ-style compensation lowers the output error ‖(W − Ŵ)X‖ on correlated inputs.
struct MWQGPTQTests {
    @Test func compensationLowersTheOutputError() throws {
        let rows = 16, cols = 64, n = 256
        let w = MWQTests.weights(rows * cols, seed: 11)
        // Correlated inputs: each column mixes its neighbours.
        let z = MWQTests.weights(n * cols, seed: 12).map { $0 * 20 }
        var x = [Float](repeating: 0, count: n * cols)
        for t in 0..<n { for c in 0..<cols { x[t * cols + c] = z[t * cols + c] + 0.8 * z[t * cols + (c + 1) % cols] + 0.5 * z[t * cols + (c + 2) % cols] } }
        var h = [Double](repeating: 0, count: cols * cols)
        for t in 0..<n { for i in 0..<cols { for j in 0..<cols { h[i * cols + j] += Double(x[t * cols + i] * x[t * cols + j]) } } }
        let diagonal = (0..<cols).map { Float(h[$0 * cols + $0]) }
        func outputError(_ m: MWQMatrix, level: Int) -> Double {
            let d = m.dequantize(level: level)
            var e = 0.0
            for t in 0..<n {
                for r in 0..<rows {
                    var s = 0.0
                    for c in 0..<cols { s += Double((w[r * cols + c] - d[r * cols + c]) * x[t * cols + c]) }
                    e += s * s
                }
            }
            return e
        }
        let plain = try w.withUnsafeBufferPointer { try MWQMatrix.quantize($0, rows: rows, cols: cols, group: 32, baseBits: 2, signLevels: 1, importance: diagonal) }
        let gptq = try w.withUnsafeBufferPointer { try MWQMatrix.quantizeGPTQ($0, rows: rows, cols: cols, group: 32, baseBits: 2, signLevels: 1, hessian: h) }
        #expect(outputError(gptq, level: 2) < 0.9 * outputError(plain, level: 2),
                "gptq \(outputError(gptq, level: 2)) vs diagonal \(outputError(plain, level: 2))")
        #expect(throws: FormatError.self) {
            try w.withUnsafeBufferPointer { try MWQMatrix.quantizeGPTQ($0, rows: rows, cols: cols, group: 32, baseBits: 2, signLevels: 1, hessian: [1, 2]) }
        }
    }
}
