/// One tensor of a GGUF file.
public struct GGUFTensorInfo: Sendable, Equatable {
    public let name: String
    /// Dimensions in GGUF order: the first is the contiguous (innermost) one.
    public let dimensions: [Int]
    public let type: GGMLType
    /// Absolute offset of the first byte in the file.
    public let offset: Int
    public let byteCount: Int

    public var elementCount: Int { dimensions.reduce(1, *) }
}

/// A GGUF (v2 or v3) model file: metadata, tensor table, and tensor data viewed in place in the
/// mapped file. Construction validates the whole layout, so later reads cannot run off the file.
public final class GGUFFile: @unchecked Sendable {
    public let path: String
    public let version: UInt32
    public let metadata: [String: GGUFValue]
    /// Metadata keys in file order.
    public let metadataKeys: [String]
    /// Tensors in file order.
    public let tensors: [GGUFTensorInfo]
    /// Data alignment (`general.alignment`, default 32).
    public let alignment: Int
    /// Offset of the tensor data section.
    public let dataOffset: Int
    let file: MappedFile
    private let index: [String: Int]

    static let magic: UInt32 = 0x4655_4747  // "GGUF" little-endian

    public init(path: String) throws {
        self.path = path
        file = try MappedFile(path: path)
        var c = ByteCursor(file: file, offset: 0)
        guard file.size >= 4, try c.read(UInt32.self, "magic") == Self.magic else {
            throw FormatError(path, "not a GGUF file (bad magic)")
        }
        version = try c.read(UInt32.self, "version")
        guard version == 2 || version == 3 else { throw FormatError(path, "unsupported GGUF version \(version) (2 and 3 are read)") }
        let tensorCount = try c.read(UInt64.self, "tensor count")
        let kvCount = try c.read(UInt64.self, "metadata count")
        // Each entry takes well over 8 bytes, so larger counts than this are corruption.
        guard tensorCount <= UInt64(file.size / 8), kvCount <= UInt64(file.size / 8) else {
            throw FormatError(path, "header claims \(tensorCount) tensors and \(kvCount) metadata entries, more than the file holds")
        }
        var metadata: [String: GGUFValue] = [:]
        var keys: [String] = []
        for i in 0..<Int(kvCount) {
            let key = try c.readString("metadata key \(i)")
            let type = try c.read(UInt32.self, "type of metadata '\(key)'")
            metadata[key] = try c.readValue(type: type, "metadata '\(key)'")
            keys.append(key)
        }
        self.metadata = metadata
        metadataKeys = keys
        let alignment = metadata["general.alignment"]?.int ?? 32
        guard alignment > 0, alignment & (alignment - 1) == 0 else {
            throw FormatError(path, "general.alignment \(alignment) is not a power of two")
        }
        self.alignment = alignment

        var raw: [(String, [Int], UInt32, UInt64)] = []
        for i in 0..<Int(tensorCount) {
            let name = try c.readString("name of tensor \(i)")
            let nDims = try c.read(UInt32.self, "dimension count of tensor '\(name)'")
            guard nDims >= 1, nDims <= 4 else { throw FormatError(path, "tensor '\(name)' has \(nDims) dimensions") }
            var dims: [Int] = []
            for _ in 0..<nDims {
                let d = try c.read(UInt64.self, "dimensions of tensor '\(name)'")
                guard d >= 1, d < UInt64(1) << 40 else { throw FormatError(path, "tensor '\(name)' has dimension \(d)") }
                dims.append(Int(d))
            }
            let type = try c.read(UInt32.self, "type of tensor '\(name)'")
            let offset = try c.read(UInt64.self, "offset of tensor '\(name)'")
            raw.append((name, dims, type, offset))
        }
        dataOffset = (c.offset + alignment - 1) / alignment * alignment

        var tensors: [GGUFTensorInfo] = []
        var index: [String: Int] = [:]
        for (name, dims, rawType, relative) in raw {
            guard let type = GGMLType(rawValue: rawType) else {
                throw FormatError(path, "tensor '\(name)' has unknown type id \(rawType)")
            }
            let (count, overflow) = dims.reduce((1, false)) { acc, d in
                let (p, o) = acc.0.multipliedReportingOverflow(by: d)
                return (p, acc.1 || o)
            }
            guard !overflow, dims[0] % type.blockSize == 0 else {
                throw FormatError(path, "tensor '\(name)' of type \(type.name) has dimensions \(dims) that do not fit its blocks of \(type.blockSize)")
            }
            guard relative <= UInt64(file.size) else {
                throw FormatError(path, "tensor '\(name)' data offset \(relative) is past the end of the file (\(file.size) bytes)")
            }
            let info = GGUFTensorInfo(name: name, dimensions: dims, type: type, offset: dataOffset + Int(relative),
                                      byteCount: type.byteCount(elements: count))
            _ = try file.bytes(at: info.offset, count: info.byteCount, what: "tensor '\(name)' data")
            guard index[name] == nil else { throw FormatError(path, "tensor '\(name)' appears twice") }
            index[name] = tensors.count
            tensors.append(info)
        }
        self.tensors = tensors
        self.index = index
    }

    public func tensor(named name: String) -> GGUFTensorInfo? { index[name].map { tensors[$0] } }

