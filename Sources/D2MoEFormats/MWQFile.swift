import Foundation
import D2MoEKernels

/// The `.mwq` container (DESIGN §3.2 layout, issue 5), one file:
///
/// - bytes 0..<8: magic `D2MWQ\0\0\0`; 8..<12: format version (UInt32 LE, `MWQFile.version`); 12..<16: header
///   length H (UInt32 LE); 16..<16+H: the header, UTF-8 JSON (`MWQHeader`);
/// - at `header.residentOffset` (4 KiB aligned): the resident tensors, each at its own offset
///   (64-byte aligned) as float16/bfloat16/float32/Q8_0, or as packed MWQ base planes ("mwqN"),
///   CRC-32 of the whole section in the header;
/// - then one record per (layer, expert), each 4 KiB aligned: level 1 of every matrix of the
///   expert (in the record's matrix order), then level 2 of every matrix, and so on. Level k is
///   a byte prefix of the record and going from level j to k is one contiguous range. Each
///   level's bytes carry their own CRC-32.
///
/// With `quantization.nested == false` (the matryoshka-free baseline of DESIGN §3.6) a record's
/// levels are instead independent copies: level k holds every matrix as a `bits[k]`-bit base
/// alone, and computing at level k reads that level only.
public struct MWQHeader: Codable, Sendable {
    public var format = "d2moe-mwq"
    public var version = MWQFile.version
    /// Hugging Face `model_type` and the config the model is built from (config.json naming).
    public var modelType: String
    public var config: JSONValue
    /// The tokenizer: `{"kind": "gguf", "metadata": {tokenizer.* keys}}` or
    /// `{"kind": "huggingface", "files": {name: text}}`.
    public var tokenizer: JSONValue
    public var quantization: Quantization
    public var resident: [ResidentTensor]
    public var residentOffset: Int
    public var residentBytes: Int
    public var residentCRC32: UInt32
    public var experts: [ExpertRecord]
    /// The trained bit-width routers (DESIGN §3.1), nil in files written before `train-router`
    /// (or never trained): the key is absent and such files load as before.
    public var routers: RouterSection? = nil

    public struct Quantization: Codable, Sendable {
        /// "v1", "v2", "rtn4", …
        public var scheme: String
        /// Bits served at each level, e.g. [2, 3, 4].
        public var bits: [Int]
        public var group: Int
        /// "minmax" or "calibrated".
        public var scales: String
        /// Element type of resident matrices: "f16", "bf16", "f32" or "q8_0"; "q4" stores projections
        /// as "mwq4" and the other matrices as "q8_0".
        public var resident: String
        /// False when the levels are separate copies rather than prefixes; absent (nil) means
        /// nested, as in files written before the field existed.
        public var nested: Bool?
        public init(scheme: String, bits: [Int], group: Int, scales: String, resident: String, nested: Bool = true) {
            self.scheme = scheme; self.bits = bits; self.group = group; self.scales = scales; self.resident = resident
            self.nested = nested ? nil : false
        }

        public var isNested: Bool { nested ?? true }

        /// Bytes of level `k` (0-based) of one [rows × cols] matrix on disk.
        public func levelByteCount(_ k: Int, rows: Int, cols: Int) -> Int {
            if !isNested { return MWQMatrix.baseByteCount(rows: rows, cols: cols, group: group, baseBits: bits[k]) }
            return k == 0 ? MWQMatrix.baseByteCount(rows: rows, cols: cols, group: group, baseBits: bits[0])
                : MWQMatrix.signByteCount(rows: rows, cols: cols, group: group)
        }

        /// The 1-based levels whose bytes computing at `level` reads: all up to it when nested,
        /// the level's own copy otherwise.
        public func levelsRead(at level: Int) -> ClosedRange<Int> { isNested ? 1...level : level...level }

        /// Base bits of the matrix computed at `level` (1-based).
        public func baseBits(at level: Int) -> Int { isNested ? bits[0] : bits[level - 1] }
    }

