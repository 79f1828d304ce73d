import Foundation
import Testing
import D2MoE
import D2MoEFormats

/// The matryoshka-free baseline's files (DESIGN §3.6): one independent RTN copy per bit-width in
/// each expert record. Each copy must be exactly the RTN model of its bits, streaming must read
/// only the copy a token runs at, and the budget must not change the logits.
@Suite(.serialized)
struct SeparateCopiesTests {
    static let directory = FileManager.default.temporaryDirectory.appendingPathComponent("d2moe-copies-\(getpid())")

    static func converted(_ fixture: String, scheme: String) throws -> String {
        let path = directory.appendingPathComponent("\(fixture)-\(scheme).mwq").path
        if !FileManager.default.fileExists(atPath: path) {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            _ = try MWQConverter.convert(model: TestPaths.fixtures.appendingPathComponent(fixture).path, to: path,
                                         scheme: try MWQConverter.Scheme(scheme))
        }
        return path
    }

    /// Level k of an mfree record is the rtn(bits[k]) matrix, byte for byte, and the record's
    /// level sizes are base levels of those bits (not sign planes).
    @Test func eachCopyIsTheRoundToNearestMatrix() throws {
        let copies = try MWQFile(path: try Self.converted("olmoe", scheme: "mfree"))
        #expect(copies.header.quantization.isNested == false && copies.header.quantization.bits == [2, 3, 4])
        let q = copies.header.quantization
        for (k, bits) in [2, 3, 4].enumerated() {
            let rtn = try MWQFile(path: try Self.converted("olmoe", scheme: "rtn\(bits)"))
            for e in copies.header.experts.prefix(6) {
                #expect(e.levelBytes[k] == e.matrices.reduce(0) {
                    $0 + MWQMatrix.baseByteCount(rows: $1.rows, cols: $1.cols, group: q.group, baseBits: bits)
                })
                for m in e.matrices {
                    let copy = try copies.matrix(m.name, level: k + 1)
                    #expect(copy.baseBits == bits && copy.levels.count == 1)
                    #expect(copy == (try rtn.matrix(m.name, level: 1)), "\(m.name) copy \(bits)")
                }
            }
        }
    }

    /// The resident model at --bits b from the copies is the rtn-b model; streamed through a pool
    /// of one expert it is the same again, and only level b's pieces are touched.
    @Test(arguments: [2, 3, 4])
    func streamedCopiesGiveTheRoundToNearestLogits(bits: Int) throws {
        let path = try Self.converted("olmoe", scheme: "mfree")
        let rtn = try ExpertStreamingTests.logits(try ModelLoader.loadModel(
            path: try Self.converted("olmoe", scheme: "rtn\(bits)"), options: LoadOptions(contextLength: 16)))
        let resident = try ExpertStreamingTests.logits(try ModelLoader.loadModel(path: path, options: LoadOptions(contextLength: 16, bits: bits)))
        #expect(resident == rtn)
        let (_, probe) = try ExpertStreamingTests.streamed(path, budget: .fraction(1))
        let budget = probe.largestExpertBytes
        let (model, backend) = try ExpertStreamingTests.streamed(path, budget: .bytes(budget), bits: bits) {
            try? $0.apply(policy: "matryoshka-free")
        }
        #expect(try ExpertStreamingTests.logits(model) == rtn)
        let stats = backend.stats
        #expect(stats.peakPoolBytes <= budget && stats.evictions > 0)
        let level = bits - 1
        for k in 0..<3 where k != level - 1 {
            #expect(stats.total.piecesRead[k] == 0 && stats.total.hits[k] == 0, "level \(k + 1) touched at \(bits) bits")
        }
        #expect(stats.total.piecesRead[level - 1] > 0)
    }

    /// Mixed levels (gate scores) from separate copies: a tight budget changes no logit, and a
    /// token at 4 bits reads the 4-bit copy alone, so the bytes read per piece are a whole copy's.
    @Test func gateLevelsFromCopiesIgnoreTheBudget() throws {
        let path = try Self.converted("olmoe", scheme: "mfree")
        let configure: (inout ExpertStreaming) -> Void = { try? $0.apply(policy: "matryoshka-free"); $0.bitPolicy = "gate"; $0.gateThresholds = [0.5, 0.9] }
        let (ample, _) = try ExpertStreamingTests.streamed(path, budget: .fraction(1), configure: configure)
        let reference = try ExpertStreamingTests.logits(ample)
        let (_, probe) = try ExpertStreamingTests.streamed(path, budget: .fraction(1))
        let (tight, backend) = try ExpertStreamingTests.streamed(path, budget: .bytes(probe.largestExpertBytes), configure: configure)
        #expect(try ExpertStreamingTests.logits(tight) == reference)
        let total = backend.stats.total
        #expect(total.expertTokens[0] + total.expertTokens[1] > 0 && total.expertTokens[2] > 0, "levels \(total.expertTokens)")
        // Buffered or direct, a piece of a copy holds bits/8 bytes per weight plus its scales.
        let file = try MWQFile(path: path)
        let record = file.header.experts[0]
        let smallest = record.levelBytes.min()!
        #expect(total.bytesRead >= total.piecesRead.reduce(0, +) * smallest)
        #expect(record.levelBytes[2] > record.levelBytes[1] && record.levelBytes[1] > record.levelBytes[0])
    }

    /// matryoshka-free needs a file of copies; a nested file says so.
    @Test func matryoshkaFreeOnANestedFileIsAClearError() throws {
        let nested = try ExpertStreamingTests.converted("olmoe")
        #expect {
            _ = try ExpertStreamingTests.streamed(nested, budget: .fraction(0.5)) { try? $0.apply(policy: "matryoshka-free") }
        } throws: { "\($0)".contains("--scheme mfree") }
    }

    /// A corrupt 2-bit copy fails only the runs that read it: the 4-bit copy still verifies.
    @Test func aCorruptCopyFailsOnlyItsLevel() throws {
        let path = try Self.converted("olmoe", scheme: "mfree")
        let copy = Self.directory.appendingPathComponent("corrupt-\(UUID().uuidString).mwq").path
        try FileManager.default.copyItem(atPath: path, toPath: copy)
        defer { try? FileManager.default.removeItem(atPath: copy) }
        let record = try MWQFile(path: copy).header.experts[0]
        let handle = try #require(FileHandle(forUpdatingAtPath: copy))
        try handle.seek(toOffset: UInt64(record.offset + 3))
        let byte = try #require(handle.readData(ofLength: 1).first)
        try handle.seek(toOffset: UInt64(record.offset + 3))
        handle.write(Data([byte ^ 0x55]))
        try handle.close()
        let file = try MWQFile(path: copy)
        _ = try file.verifiedPrefix(record, level: 3)
        #expect { _ = try file.verifiedPrefix(record, level: 1) } throws: { "\($0)".contains("level 1 checksum mismatch") }
    }

    /// Synthetic models of copies: sizes as laid out, every copy verifies, the model streams.
    @Test func synthesizedCopiesOpenAndStream() throws {
        try FileManager.default.createDirectory(at: Self.directory, withIntermediateDirectories: true)
        let path = Self.directory.appendingPathComponent("tiny-mfree-\(UUID().uuidString).mwq").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let shape = try SyntheticModel.shape(named: "tiny-moe")
        let scheme = try MWQConverter.Scheme("mfree")
        let summary = try SyntheticModel.write(shape: shape, scheme: scheme, seed: 3, to: path)
        #expect(try SyntheticModel.expectedSizes(shape: shape, scheme: scheme).fileBytes == summary.fileBytes)
        let file = try MWQFile(path: path)
        #expect(file.header.quantization.isNested == false)
        let g = file.header.quantization.group
        for e in file.header.experts {
            for level in 1...3 { _ = try file.verifiedPrefix(e, level: level) }
            #expect(e.levelBytes == [2, 3, 4].map { b in e.matrices.reduce(0) { $0 + ($1.rows + 31) / 32 * ($1.cols / g) * (4 * b * g + 128) } })
        }
        let resident = try ExpertStreamingTests.logits(try ModelLoader.loadModel(path: path, options: LoadOptions(contextLength: 16, bits: 3)))
        #expect(resident.allSatisfy { $0.allSatisfy(\.isFinite) })
        let (_, probe) = try ExpertStreamingTests.streamed(path, budget: .fraction(1))
        let (model, _) = try ExpertStreamingTests.streamed(path, budget: .bytes(probe.largestExpertBytes), bits: 3)
        #expect(try ExpertStreamingTests.logits(model) == resident)
    }
}