    /// The tensor's bytes, in place in the mapping (valid while this object lives).
    public func rawBytes(of info: GGUFTensorInfo) throws -> UnsafeRawBufferPointer {
        try file.bytes(at: info.offset, count: info.byteCount, what: "tensor '\(info.name)' data")
    }

    /// All elements as float32, in GGUF order (index = i0 + ne0·(i1 + ne1·…)).
    public func dequantize(_ info: GGUFTensorInfo) throws -> [Float] {
        try dequantize(info, elements: 0..<info.elementCount)
    }

    /// Elements `elements` of the tensor as float32 (GGUF order), dequantizing only their blocks:
    /// one expert of a stacked `*_exps` tensor without the other experts. The range must start
    /// and end on block boundaries.
    public func dequantize(_ info: GGUFTensorInfo, elements: Range<Int>) throws -> [Float] {
        var out = [Float](repeating: 0, count: elements.count)
        try out.withUnsafeMutableBufferPointer { try dequantize(info, elements: elements, into: $0.baseAddress!) }
        return out
    }

    /// Rows `rows` of a 2-D tensor (its second GGUF dimension; PyTorch's first) as float32 into
    /// `out`, dequantizing only their blocks.
    public func dequantizeRows(_ info: GGUFTensorInfo, _ rows: Range<Int>, into out: UnsafeMutablePointer<Float>) throws {
        guard info.dimensions.count == 2, rows.lowerBound >= 0, rows.upperBound <= info.dimensions[1] else {
            throw FormatError(path, "rows \(rows) of tensor '\(info.name)' \(info.dimensions) are out of range")
        }
        let cols = info.dimensions[0]
        try dequantize(info, elements: (rows.lowerBound * cols)..<(rows.upperBound * cols), into: out)
    }

    /// Lets the kernel drop this process's resident pages of the tensor's elements `elements`
    /// (all of it when nil) once a load has converted them; touching them again reads them back.
    public func releaseResidentPages(of info: GGUFTensorInfo, elements: Range<Int>? = nil) {
        let range = elements ?? 0..<info.elementCount
        file.releaseResidentPages(at: info.offset + info.type.byteCount(elements: range.lowerBound),
                                  count: info.type.byteCount(elements: range.count))
    }

    /// This process's resident bytes of the file's mapping (from /proc/self/smaps; 0 where it
    /// cannot be read), for tests of what a load leaves mapped.
    package func residentMappedBytes() -> Int { file.residentMappedBytes() }

    /// Writes the tensor's elementCount floats to `out`.
    public func dequantize(_ info: GGUFTensorInfo, into out: UnsafeMutablePointer<Float>) throws {
        try dequantize(info, elements: 0..<info.elementCount, into: out)
    }

    /// Writes elements `elements` (on block boundaries) as float32 to `out`.
    private func dequantize(_ info: GGUFTensorInfo, elements: Range<Int>, into out: UnsafeMutablePointer<Float>) throws {
        let bytes = try rawBytes(of: info)
        guard info.type.isDequantizable else {
            throw FormatError(path, "tensor '\(info.name)' has quant type \(info.type.name), which this engine does not read")
        }
        let n = info.type.blockSize
        guard elements.lowerBound >= 0, elements.upperBound <= info.elementCount,
              elements.lowerBound % n == 0, elements.count % n == 0 else {
            throw FormatError(path, "elements \(elements) of tensor '\(info.name)' (\(info.elementCount) elements) do not fall on \(info.type.name) block boundaries")
        }
        try GGMLDequantizer.dequantize(type: info.type, bytes: bytes.baseAddress! + info.type.byteCount(elements: elements.lowerBound),
                                       count: elements.count, into: out)
    }
}

/// Dequantizes runs of ggml blocks.
public enum GGMLDequantizer {
    /// `count` elements of `type` starting at `bytes` → float32.
    public static func dequantize(type: GGMLType, bytes: UnsafeRawPointer, count: Int, into out: UnsafeMutablePointer<Float>) throws {
        let blocks = count / type.blockSize
        let step = type.blockBytes, n = type.blockSize
        func each(_ body: (UnsafeRawPointer, UnsafeMutablePointer<Float>) -> Void) {
            for i in 0..<blocks { body(bytes + i * step, out + i * n) }
        }
        switch type {
        case .f32:
            for i in 0..<count { out[i] = Float(bitPattern: UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self))) }
        case .f16:
            for i in 0..<count { out[i] = halfToFloat(bytes, i * 2) }
        case .bf16:
            for i in 0..<count { out[i] = Float(bitPattern: UInt32(bytes.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self)) << 16) }
        case .q4_0: each(Q4_0Block.dequantize)
        case .q4_1: each(Q4_1Block.dequantize)
        case .q5_0: each(Q5_0Block.dequantize)
        case .q5_1: each(Q5_1Block.dequantize)
        case .q8_0: each(Q8_0Block.dequantize)
        case .q4_K: each(Q4_KBlock.dequantize)
        case .q5_K: each(Q5_KBlock.dequantize)
        case .q6_K: each(Q6_KBlock.dequantize)
        default:
            throw FormatError("<memory>", "quant type \(type.name) is not supported")
        }
    }
}
