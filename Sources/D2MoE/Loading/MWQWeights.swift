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

    init(file: MWQFile, level: Int, packedKernels: Bool = true) {
        self.file = file
        self.level = level
        self.packedKernels = packedKernels
    }

    /// A view into the mapped record: level k's bytes hold each matrix's planes then scales, in
    /// record order (MWQMatrix's layout). Checksums of the levels served are verified here, once.
    func packed(_ name: String) throws -> PackedMWQ? {
        guard packedKernels, let e = file.expertRecord(containing: name) else { return nil }
        let q = file.header.quantization
        let bytes: UnsafeRawBufferPointer
        do { bytes = try file.verifiedPrefix(e, level: level) } catch let error as FormatError { throw ModelError(error.description) }
        guard let base = bytes.baseAddress else { return nil }
        var levelStart = 0
        var planes: [UnsafePointer<UInt32>] = [], scales: [UnsafePointer<UInt16>] = []
        var shape = (rows: 0, cols: 0)
        for k in 0..<level {
            var at = levelStart
            for m in e.matrices {
                let groups = m.rows * (m.cols / q.group)
                let planeBytes = groups * (k == 0 ? q.bits[0] : 1) * q.group / 8
                let size = k == 0 ? MWQMatrix.baseByteCount(rows: m.rows, cols: m.cols, group: q.group, baseBits: q.bits[0])
                    : MWQMatrix.signByteCount(rows: m.rows, cols: m.cols, group: q.group)
                if m.name == name {
                    planes.append((base + at).assumingMemoryBound(to: UInt32.self))
                    scales.append((base + at + planeBytes).assumingMemoryBound(to: UInt16.self))
                    shape = (m.rows, m.cols)
                }
                at += size
            }
            levelStart += e.levelBytes[k]
        }
        let view = MWQMatrixView(rows: shape.rows, cols: shape.cols, group: q.group, baseBits: q.bits[0],
                                 basePlanes: planes[0], baseScales: scales[0],
                                 signPlanes: Array(planes.dropFirst()), signScales: Array(scales.dropFirst()))
        return PackedMWQ(view: view, level: level, owner: file)
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

    /// Resident tensors as stored; quantized matrices dequantized at `level` (the plain path).
    func floats(_ name: String) throws -> [Float] {
        do {
            if file.residentTensor(name) != nil { return try file.floats(name) }
            return try file.matrix(name, level: level).dequantize(level: level)
        } catch let e as FormatError {
            throw ModelError(e.description)
        }
    }
}