    public struct ResidentTensor: Codable, Sendable {
        public var name: String
        public var shape: [Int]
        /// An `ElementType` name ("f32", "f16", "bf16" or "q8_0"), or "mwqN" for N in 1…8: a
        /// [rows, cols] matrix as level 1 of an MWQ matrix with an N-bit base in groups of `group`
        /// columns, in the tiled layout of `MWQMatrixView` (N + 32/group bits per weight for rows a
        /// multiple of 32), which the kernels read in place.
        public var dtype: String
        /// From the start of the file.
        public var offset: Int
        public var bytes: Int
        /// Columns per group of an "mwqN" tensor; absent for element types.
        public var group: Int? = nil

        /// N of an "mwqN" tensor; nil for element types.
        public var mwqBaseBits: Int? {
            guard dtype.hasPrefix("mwq"), let n = Int(dtype.dropFirst(3)), (1...8).contains(n) else { return nil }
            return n
        }
    }

    public struct ExpertRecord: Codable, Sendable {
        public var layer: Int
        public var expert: Int
        /// From the start of the file.
        public var offset: Int
        /// Bytes of each level (all matrices); level k ends at offset + Σ levelBytes[0..<k].
        public var levelBytes: [Int]
        public var levelCRC32: [UInt32]
        public var matrices: [Matrix]

        public struct Matrix: Codable, Sendable {
            /// The weight's checkpoint name, e.g. model.layers.3.mlp.gate_proj.weight.
            public var name: String
            public var rows: Int
            public var cols: Int
        }

        /// Bytes from the record start to the end of level `level` (1-based).
        public func prefixBytes(level: Int) -> Int { levelBytes.prefix(level).reduce(0, +) }
    }
}

