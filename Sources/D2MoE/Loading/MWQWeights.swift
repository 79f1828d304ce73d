import Foundation
import D2MoEFormats
import D2MoEKernels

/// Weights of an MWQ container under their checkpoint names: resident tensors converted to
/// float, quantized expert matrices served at one level (`--bits`).
final class MWQWeights: PackedWeightSource {
    let file: MWQFile
    /// 1-based level every expert is served at.
    let level: Int
    var origin: String { file.path }

    /// Serve quantized matrices as packed planes (the kernels' path) rather than dequantized.
    let packedKernels: Bool
    /// Routed experts come from the expert pool: the model build skips them.
    var streamsRoutedExperts = false
    /// Offsets of the records whose served levels passed their checksums.
    private var verified = Set<Int>()

    init(file: MWQFile, level: Int, packedKernels: Bool = true) {
        self.file = file
        self.level = level
        self.packedKernels = packedKernels
    }

    /// A view into the mapped record: each level's tiles of the matrix, read in place. Checksums of
    /// the levels served are verified here, once.
    func packed(_ name: String) throws -> PackedMWQ? {
        guard packedKernels else { return nil }
        if file.residentTensor(name) != nil {
            do { return try file.packedResident(name).map { PackedMWQ(view: $0, level: 1, owner: file) } } catch let error as FormatError {
                throw ModelError(error.description)
            }
        }
        guard let (e, ranges) = file.levelRanges(of: name), let m = e.matrices.first(where: { $0.name == name }) else { return nil }
        let q = file.header.quantization
        let bytes: UnsafeRawBufferPointer
        if verified.contains(e.offset) {
            bytes = try file.file.bytes(at: e.offset, count: e.prefixBytes(level: level), what: "expert (\(e.layer), \(e.expert))")
        } else {
            // A record's matrices share its checksums: verify it once, not once per matrix.
            do { bytes = try file.verifiedPrefix(e, level: level) } catch let error as FormatError { throw ModelError(error.description) }
            verified.insert(e.offset)
        }
        guard let base = bytes.baseAddress else { return nil }
        let read = q.levelsRead(at: level)
        let view = MWQMatrixView(rows: m.rows, cols: m.cols, group: q.group, baseBits: q.baseBits(at: level),
                                 levels: read.map { base + ranges[$0 - 1].lowerBound })
        return PackedMWQ(view: view, level: read.count, owner: file)
    }

    /// By magic, not by extension.
    static func looksLikeMWQ(_ path: String) -> Bool {
        guard let h = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? h.close() }
        return (try? h.read(upToCount: 8)).map { Array($0) == Array("D2MWQ\0\0\0".utf8) } ?? false
    }

    func shape(of name: String) -> [Int]? {
        if let t = file.residentTensor(name) { return t.shape }
        if let m = file.expertRecord(containing: name)?.matrices.first(where: { $0.name == name }) { return [m.rows, m.cols] }
        return nil
    }

    /// Resident matrices of a plain element type, a few rows at a time, so loading converts them
    /// without a float32 copy of the whole tensor.
    func rowReader(_ name: String) throws -> ((Range<Int>, UnsafeMutablePointer<Float>) throws -> Void)? {
        guard file.residentTensor(name) != nil else { return nil }
        let m: DenseMatrix?
        do { m = try file.residentMatrix(name) } catch let e as FormatError { throw ModelError(e.description) }
        guard let m else { return nil }
        let file = self.file
        return { range, out in
            for r in range { m.row(r, into: out + (r - range.lowerBound) * m.cols) }
            // The converted copy is what the model keeps: the file's pages need not stay resident
            // beside it while the rest loads (the load's peak would hold both).
            file.releaseResidentRows(name, range)
        }
    }

    /// Resident tensors as stored; quantized matrices dequantized at `level` (the plain path).
    func floats(_ name: String) throws -> [Float] {
        do {
            if file.residentTensor(name) != nil { return try file.floats(name) }
            let m = try file.matrix(name, level: level)
            return m.dequantize(level: m.levels.count)
        } catch let e as FormatError {
            throw ModelError(e.description)
        }
    }
}
