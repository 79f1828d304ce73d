import Foundation

/// One tensor of a safetensors file.
public struct SafetensorsTensorInfo: Sendable, Equatable {
    public enum DType: String, Sendable { case f32 = "F32", f16 = "F16", bf16 = "BF16" }
    public let name: String
    public let dtype: DType
    /// Shape, outermost first (PyTorch order).
    public let shape: [Int]
    /// Absolute byte range in the file.
    public let offset: Int
    public let byteCount: Int
}

/// A safetensors file: an 8-byte little-endian header length, a JSON header mapping names to
/// dtype, shape and data offsets, then the data. The header is validated in full: offsets in
/// range, no overlap, and dtype × shape agreeing with each tensor's byte range.
public final class SafetensorsFile: @unchecked Sendable {
    public let path: String
    public let tensors: [String: SafetensorsTensorInfo]
    public let metadata: [String: String]
    let file: MappedFile

    public init(path: String) throws {
        self.path = path
        file = try MappedFile(path: path)
        var c = ByteCursor(file: file, offset: 0)
        let headerLength = try c.read(UInt64.self, "header length")
        guard headerLength >= 2, headerLength <= 100_000_000, headerLength <= UInt64(file.size - 8) else {
            throw FormatError(path, "header length \(headerLength) does not fit the file (\(file.size) bytes)")
        }
        let header = try c.take(Int(headerLength), "header")
        guard let json = (try? JSONSerialization.jsonObject(with: Data(header))) as? [String: Any] else {
            throw FormatError(path, "header is not a JSON object")
        }
        let dataStart = 8 + Int(headerLength)
        let dataSize = file.size - dataStart
        var tensors: [String: SafetensorsTensorInfo] = [:]
        var metadata: [String: String] = [:]
        for (name, value) in json {
            if name == "__metadata__" {
                for (k, v) in (value as? [String: Any]) ?? [:] { metadata[k] = v as? String }
                continue
            }
            guard let entry = value as? [String: Any], let dtypeName = entry["dtype"] as? String,
                  let shape = entry["shape"] as? [Int], let offsets = entry["data_offsets"] as? [Int], offsets.count == 2 else {
                throw FormatError(path, "tensor '\(name)' has a malformed header entry")
            }
            guard let dtype = SafetensorsTensorInfo.DType(rawValue: dtypeName) else {
                throw FormatError(path, "tensor '\(name)' has dtype \(dtypeName); F32, F16 and BF16 are supported")
            }
            guard shape.allSatisfy({ $0 >= 0 }), offsets[0] >= 0, offsets[1] >= offsets[0], offsets[1] <= dataSize else {
                throw FormatError(path, "tensor '\(name)' data \(offsets) is outside the data section (\(dataSize) bytes)")
            }
            let elements = shape.reduce(1, *)
            let expected = elements * (dtype == .f32 ? 4 : 2)
            guard expected == offsets[1] - offsets[0] else {
                throw FormatError(path, "tensor '\(name)' has \(offsets[1] - offsets[0]) bytes but \(dtypeName) \(shape) needs \(expected)")
            }
            tensors[name] = SafetensorsTensorInfo(name: name, dtype: dtype, shape: shape, offset: dataStart + offsets[0],
                                                  byteCount: expected)
        }
        let sorted = tensors.values.sorted { $0.offset < $1.offset }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.offset + a.byteCount > b.offset {
            throw FormatError(path, "tensors '\(a.name)' and '\(b.name)' overlap")
        }
        self.tensors = tensors
        self.metadata = metadata
    }

    /// The tensor's bytes, in place.
    public func rawBytes(of info: SafetensorsTensorInfo) throws -> UnsafeRawBufferPointer {
        try file.bytes(at: info.offset, count: info.byteCount, what: "tensor '\(info.name)' data")
    }

    /// The tensor as float32, row-major.
    public func floats(named name: String) throws -> [Float] {
        guard let info = tensors[name] else { throw FormatError(path, "no tensor '\(name)'") }
        let bytes = try rawBytes(of: info)
        let type: GGMLType = info.dtype == .f32 ? .f32 : info.dtype == .f16 ? .f16 : .bf16
        var out = [Float](repeating: 0, count: info.shape.reduce(1, *))
        if !out.isEmpty {
            try out.withUnsafeMutableBufferPointer {
                try GGMLDequantizer.dequantize(type: type, bytes: bytes.baseAddress!, count: $0.count, into: $0.baseAddress!)
            }
        }
        return out
    }
}

/// A Hugging Face model folder's weights: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json`.
public final class SafetensorsFolder: @unchecked Sendable {
    public let path: String
    private let files: [SafetensorsFile]
    private let owner: [String: Int]

    public init(path: String) throws {
        self.path = path
        let url = URL(fileURLWithPath: path)
        let indexURL = url.appendingPathComponent("model.safetensors.index.json")
        var names: [String]
        if let data = FileManager.default.contents(atPath: indexURL.path) {
            guard let json = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any],
                  let map = json["weight_map"] as? [String: String] else {
                throw FormatError(indexURL.path, "not a safetensors index (no weight_map)")
            }
            names = Array(Set(map.values)).sorted()
        } else {
            names = ["model.safetensors"]
        }
        files = try names.map { try SafetensorsFile(path: url.appendingPathComponent($0).path) }
        var owner: [String: Int] = [:]
        for (i, f) in files.enumerated() { for name in f.tensors.keys { owner[name] = i } }
        self.owner = owner
    }

    public var tensorNames: [String] { owner.keys.sorted() }

    public func tensorInfo(named name: String) -> SafetensorsTensorInfo? { owner[name].flatMap { files[$0].tensors[name] } }

    public func floats(named name: String) throws -> [Float] {
        guard let i = owner[name] else { throw FormatError(path, "no tensor '\(name)'") }
        return try files[i].floats(named: name)
    }
}

/// Writes float32 tensors as a safetensors file (to a temporary name, then renamed into place).
public enum SafetensorsWriter {
    public static func write(_ tensors: [(name: String, shape: [Int], values: [Float])], to path: String,
                             metadata: [String: String] = [:]) throws {
        var header: [String: Any] = [:]
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var offset = 0
        for t in tensors {
            guard t.shape.reduce(1, *) == t.values.count else {
                throw FormatError(path, "tensor '\(t.name)' has \(t.values.count) values for shape \(t.shape)")
            }
            header[t.name] = ["dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + t.values.count * 4]] as [String: Any]
            offset += t.values.count * 4
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while json.count % 8 != 0 { json.append(0x20) }
        var data = Data()
        var length = UInt64(json.count).littleEndian
        data.append(Data(bytes: &length, count: 8))
        data.append(json)
        for t in tensors { t.values.withUnsafeBufferPointer { data.append(Data(buffer: $0)) } }
        try AtomicFile.write(data, to: path)
    }
}

/// Writes files so a reader never sees a half-written one under the final name.
enum AtomicFile {
    static func write(_ data: Data, to path: String) throws {
        let temporary = path + ".partial-\(getpid())"
        do {
            try data.write(to: URL(fileURLWithPath: temporary))
            if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
            try FileManager.default.moveItem(atPath: temporary, toPath: path)
        } catch {
            try? FileManager.default.removeItem(atPath: temporary)
            throw FormatError(path, "cannot write (\(error.localizedDescription))")
        }
    }
}
