import Foundation
import Testing
import D2MoEFormats

/// The GGUF reader against the `gguf` Python package on the real model files
/// (goldens from scripts/reference/gguf_golden.py).
@Suite struct GGUFGoldenTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static var models: URL {
        ProcessInfo.processInfo.environment["D2MOE_MODELS_DIR"].map { URL(fileURLWithPath: $0) } ?? root.appendingPathComponent("models")
    }
    static let files = ["SmolLM2-135M-Instruct.Q4_1", "gemma-3-270m-q4_k_m"]
    static var present: Bool { files.allSatisfy { FileManager.default.fileExists(atPath: models.appendingPathComponent("\($0).gguf").path) } }

    /// Every 2-D tensor of every quant type read in blocks of rows (as a load converts them) equals
    /// the whole dequantization; dropping each block's pages after reading it leaves almost none of
    /// the file resident in this process, where reading without dropping leaves most of it.
    @Test(.enabled(if: present, "SKIP: real GGUF files absent from models/; run scripts/setup"), arguments: files)
    func rowBlocksEqualTheWholeTensorAndTheirPagesCanBeDropped(_ name: String) throws {
        let path = Self.models.appendingPathComponent("\(name).gguf").path
        let size = try #require(try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int)
        for release in [false, true] {
            let file = try GGUFFile(path: path)
            for info in file.tensors where info.dimensions.count == 2 {
                let cols = info.dimensions[0], rows = info.dimensions[1]
                let whole = try file.dequantize(info)
                var blocks = [Float](repeating: .nan, count: whole.count)
                try blocks.withUnsafeMutableBufferPointer { out in
                    for start in stride(from: 0, to: rows, by: 37) {
                        let r = start..<min(rows, start + 37)
                        try file.dequantizeRows(info, r, into: out.baseAddress! + start * cols)
                        if release { file.releaseResidentPages(of: info, elements: (r.lowerBound * cols)..<(r.upperBound * cols)) }
                    }
                }
                #expect(blocks == whole, "\(info.name) \(info.type.name)")
                if release { file.releaseResidentPages(of: info) }
            }
            let resident = file.residentMappedBytes()
            if release {
                #expect(resident < size / 20, "\(name): \(resident) of \(size) bytes still resident after dropping")
            } else {
                #expect(resident > size / 2, "\(name): only \(resident) of \(size) bytes resident after reading it all")
            }
        }
        let file = try GGUFFile(path: path)
        let info = try #require(file.tensors.first { $0.dimensions.count == 2 })
        var one = [Float](repeating: 0, count: info.dimensions[0])
        #expect(throws: FormatError.self) { try file.dequantizeRows(info, info.dimensions[1]..<(info.dimensions[1] + 1), into: &one) }
    }

    @Test(.enabled(if: present, "SKIP: real GGUF files absent from models/; run scripts/setup"), arguments: files)
    func dequantizationMatchesTheGGUFPackage(_ name: String) throws {
        let golden = try JSONSerialization.jsonObject(
            with: Data(contentsOf: Bundle.module.resourceURL!.appendingPathComponent("Golden/\(name).json"))) as! [String: Any]
        let file = try GGUFFile(path: Self.models.appendingPathComponent("\(name).gguf").path)
        let meta = golden["metadata"] as! [String: Any]
        #expect(file.tensors.count == meta["tensor_count"] as! Int)
        let tokens = try #require(file.metadata["tokenizer.ggml.tokens"]?.stringArray)
        #expect(tokens.count == meta["token_count"] as! Int)
        #expect(Array(tokens.prefix(50)) == meta["tokens_first"] as! [String])
        #expect(Array(tokens.suffix(50)) == meta["tokens_last"] as! [String])
        for (key, value) in meta where key.contains(".") {
            if let s = value as? String { #expect(file.metadata[key]?.string == s, "\(key)") }
            if let n = value as? Int { #expect(file.metadata[key]?.int == n, "\(key)") }
        }
        var types = Set<String>()
        for t in golden["tensors"] as! [[String: Any]] {
            let info = try #require(file.tensor(named: t["name"] as! String))
            #expect(info.type.name == t["type"] as! String)
            #expect(info.dimensions == t["dimensions"] as! [Int])
            let values = try file.dequantize(info)
            let first = (t["first"] as! [Any]).map { Float(($0 as! NSNumber).doubleValue) }
            let exact = info.type == .f32 || info.type == .f16 || info.type == .bf16
            for (i, expected) in first.enumerated() {
                let bound: Float = exact ? 0 : 1e-6 * max(1, abs(expected))
                if abs(values[i] - expected) > bound {
                    Issue.record("\(info.name)[\(i)] = \(values[i]), gguf says \(expected)")
                    break
                }
            }
            let sum = values.reduce(0.0) { $0 + Double($1) }, squares = values.reduce(0.0) { $0 + Double($1) * Double($1) }
            let expectedSum = (t["sum"] as! NSNumber).doubleValue, expectedSquares = (t["sum_squares"] as! NSNumber).doubleValue
            #expect(abs(sum - expectedSum) <= 1e-6 * max(1, squares.squareRoot() * 10), "\(info.name) sum \(sum) vs \(expectedSum)")
            #expect(abs(squares / expectedSquares - 1) < 1e-6, "\(info.name) sum of squares")
            types.insert(info.type.name)
        }
        #expect(types.count >= 3)
    }
}

/// Synthetic files: a round trip through the writer for every float type, and corruptions.
@Suite struct GGUFFileTests {
    func temporaryPath(_ name: String) -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("d2moe-\(UUID().uuidString)-\(name)").path
    }

    func sampleFile() throws -> (String, [Float]) {
        var writer = GGUFWriter()
        writer.set("general.architecture", .string("llama"))
        writer.set("test.int", .int(-42))
        writer.set("test.float", .float(1.5))
        writer.set("test.flag", .bool(true))
        writer.set("test.names", .array(.strings(["a", "béta", "🙂"])))
        writer.set("test.nested", .array(.arrays([.ints([1, 2]), .floats([0.5])])))
        let values = (0..<96).map { Float($0) * 0.25 - 7 }
        writer.addTensor(name: "w", dimensions: [32, 3], values: values)
        let path = temporaryPath("sample.gguf")
        try writer.write(to: path)
        return (path, values)
    }

    @Test func writerRoundTripsMetadataAndTensors() throws {
        let (path, values) = try sampleFile()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let file = try GGUFFile(path: path)
        #expect(file.metadata["test.int"]?.int == -42)
        #expect(file.metadata["test.float"]?.double == 1.5)
        #expect(file.metadata["test.flag"]?.bool == true)
        #expect(file.metadata["test.names"]?.stringArray == ["a", "béta", "🙂"])
        #expect(file.metadata["test.nested"] == .array(.arrays([.ints([1, 2]), .floats([0.5])])))
        let info = try #require(file.tensor(named: "w"))
        #expect(info.dimensions == [32, 3])
        #expect(try file.dequantize(info) == values)
    }

    @Test func f16AndBF16DequantizeExactly() throws {
        let values: [Float] = [0, 1, -2.5, 65504, 6.1035156e-05, 5.9604645e-08, -0.333251953125, 3.140625]
        var f16 = [UInt8](), bf16 = [UInt8]()
        for v in values {
            withUnsafeBytes(of: Float16(v).bitPattern.littleEndian) { f16 += $0 }
            withUnsafeBytes(of: UInt16(v.bitPattern >> 16).littleEndian) { bf16 += $0 }
        }
        var out = [Float](repeating: 0, count: values.count)
        try f16.withUnsafeBytes { try GGMLDequantizer.dequantize(type: .f16, bytes: $0.baseAddress!, count: values.count, into: &out) }
        #expect(out == values.map { Float(Float16($0)) })
        try bf16.withUnsafeBytes { try GGMLDequantizer.dequantize(type: .bf16, bytes: $0.baseAddress!, count: values.count, into: &out) }
        #expect(out == values.map { Float(bitPattern: $0.bitPattern & 0xFFFF_0000) })
    }

    @Test func blockSizesMatchTheirDocumentedLayouts() {
        // bytes per block = bits per weight × weights / 8
        let expected: [(GGMLType, Int, Double)] = [(.q4_0, 32, 4.5), (.q4_1, 32, 5), (.q5_0, 32, 5.5), (.q5_1, 32, 6),
                                                    (.q8_0, 32, 8.5), (.q4_K, 256, 4.5), (.q5_K, 256, 5.5), (.q6_K, 256, 6.5625)]
        for (type, block, bits) in expected {
            #expect(type.blockSize == block)
            #expect(Double(type.blockBytes) == bits * Double(block) / 8, "\(type.name)")
        }
    }

    @Test func everyTruncationIsAnErrorNamingTheFile() throws {
        let (path, _) = try sampleFile()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let cut = temporaryPath("cut.gguf")
        defer { try? FileManager.default.removeItem(atPath: cut) }
        for length in stride(from: 0, to: data.count, by: 7) {
            try data.prefix(length).write(to: URL(fileURLWithPath: cut))
            #expect(throws: FormatError.self, "cut at \(length)") { _ = try GGUFFile(path: cut) }
        }
        try data.prefix(data.count - 1).write(to: URL(fileURLWithPath: cut))
        #expect { _ = try GGUFFile(path: cut) } throws: { error in
            let message = String(describing: error)
            return message.contains(cut) && message.contains("past the end")
        }
    }

    /// Overwrites `count` bytes at the first occurrence of `marker` + `skip`.
    func corrupt(_ path: String, after marker: String, skip: Int, with bytes: [UInt8]) throws -> String {
        var data = try Data(contentsOf: URL(fileURLWithPath: path))
        let at = try #require(data.range(of: Data(marker.utf8))).upperBound + skip
        data.replaceSubrange(at..<(at + bytes.count), with: bytes)
        let out = temporaryPath("corrupt.gguf")
        try data.write(to: URL(fileURLWithPath: out))
        return out
    }

    @Test func corruptionsAreNamed() throws {
        let (path, _) = try sampleFile()
        defer { try? FileManager.default.removeItem(atPath: path) }
        func expectMessage(_ p: String, _ text: String) {
            #expect { _ = try GGUFFile(path: p) } throws: { String(describing: $0).contains(text) }
            try? FileManager.default.removeItem(atPath: p)
        }
        var magic = try Data(contentsOf: URL(fileURLWithPath: path))
        magic[0] = 0x58
        let badMagic = temporaryPath("magic.gguf")
        try magic.write(to: URL(fileURLWithPath: badMagic))
        expectMessage(badMagic, "bad magic")
        // Tensor "w": after its name come n_dims (4), dims (16), type (4), offset (8).
        expectMessage(try corrupt(path, after: "\u{1}\0\0\0\0\0\0\0w", skip: 20, with: [99, 0, 0, 0]), "unknown type id 99")
        expectMessage(try corrupt(path, after: "\u{1}\0\0\0\0\0\0\0w", skip: 24, with: [0, 0, 0, 0, 1, 0, 0, 0]), "past the end")
        expectMessage(try corrupt(path, after: "\u{1}\0\0\0\0\0\0\0w", skip: 20, with: [10, 0, 0, 0]), "do not fit its blocks")
        // A string length of 2^40 in the metadata key "test.names" array.
        expectMessage(try corrupt(path, after: "test.names", skip: 16, with: [0, 0, 0, 0, 0, 1, 0, 0]), "claims")
    }
}