/// A JSON value kept as-is inside the header (model config, tokenizer data).
public indirect enum JSONValue: Codable, Sendable, Equatable {
    case null, bool(Bool), int(Int), double(Double), string(String), array([JSONValue]), object([String: JSONValue])

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let i = try? c.decode(Int.self) { self = .int(i) }
        else if let d = try? c.decode(Double.self) { self = .double(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .int(let i): try c.encode(i)
        case .double(let d): try c.encode(d)
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }

    /// Plain Swift values (Int, Double, Bool, String, arrays, dictionaries).
    public var plain: Any {
        switch self {
        case .null: return NSNull()
        case .bool(let b): return b
        case .int(let i): return i
        case .double(let d): return d
        case .string(let s): return s
        case .array(let a): return a.map(\.plain)
        case .object(let o): return o.mapValues(\.plain)
        }
    }

    public subscript(key: String) -> JSONValue? { if case .object(let o) = self { return o[key] }; return nil }
}

/// Writes a `.mwq` file atomically (a temporary file renamed into place).
public struct MWQWriter {
    public var header: MWQHeader
    private var residentData: [(name: String, shape: [Int], dtype: String, group: Int?, bytes: [UInt8])] = []
    /// Each record's matrices' names and shapes, its levels' sizes and CRC-32s, and its level
    /// bytes: in memory, or at `spilled` in the spill file.
    private var records: [Record] = []
    private let spill: Spill?

    private struct Record {
        var layer: Int
        var expert: Int
        var matrices: [MWQHeader.ExpertRecord.Matrix]
        var levelBytes: [Int]
        var levelCRC32: [UInt32]
        var levels: [[UInt8]]
        var spilled: Int?
    }

    /// `spillDirectory`: keep expert records in an unnamed file there instead of in memory until
    /// `write(to:)` (a converted OLMoE-1B-7B held 3.4 GiB of records); put it on the output's
    /// file system, not a RAM-backed /tmp.
    public init(modelType: String, config: JSONValue, tokenizer: JSONValue, quantization: MWQHeader.Quantization,
                spillDirectory: String? = nil) throws {
        header = MWQHeader(modelType: modelType, config: config, tokenizer: tokenizer, quantization: quantization,
                           resident: [], residentOffset: 0, residentBytes: 0, residentCRC32: 0, experts: [])
        spill = try spillDirectory.map { try Spill(directory: $0) }
    }

    /// An unlinked temporary file: its space goes back to the file system when the writer does,
    /// whatever happens to the process.
    private final class Spill {
        let fd: Int32
        private(set) var size = 0

        init(directory: String) throws {
            let path = (directory as NSString).appendingPathComponent(".d2moe-records-\(getpid())-\(UUID().uuidString)")
            fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0o600)
            guard fd >= 0 else { throw FormatError(path, "cannot create a spill file (\(String(cString: strerror(errno))))") }
            unlink(path)
        }

        deinit { close(fd) }

        /// Appends `bytes`; returns their offset.
        func append(_ bytes: [UInt8]) throws -> Int {
            let at = size
            try bytes.withUnsafeBytes { b in
                var done = 0
                while done < b.count {
                    let n = pwrite(fd, b.baseAddress! + done, b.count - done, off_t(at + done))
                    guard n > 0 else { throw FormatError("MWQ", "cannot write the spill file (\(String(cString: strerror(errno))))") }
                    done += n
                }
            }
            size += bytes.count
            return at
        }

        func read(at offset: Int, count: Int) throws -> [UInt8] {
            var out = [UInt8](repeating: 0, count: count)
            try out.withUnsafeMutableBytes { b in
                var done = 0
                while done < count {
                    let n = pread(fd, b.baseAddress! + done, count - done, off_t(offset + done))
                    guard n > 0 else { throw FormatError("MWQ", "cannot read the spill file back (\(String(cString: strerror(errno))))") }
                    done += n
                }
            }
            return out
        }
    }

    private mutating func addRecord(layer: Int, expert: Int, matrices: [MWQHeader.ExpertRecord.Matrix], levels: [[UInt8]]) throws {
        var r = Record(layer: layer, expert: expert, matrices: matrices, levelBytes: levels.map(\.count),
                       levelCRC32: levels.map { CRC32.checksum($0) }, levels: levels, spilled: nil)
        if let spill {
            r.spilled = try spill.append(Array(levels.joined()))
            r.levels = []
        }
        records.append(r)
    }

    /// A resident tensor from float32 values, stored as `dtype` (an `ElementType` name: "f32",
    /// "f16", "bf16", or "q8_0" for tensors whose last dimension is a multiple of 32), row-major
    /// with the last dimension as rows.
    public mutating func addResident(_ name: String, shape: [Int], values: [Float], dtype: String) throws {
        guard let type = ElementType(rawValue: dtype) else {
            throw FormatError("MWQ", "resident type '\(dtype)' is not supported (\(ElementType.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        let cols = shape.last ?? 1
        guard values.count == shape.reduce(1, *), cols > 0, type.holds(cols: cols) else {
            throw FormatError("MWQ", "resident tensor '\(name)' of shape \(shape) cannot be stored as \(dtype)")
        }
        let m = values.withUnsafeBufferPointer { DenseMatrix.quantized(rows: values.count / cols, cols: cols, values: $0, type: type) }
        residentData.append((name, shape, dtype, nil, Array(UnsafeRawBufferPointer(start: m.base, count: m.byteCount))))
    }

    /// A resident matrix stored packed ("mwqN"): level 1 of `matrix`, whose other levels are dropped.
    public mutating func addResident(_ name: String, matrix: MWQMatrix) {
        residentData.append((name, [matrix.rows, matrix.cols], "mwq\(matrix.baseBits)", matrix.group, matrix.levelBytes(0)))
    }

    /// One (layer, expert) record; every matrix must have the same levels.
    public mutating func addExpert(layer: Int, expert: Int, matrices: [(name: String, matrix: MWQMatrix)]) throws {
        guard let levels = matrices.first?.matrix.levels.count, matrices.allSatisfy({ $0.matrix.levels.count == levels }) else {
            throw FormatError("MWQ", "expert (\(layer), \(expert)) has no matrices or matrices with different level counts")
        }
        guard header.quantization.isNested, levels == header.quantization.bits.count else {
            throw FormatError("MWQ", "expert (\(layer), \(expert)) has \(levels) nested levels; the file's quantization wants \(header.quantization.bits.count)\(header.quantization.isNested ? "" : " separate copies (addExpertCopies)")")
        }
        let stored = (0..<levels).map { k in matrices.flatMap { $0.matrix.levelBytes(k) } }
        try addRecord(layer: layer, expert: expert, matrices: matrices.map { .init(name: $0.name, rows: $0.matrix.rows, cols: $0.matrix.cols) }, levels: stored)
    }

    /// One (layer, expert) record of separate copies (quantization `nested: false`): for each
    /// matrix, one single-level matrix per entry of `quantization.bits`, at those base bits.
    public mutating func addExpertCopies(layer: Int, expert: Int, matrices: [(name: String, copies: [MWQMatrix])]) throws {
        let q = header.quantization
        guard !q.isNested, !matrices.isEmpty else { throw FormatError("MWQ", "separate copies need a quantization with nested: false") }
        for (name, copies) in matrices {
            guard copies.count == q.bits.count, zip(copies, q.bits).allSatisfy({ $0.levels.count == 1 && $0.baseBits == $1 }),
                  copies.allSatisfy({ $0.rows == copies[0].rows && $0.cols == copies[0].cols }) else {
                throw FormatError("MWQ", "'\(name)' needs one single-level copy at each of \(q.bits) bits, of one shape")
            }
        }
        let stored = q.bits.indices.map { k in matrices.flatMap { $0.copies[k].levelBytes(0) } }
        try addRecord(layer: layer, expert: expert, matrices: matrices.map { .init(name: $0.name, rows: $0.copies[0].rows, cols: $0.copies[0].cols) }, levels: stored)
    }

    public func write(to path: String) throws {
        // Lay out: resident section after a header area, records after it, each aligned.
        func align(_ x: Int, _ a: Int) -> Int { (x + a - 1) / a * a }
        var header = self.header
        var resident: [MWQHeader.ResidentTensor] = []
        var residentBlob = [UInt8]()
        for t in residentData {
            residentBlob += [UInt8](repeating: 0, count: align(residentBlob.count, 64) - residentBlob.count)
            resident.append(.init(name: t.name, shape: t.shape, dtype: t.dtype, offset: residentBlob.count, bytes: t.bytes.count,
                                  group: t.group))
            residentBlob += t.bytes
        }
        var experts: [MWQHeader.ExpertRecord] = []
        for r in records {
            experts.append(.init(layer: r.layer, expert: r.expert, offset: 0, levelBytes: r.levelBytes,
                                 levelCRC32: r.levelCRC32, matrices: r.matrices))
        }
        header.residentBytes = residentBlob.count
        header.residentCRC32 = CRC32.checksum(residentBlob)
        // The header's own size depends on the offsets it records: iterate until it is stable.
        var headerBytes = [UInt8]()
        var residentOffset = 4096
        for _ in 0..<8 {
            header.residentOffset = residentOffset
            header.resident = resident.map { var t = $0; t.offset += residentOffset; return t }
            var at = align(residentOffset + residentBlob.count, 4096)
            header.experts = experts.map { e in
                var e = e; e.offset = at; at = align(at + e.levelBytes.reduce(0, +), 4096); return e
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            headerBytes = Array(try encoder.encode(header))
            let needed = align(16 + headerBytes.count, 4096)
            if needed == residentOffset { break }
            residentOffset = needed
        }
        let temporary = path + ".tmp-\(getpid())"
        FileManager.default.createFile(atPath: temporary, contents: nil)
        guard let out = FileHandle(forWritingAtPath: temporary) else { throw FormatError(path, "cannot create \(temporary)") }
        var ok = false
        defer { if !ok { try? FileManager.default.removeItem(atPath: temporary) } }
        var prefix = Array("D2MWQ\0\0\0".utf8)
        withUnsafeBytes(of: UInt32(MWQFile.version).littleEndian) { prefix += $0 }
        withUnsafeBytes(of: UInt32(headerBytes.count).littleEndian) { prefix += $0 }
        var written = 0
        func put(_ bytes: [UInt8]) throws { try out.write(contentsOf: bytes); written += bytes.count }
        func pad(to offset: Int) throws { if offset > written { try put([UInt8](repeating: 0, count: offset - written)) } }
        try put(prefix + headerBytes)
        try pad(to: header.residentOffset)
        try put(residentBlob)
        // Level by level from the records: a joined copy of every record doubled the writer's memory.
        for (e, r) in zip(header.experts, records) {
            try pad(to: e.offset)
            if let spilled = r.spilled, let spill {
                var at = spilled
                for count in r.levelBytes { try put(try spill.read(at: at, count: count)); at += count }
            } else {
                for level in r.levels { try put(level) }
            }
        }
        try pad(to: align(written, 4096))
        try out.synchronize()
        try out.close()
        guard rename(temporary, path) == 0 else { throw FormatError(path, "cannot rename \(temporary) into place") }
        ok = true
    }
}

/// A `.mwq` file opened for reading: header parsed and checked, resident section verified;
/// expert levels are read on demand (by pointer into the mapping, or by positioned reads).
public final class MWQFile: @unchecked Sendable {
    /// The format version this build writes and reads: 2 is the tiled level layout of
    /// `MWQMatrixView` (1, row-major planes, is no longer read).
    public static let version = 2

    public let path: String
    public let header: MWQHeader
    public let file: MappedFile
    private let residentIndex: [String: Int]
    private let expertIndex: [String: (record: Int, matrix: Int)]

    public init(path: String) throws {
        self.path = path
        file = try MappedFile(path: path)
        let head = try file.bytes(at: 0, count: 16, what: "MWQ file header")
        guard Array(head[0..<8]) == Array("D2MWQ\0\0\0".utf8) else { throw FormatError(path, "not an MWQ file (bad magic)") }
        let version = UInt32(littleEndian: head.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        guard version == MWQFile.version else {
            throw FormatError(path, "MWQ version \(version) is not supported (this build reads version \(MWQFile.version)\(version < MWQFile.version ? "; quantize the model again" : ""))")
        }
        let length = Int(UInt32(littleEndian: head.loadUnaligned(fromByteOffset: 12, as: UInt32.self)))
        let json = try file.bytes(at: 16, count: length, what: "MWQ header JSON")
        do {
            header = try JSONDecoder().decode(MWQHeader.self, from: Data(json))
        } catch {
            throw FormatError(path, "the MWQ header is not valid JSON of the expected shape (\(error))")
        }
        guard header.format == "d2moe-mwq" else { throw FormatError(path, "header format is '\(header.format)', not d2moe-mwq") }
        let resident = try file.bytes(at: header.residentOffset, count: header.residentBytes, what: "resident section")
        guard CRC32.checksum(resident) == header.residentCRC32 else {
            throw FormatError(path, "resident section checksum mismatch (the file is corrupt)")
        }
        var r: [String: Int] = [:]
        for (i, t) in header.resident.enumerated() {
            let cols = t.shape.last ?? 1
            let expected: Int?
            if let b = t.mwqBaseBits {
                guard t.shape.count == 2, t.shape[0] > 0, let g = t.group, MWQMatrixView.validGroup(g), cols % g == 0, t.offset % 4 == 0 else {
                    throw FormatError(path, "resident tensor '\(t.name)' (\(t.dtype)) needs two dimensions and a group dividing its \(cols) columns")
                }
                expected = MWQMatrix.baseByteCount(rows: t.shape[0], cols: cols, group: g, baseBits: b)
            } else {
                expected = ElementType(rawValue: t.dtype).flatMap { type in
                    cols > 0 && type.holds(cols: cols) ? t.shape.reduce(1, *) / cols * type.rowBytes(cols: cols) : nil
                }
            }
            guard let expected, t.bytes == expected,
                  t.offset >= header.residentOffset, t.offset + t.bytes <= header.residentOffset + header.residentBytes else {
                throw FormatError(path, "resident tensor '\(t.name)' has an inconsistent type, size or offset")
            }
            r[t.name] = i
        }
        residentIndex = r
        var x: [String: (Int, Int)] = [:]
        let q = header.quantization
        for (i, e) in header.experts.enumerated() {
            guard e.levelBytes.count == q.bits.count, e.levelCRC32.count == q.bits.count else {
                throw FormatError(path, "expert (\(e.layer), \(e.expert)) has \(e.levelBytes.count) levels, the file says \(q.bits.count)")
            }
            var expected = [Int](repeating: 0, count: q.bits.count)
            for m in e.matrices {
                guard m.rows > 0, m.cols > 0, m.cols % q.group == 0 else { throw FormatError(path, "matrix '\(m.name)' has a bad shape") }
                for k in 0..<q.bits.count { expected[k] += q.levelByteCount(k, rows: m.rows, cols: m.cols) }
                x[m.name] = (i, x.count)
            }
            guard expected == e.levelBytes else { throw FormatError(path, "expert (\(e.layer), \(e.expert)) level sizes do not match its matrices") }
            guard e.offset % 4096 == 0, e.offset >= 0, e.offset + e.levelBytes.reduce(0, +) <= file.size else {
                throw FormatError(path, "expert (\(e.layer), \(e.expert)) record [offset \(e.offset)] extends past the end of the file (\(file.size) bytes)")
            }
        }
        expertIndex = x.mapValues { ($0.0, $0.1) }
    }

    public func residentTensor(_ name: String) -> MWQHeader.ResidentTensor? { residentIndex[name].map { header.resident[$0] } }

    /// The expert record holding matrix `name`, if it is quantized.
    public func expertRecord(containing name: String) -> MWQHeader.ExpertRecord? {
        expertIndex[name].map { header.experts[$0.record] }
    }

    /// A resident "mwqN" matrix as the kernels read it, in place; nil for other tensors.
    public func packedResident(_ name: String) throws -> MWQMatrixView? {
        guard let t = residentTensor(name), let b = t.mwqBaseBits, let g = t.group else { return nil }
        let bytes = try file.bytes(at: t.offset, count: t.bytes, what: name)
        return MWQMatrixView(rows: t.shape[0], cols: t.shape[1], group: g, baseBits: b, levels: [bytes.baseAddress!])
    }

    /// A resident tensor of a plain element type as a [rows, cols] matrix read in place (the last
    /// dimension is cols); nil for "mwqN" matrices.
    public func residentMatrix(_ name: String) throws -> DenseMatrix? {
        guard let t = residentTensor(name) else { throw FormatError(path, "no resident tensor '\(name)'") }
        guard t.mwqBaseBits == nil else { return nil }
        let b = try file.bytes(at: t.offset, count: t.bytes, what: name)
        let cols = t.shape.last ?? 1, rows = t.shape.reduce(1, *) / cols
        guard let type = ElementType(rawValue: t.dtype) else { throw FormatError(path, "resident tensor '\(name)' has type \(t.dtype)") }
        return DenseMatrix(rows: rows, cols: cols, elementType: type, base: b.baseAddress!, owner: file)
    }

    /// Drops the mapped pages of rows `rows` of the resident matrix `name` (read again from the
    /// file if touched), after a load has converted them.
    public func releaseResidentRows(_ name: String, _ rows: Range<Int>) {
        guard let t = residentTensor(name), let type = ElementType(rawValue: t.dtype) else { return }
        let rowBytes = type.rowBytes(cols: t.shape.last ?? 1)
        file.releaseResidentPages(at: t.offset + rows.lowerBound * rowBytes, count: rows.count * rowBytes)
    }

    /// A resident tensor as float32 (an "mwqN" matrix dequantized).
    public func floats(_ name: String) throws -> [Float] {
        guard let t = residentTensor(name) else { throw FormatError(path, "no resident tensor '\(name)'") }
        let b = try file.bytes(at: t.offset, count: t.bytes, what: name)
        let cols = t.shape.last ?? 1, rows = t.shape.reduce(1, *) / cols
        if let bits = t.mwqBaseBits, let g = t.group {
            let level = try MWQMatrix.level(0, from: b, rows: rows, cols: cols, group: g, baseBits: bits)
            return MWQMatrix(rows: rows, cols: cols, group: g, baseBits: bits, levels: [level]).dequantize(level: 1)
        }
        let m = try residentMatrix(name)!
        var out = [Float](repeating: 0, count: rows * cols)
        out.withUnsafeMutableBufferPointer { o in for r in 0..<rows { m.row(r, into: o.baseAddress! + r * cols) } }
        return out
    }

    /// The bytes of levels 1...`level` of a record, the levels computing at `level` reads
    /// checked against their CRC-32s.
    public func verifiedPrefix(_ e: MWQHeader.ExpertRecord, level: Int) throws -> UnsafeRawBufferPointer {
        let bytes = try file.bytes(at: e.offset, count: e.prefixBytes(level: level), what: "expert (\(e.layer), \(e.expert))")
        for k in header.quantization.levelsRead(at: level).map({ $0 - 1 }) {
            let at = e.prefixBytes(level: k)
            let part = UnsafeRawBufferPointer(rebasing: bytes[at..<(at + e.levelBytes[k])])
            guard CRC32.checksum(part) == e.levelCRC32[k] else {
                throw FormatError(path, "expert (\(e.layer), \(e.expert)) level \(k + 1) checksum mismatch (the file is corrupt)")
            }
        }
        return bytes
    }

    /// Where matrix `name`'s bytes of each level lie within its record (one range per level of the
    /// file), nil when no record holds it.
    public func levelRanges(of name: String) -> (record: MWQHeader.ExpertRecord, ranges: [Range<Int>])? {
        guard let (ri, _) = expertIndex[name] else { return nil }
        let e = header.experts[ri], q = header.quantization
        var ranges: [Range<Int>] = []
        var levelStart = 0
        for k in 0..<q.bits.count {
            var at = levelStart
            for m in e.matrices {
                let n = q.levelByteCount(k, rows: m.rows, cols: m.cols)
                if m.name == name { ranges.append(at..<(at + n)) }
                at += n
            }
            levelStart += e.levelBytes[k]
        }
        return (e, ranges)
    }

    /// Matrix `name` as computed at `level`, parsed from the record (checksums verified): levels
    /// 1...`level` when nested, else the level's copy alone (a one-level matrix).
    public func matrix(_ name: String, level: Int) throws -> MWQMatrix {
        guard let (e, ranges) = levelRanges(of: name) else { throw FormatError(path, "no quantized matrix '\(name)'") }
        let q = header.quantization
        guard (1...q.bits.count).contains(level) else { throw FormatError(path, "level \(level) is outside 1...\(q.bits.count)") }
        let bytes = try verifiedPrefix(e, level: level)
        let m = e.matrices.first { $0.name == name }!
        let baseBits = q.baseBits(at: level)
        let levels = try q.levelsRead(at: level).enumerated().map { i, k in
            try MWQMatrix.level(i, from: UnsafeRawBufferPointer(rebasing: bytes[ranges[k - 1]]),
                                rows: m.rows, cols: m.cols, group: q.group, baseBits: baseBits)
        }
        return MWQMatrix(rows: m.rows, cols: m.cols, group: q.group, baseBits: baseBits, levels: levels)
    }
}

/// CRC-32 (IEEE 802.3, as zlib), table-driven.
public enum CRC32 {
    private static let table: [UInt32] = (0..<256).map { i in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 == 1 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    /// Slicing by 8 in the C target (about 8× the byte-wise loop), so a piece read from the SSD
    /// is verified faster than it arrives.
    public static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 { FastCRC32.checksum(bytes) }

    /// The plain byte-at-a-time version the fast one is tested against.
    public static func referenceChecksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        table.withUnsafeBufferPointer { t in
            for b in bytes { c = t[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        }
        return c ^ 0xFFFF_FFFF
    }

    public static func checksum(_ bytes: [UInt8]) -> UInt32 { bytes.withUnsafeBytes { checksum($0) } }
}
