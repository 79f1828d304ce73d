import Foundation

/// Builds a GGUF v3 file: metadata (optionally copied from another file), tensors copied byte for
/// byte from a source file or given as float32. Written to a temporary name, then renamed.
public struct GGUFWriter {
    private var keys: [String] = []
    private var values: [String: GGUFValue] = [:]
    private var tensors: [(name: String, dimensions: [Int], type: GGMLType, bytes: Data)] = []
    public let alignment = 32

    public init() {}

    /// Starts from every metadata entry of `source`, in its order.
    public init(copyingMetadataFrom source: GGUFFile) throws {
        for key in source.metadataKeys { set(key, source.metadata[key]!) }
    }

    public mutating func set(_ key: String, _ value: GGUFValue) {
        if values[key] == nil { keys.append(key) }
        values[key] = value
    }

    /// Adds a tensor of `source` unchanged (any quant type).
    public mutating func addTensor(copying info: GGUFTensorInfo, from source: GGUFFile) throws {
        tensors.append((info.name, info.dimensions, info.type, Data(try source.rawBytes(of: info))))
    }

    /// Adds a float32 tensor; `dimensions` in GGUF order (contiguous first).
    public mutating func addTensor(name: String, dimensions: [Int], values: [Float]) {
        precondition(dimensions.reduce(1, *) == values.count, "GGUFWriter: \(values.count) values for \(dimensions)")
        tensors.append((name, dimensions, .f32, values.withUnsafeBufferPointer { Data(buffer: $0) }))
    }

    public func write(to path: String) throws {
        var out = Data()
        func u32(_ v: UInt32) { var x = v.littleEndian; out.append(Data(bytes: &x, count: 4)) }
        func u64(_ v: UInt64) { var x = v.littleEndian; out.append(Data(bytes: &x, count: 8)) }
        func string(_ s: String) { u64(UInt64(s.utf8.count)); out.append(contentsOf: Array(s.utf8)) }
        func typeID(_ v: GGUFValue) -> GGUFValueType {
            switch v {
            case .int: return .int64
            case .uint: return .uint64
            case .float: return .float64
            case .bool: return .bool
            case .string: return .string
            case .array: return .array
            }
        }
        func array(_ a: GGUFArray) {
            switch a {
            case .ints(let xs): u32(GGUFValueType.int64.rawValue); u64(UInt64(xs.count)); xs.forEach { u64(UInt64(bitPattern: $0)) }
            case .floats(let xs): u32(GGUFValueType.float64.rawValue); u64(UInt64(xs.count)); xs.forEach { u64($0.bitPattern) }
            case .bools(let xs): u32(GGUFValueType.bool.rawValue); u64(UInt64(xs.count)); xs.forEach { out.append($0 ? 1 : 0) }
            case .strings(let xs): u32(GGUFValueType.string.rawValue); u64(UInt64(xs.count)); xs.forEach(string)
            case .arrays(let xs): u32(GGUFValueType.array.rawValue); u64(UInt64(xs.count)); xs.forEach(array)
            }
        }
        func value(_ v: GGUFValue) {
            switch v {
            case .int(let x): u64(UInt64(bitPattern: x))
            case .uint(let x): u64(x)
            case .float(let x): u64(x.bitPattern)
            case .bool(let b): out.append(b ? 1 : 0)
            case .string(let s): string(s)
            case .array(let a): array(a)
            }
        }
        u32(GGUFFile.magic)
        u32(3)
        u64(UInt64(tensors.count))
        u64(UInt64(keys.count))
        for key in keys {
            let v = values[key]!
            string(key)
            // general.alignment must stay a u32 for other readers.
            if key == "general.alignment" { u32(GGUFValueType.uint32.rawValue); u32(UInt32(alignment)); continue }
            u32(typeID(v).rawValue)
            value(v)
        }
        var offset = 0
        for t in tensors {
            string(t.name)
            u32(UInt32(t.dimensions.count))
            t.dimensions.forEach { u64(UInt64($0)) }
            u32(t.type.rawValue)
            u64(UInt64(offset))
            offset += (t.bytes.count + alignment - 1) / alignment * alignment
        }
        while out.count % alignment != 0 { out.append(0) }
        for t in tensors {
            out.append(t.bytes)
            while out.count % alignment != 0 { out.append(0) }
        }
        try AtomicFile.write(out, to: path)
    }
}