@Suite struct SafetensorsTests {
    func write(_ header: String, dataBytes: Int) throws -> String {
        var data = Data()
        var n = UInt64(header.utf8.count).littleEndian
        data.append(Data(bytes: &n, count: 8))
        data.append(Data(header.utf8))
        data.append(Data(count: dataBytes))
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("d2moe-\(UUID().uuidString).safetensors").path
        try data.write(to: URL(fileURLWithPath: path))
        return path
    }

    @Test func writerRoundTrips() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("d2moe-\(UUID().uuidString).safetensors").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try SafetensorsWriter.write([("a", [2, 3], [1, 2, 3, 4, 5, 6]), ("b", [1], [-1])], to: path, metadata: ["format": "pt"])
        let file = try SafetensorsFile(path: path)
        #expect(try file.floats(named: "a") == [1, 2, 3, 4, 5, 6])
        #expect(file.tensors["a"]?.shape == [2, 3])
        #expect(try file.floats(named: "b") == [-1])
        #expect(file.metadata["format"] == "pt")
    }

    @Test func malformedHeadersAreNamed() throws {
        let cases: [(String, Int, String)] = [
            (#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}}"#, 16, "needs 8"),
            (#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, 12, "overlap"),
            (#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, 8, "outside the data section"),
            (#"{"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#, 8, "dtype I64"),
            (#"not json"#, 0, "not a JSON object"),
        ]
        for (header, bytes, message) in cases {
            let path = try write(header, dataBytes: bytes)
            defer { try? FileManager.default.removeItem(atPath: path) }
            #expect { _ = try SafetensorsFile(path: path) } throws: { String(describing: $0).contains(message) }
        }
        let path = try write(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, dataBytes: 4)
        var data = try Data(contentsOf: URL(fileURLWithPath: path))
        data.replaceSubrange(0..<8, with: [0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0])
        try data.write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect { _ = try SafetensorsFile(path: path) } throws: { String(describing: $0).contains("header length") }
    }
}
