import Foundation
import Testing
import D2MoE
import D2MoEFormats

/// The router section of `.mwq` files: round trip, files without it, atomic replacement.
@Suite struct BitRouterFormatTests {
    static func folder() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("d2moe-routers-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    /// A tiny synthetic MoE (2 layers × 8 experts, hidden 256) at v1.
    static func tinyMoE(in dir: URL, name: String = "tiny.mwq") throws -> String {
        let path = dir.appendingPathComponent(name).path
        _ = try SyntheticModel.write(shape: try SyntheticModel.shape(named: "tiny-moe"), scheme: try MWQConverter.Scheme("v1"), seed: 3, to: path)
        return path
    }

    /// Seeded random routers for every record of `file`, `calibrationRows` logit rows each.
    static func randomRouters(for file: MWQFile, hidden: Int, seed: UInt64, scale: Float = 0.2, calibrationRows: Int = 5,
                              training: JSONValue? = nil) -> MWQRouterSet {
        var rng = RouterRNG(seed: seed)
        func uniform() -> Float { Float(Double(rng.next() >> 11) / Double(1 << 53)) * 2 - 1 }
        let k = file.header.quantization.bits.count
        let routers = file.header.experts.map { e in
            MWQRouter(layer: e.layer, expert: e.expert, weight: (0..<(k * hidden)).map { _ in uniform() * scale },
                      bias: (0..<k).map { _ in uniform() }, calibrationLogits: (0..<(calibrationRows * k)).map { _ in uniform() * 3 },
                      calibrationWeight: 2)
        }
        return MWQRouterSet(hidden: hidden, levels: k, routers: routers, training: training)
    }

    static func logits(_ path: String, options: LoadOptions = LoadOptions(contextLength: 16)) throws -> [[Float]] {
        let model = try ModelLoader.loadModel(path: path, options: options)
        let batch = (0..<6).map { BatchToken(sequence: 0, position: $0, token: Int32(37 * $0 % 500), wantsLogits: true) }
        return try model.forward(batch, caches: [model.makeCache(capacity: 16)])
    }

    @Test func routersRoundTripAndTheModelIsUnchanged() throws {
        let dir = try Self.folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = try Self.tinyMoE(in: dir)
        let before = try MWQFile(path: path)
        // A file written without routers has none and loads as before.
        #expect(before.header.routers == nil)
        #expect(try before.routers() == nil)
        let reference = try Self.logits(path)

        // A large training note pushes the header past its 4 KiB area: every section must move.
        let note = JSONValue.string(String(repeating: "x", count: 9000))
        let set = Self.randomRouters(for: before, hidden: 256, seed: 11, training: .object(["note": note]))
        try MWQFile.writeRouters(set, into: path)
        let after = try MWQFile(path: path)
        #expect(after.header.residentOffset > before.header.residentOffset)
        #expect(try after.routers() == set)
        #expect(after.header.experts.count == before.header.experts.count)
        for (a, b) in zip(after.header.experts, before.header.experts) {
            #expect(a.levelCRC32 == b.levelCRC32 && a.offset - b.offset == after.header.residentOffset - before.header.residentOffset)
            _ = try after.verifiedPrefix(a, level: 3)
        }
        #expect(try Self.logits(path) == reference)

        // Writing again replaces the routers (the section does not pile up at the end).
        let other = Self.randomRouters(for: before, hidden: 256, seed: 12)
        try MWQFile.writeRouters(other, into: path)
        let again = try MWQFile(path: path)
        #expect(try again.routers() == other)
        #expect(try again.routers() != set)
        #expect(again.file.size <= after.file.size)
        #expect(try Self.logits(path) == reference)
        // Nothing but the model file is left in the folder.
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["tiny.mwq"])
    }

    @Test func aFailedWriteLeavesTheFileAsItWas() throws {
        let dir = try Self.folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = try Self.tinyMoE(in: dir)
        let file = try MWQFile(path: path)
        try MWQFile.writeRouters(Self.randomRouters(for: file, hidden: 256, seed: 1), into: path)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        // Routers of the wrong width fail while encoding, before anything replaces the file.
        var bad = Self.randomRouters(for: try MWQFile(path: path), hidden: 256, seed: 2)
        bad.routers[3].weight.removeLast()
        #expect(throws: FormatError.self) { try MWQFile.writeRouters(bad, into: path) }
        var wrongLevels = bad
        wrongLevels.levels = 2
        #expect(throws: FormatError.self) { try MWQFile.writeRouters(wrongLevels, into: path) }
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == bytes)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["tiny.mwq"])
    }

    @Test func aCorruptRouterSectionIsReported() throws {
        let dir = try Self.folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = try Self.tinyMoE(in: dir)
        try MWQFile.writeRouters(Self.randomRouters(for: try MWQFile(path: path), hidden: 256, seed: 5), into: path)
        let section = try #require(try MWQFile(path: path).header.routers)
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        bytes[section.offset + 17] ^= 0x40
        try bytes.write(to: URL(fileURLWithPath: path))
        let file = try MWQFile(path: path)  // the rest of the file is intact
        #expect(throws: FormatError.self) { _ = try file.routers() }
        var options = LoadOptions(contextLength: 16)
        options.bitPolicy = "router"
        #expect(throws: ModelError.self) { _ = try ModelLoader.loadModel(path: path, options: options) }
        _ = try ModelLoader.loadModel(path: path, options: LoadOptions(contextLength: 16))
    }
}
