import Foundation
import Testing
import D2MoE
import D2MoEFormats

/// Corrupt model files and configs through the command line: a message naming the file and the
/// problem, and a non-zero exit; never a crash.
@Suite struct BadInputTests {
    /// A small valid GGUF with one tensor named "w", and the path of a copy with `bytes` written
    /// right after the tensor's name at `skip`.
    func corruptedGGUF(skip: Int, bytes: [UInt8]) throws -> String {
        var writer = GGUFWriter()
        writer.set("general.architecture", .string("llama"))
        writer.addTensor(name: "w", dimensions: [32, 2], values: Array(repeating: 1, count: 64))
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("bad-\(UUID().uuidString).gguf").path
        try writer.write(to: path)
        var data = try Data(contentsOf: URL(fileURLWithPath: path))
        let at = try #require(data.range(of: Data("\u{1}\0\0\0\0\0\0\0w".utf8))).upperBound + skip
        data.replaceSubrange(at..<(at + bytes.count), with: bytes)
        try data.write(to: URL(fileURLWithPath: path))
        return path
    }

    @Test func unknownQuantTypeAndOffsetPastTheEndExitNonZeroWithAMessage() throws {
        // After the name: dimension count (4 bytes), two dimensions (16), type (4), offset (8).
        let cases: [(Int, [UInt8], String)] = [
            (20, [77, 0, 0, 0], "unknown type id 77"),
            (24, [0, 0, 1, 0, 0, 0, 0, 0], "past the end of the file"),
        ]
        for (skip, bytes, message) in cases {
            let path = try corruptedGGUF(skip: skip, bytes: bytes)
            defer { try? FileManager.default.removeItem(atPath: path) }
            for command in [["inspect", "--model", path], ["run", "--model", path, "--prompt", "hi"]] {
                let r = try runCLI(command)
                #expect(r.status != 0)
                #expect(r.stderr.contains(message) && r.stderr.contains(path), "stderr: \(r.stderr)")
            }
        }
    }

    @Test func configMissingAFieldExitsNonZeroWithAMessage() throws {
        let dir = try TestPaths.editedFixture("mixtral") { $0.removeValue(forKey: "num_local_experts") }
        defer { try? FileManager.default.removeItem(at: dir) }
        let r = try runCLI(["inspect", "--model", dir.path])
        #expect(r.status != 0)
        #expect(r.stderr.contains("missing field 'num_local_experts'"), "stderr: \(r.stderr)")
    }

    @Test func wrongTensorShapeIsNamed() throws {
        let dir = try TestPaths.editedFixture("llama") { $0["intermediate_size"] = 96 }
        defer { try? FileManager.default.removeItem(at: dir) }
        #expect { try ModelLoader.loadModel(path: dir.path) } throws: { error in
            String(describing: error).contains("has shape [128, 64], expected [96, 64]")
        }
    }
}
