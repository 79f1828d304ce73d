import Foundation
import D2MoEKernels

/// Writes a `.mwq` container (the format `MWQFile` reads, documented on `MWQHeader`) without
/// holding the model in memory: what `MWQWriter` does with a model already in memory, for models
/// larger than it.
///
/// The caller declares everything up front — the resident tensors (name, shape, element type)
/// and the expert records (layer, expert, matrices) — so every size and offset follows from the
/// shapes (`MWQMatrix.baseByteCount` / `signByteCount`, `ElementType.rowBytes`) and is known
/// before a byte is written (`layout`, also usable without writing). `write(to:…)` then asks for
/// the bytes piece by piece, in file order:
///
/// - each resident tensor in chunks of whole rows (`ResidentFill`: tensor index, row range, a
///   buffer of exactly those rows in the tensor's element type; a chunk is at most
///   `chunkBytes`, or one row if a row is larger);
/// - each record level by level and, within a level, matrix by matrix (`LevelFill`: record index,
///   0-based level, matrix index, a buffer of exactly that matrix's bytes of that level in the
///   tiled layout of `MWQMatrixView`). One record's buffer is the most that is ever held.
///
/// CRC-32s (the resident section's, each level's) are computed as the bytes go out. The header
/// area is reserved first, sized for the header with every CRC at its widest (10 digits); at the
/// end the real header is written there, its JSON padded with trailing spaces to the reserved
/// length, which is what the length field says (JSON allows trailing whitespace). Bytes go to
/// `path + ".tmp-<pid>"` with positioned writes (padding between aligned sections is left as
/// holes, which read as zeros), are `fsync`ed, and the file is renamed into place only when all
/// of it was written: on any error (a fill that throws, a failed write) the temporary file is
/// removed and nothing appears under `path`.
public struct MWQStreamWriter {
    /// A resident tensor to be written: shape outermost first, `dtype` an `ElementType` name.
    public struct ResidentDeclaration: Sendable, Equatable {
        public var name: String
        public var shape: [Int]
        public var dtype: String
        public init(name: String, shape: [Int], dtype: String) { self.name = name; self.shape = shape; self.dtype = dtype }
        /// Rows (every dimension but the last) and columns (the last).
        public var rows: Int { shape.dropLast().reduce(1, *) }
        public var cols: Int { shape.last ?? 1 }
    }

    /// An expert record to be written: its matrices, in the order their bytes appear in each level.
    public struct RecordDeclaration: Sendable, Equatable {
        public var layer: Int
        public var expert: Int
        public var matrices: [Matrix]
        public init(layer: Int, expert: Int, matrices: [Matrix]) {
            self.layer = layer; self.expert = expert; self.matrices = matrices
        }

        /// One weight matrix of the record under its checkpoint name, [rows, cols].
        public struct Matrix: Sendable, Equatable {
            public var name: String
            public var rows: Int
            public var cols: Int
            public init(name: String, rows: Int, cols: Int) { self.name = name; self.rows = rows; self.cols = cols }
        }
    }

    /// Where everything goes, computed from the declarations alone.
    public struct Layout: Sendable {
        /// The header with every offset and size filled in and every CRC-32 at `UInt32.max`.
        public var header: MWQHeader
        /// Length of the header JSON as reserved (and as the length field will say).
        public var headerJSONBytes: Int
        /// Size of the finished file (a multiple of 4 KiB).
        public var fileBytes: Int
        /// Bytes of each record's levels, `[record][level]`.
        public var levelBytes: [[Int]] { header.experts.map(\.levelBytes) }
        /// Bytes of every record at each level.
        public var expertBytesPerLevel: [Int] {
            (0..<header.quantization.bits.count).map { k in header.experts.reduce(0) { $0 + $1.levelBytes[k] } }
        }
        /// The largest record: the buffer `write` holds.
        public var largestRecordBytes: Int { header.experts.map { $0.levelBytes.reduce(0, +) }.max() ?? 0 }
    }

    public typealias ResidentFill = (_ tensor: Int, _ rows: Range<Int>, _ buffer: UnsafeMutableRawBufferPointer) throws -> Void
    public typealias LevelFill = (_ record: Int, _ level: Int, _ matrix: Int, _ buffer: UnsafeMutableRawBufferPointer) throws -> Void

    public let layout: Layout
    public let resident: [ResidentDeclaration]
    public let records: [RecordDeclaration]
    /// Largest resident chunk handed to a `ResidentFill`.
    public var chunkBytes = 16 << 20

    /// Checks the declarations and lays the file out. Every record must have the file's levels
    /// (`quantization.bits`) and matrices whose columns are a multiple of `quantization.group`.
    public init(modelType: String, config: JSONValue, tokenizer: JSONValue, quantization: MWQHeader.Quantization,
                resident: [ResidentDeclaration], records: [RecordDeclaration]) throws {
        let q = quantization
        guard MWQMatrixView.validGroup(q.group), !q.bits.isEmpty, (1...8).contains(q.bits[0]),
              q.isNested || q.bits.allSatisfy({ (1...8).contains($0) }) else {
            throw FormatError("MWQ", "group \(q.group) with bits \(q.bits) is not a valid MWQ quantization")
        }
        var names = Set<String>()
        for t in resident {
            guard let type = ElementType(rawValue: t.dtype) else {
                throw FormatError("MWQ", "resident type '\(t.dtype)' is not supported (\(ElementType.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            guard !t.shape.isEmpty, t.shape.allSatisfy({ $0 > 0 }), type.holds(cols: t.cols) else {
                throw FormatError("MWQ", "resident tensor '\(t.name)' of shape \(t.shape) cannot be stored as \(t.dtype)")
            }
            guard names.insert(t.name).inserted else { throw FormatError("MWQ", "tensor '\(t.name)' is declared twice") }
        }
        for r in records {
            guard !r.matrices.isEmpty else { throw FormatError("MWQ", "expert (\(r.layer), \(r.expert)) has no matrices") }
            for m in r.matrices {
                guard m.rows > 0, m.cols > 0, m.cols % q.group == 0 else {
                    throw FormatError("MWQ", "matrix '\(m.name)' [\(m.rows), \(m.cols)] does not fit group \(q.group)")
                }
                guard names.insert(m.name).inserted else { throw FormatError("MWQ", "tensor '\(m.name)' is declared twice") }
            }
        }
        self.resident = resident
        self.records = records

        func align(_ x: Int, _ a: Int) -> Int { (x + a - 1) / a * a }
        var header = MWQHeader(modelType: modelType, config: config, tokenizer: tokenizer, quantization: q,
                               resident: [], residentOffset: 0, residentBytes: 0, residentCRC32: .max, experts: [])
        // Offsets within the resident section, 64-byte aligned as MWQWriter lays them out.
        var relative: [Int] = [], at = 0
        for t in resident {
            at = align(at, 64)
            relative.append(at)
            at += t.rows * ElementType(rawValue: t.dtype)!.rowBytes(cols: t.cols)
        }
        header.residentBytes = at
        let levelBytes = records.map { r in
            (0..<q.bits.count).map { k in
                r.matrices.reduce(0) { $0 + q.levelByteCount(k, rows: $1.rows, cols: $1.cols) }
            }
        }
        // The header's size depends on the offsets it records: iterate until it is stable.
        var residentOffset = 4096, json = [UInt8](), end = 0
        for _ in 0..<16 {
            header.residentOffset = residentOffset
            header.resident = zip(resident, relative).map { t, offset in
                .init(name: t.name, shape: t.shape, dtype: t.dtype, offset: residentOffset + offset,
                      bytes: t.rows * ElementType(rawValue: t.dtype)!.rowBytes(cols: t.cols))
            }
            var at = align(residentOffset + header.residentBytes, 4096)
            header.experts = zip(records, levelBytes).map { r, sizes in
                defer { at = align(at + sizes.reduce(0, +), 4096) }
                return .init(layer: r.layer, expert: r.expert, offset: at, levelBytes: sizes,
                             levelCRC32: Array(repeating: .max, count: sizes.count),
                             matrices: r.matrices.map { .init(name: $0.name, rows: $0.rows, cols: $0.cols) })
            }
            end = at
            json = try Self.encode(header)
            let needed = align(16 + json.count, 4096)
            if needed == residentOffset { break }
            residentOffset = needed
        }
        guard align(16 + json.count, 4096) == residentOffset else { throw FormatError("MWQ", "the header layout did not settle") }
        layout = Layout(header: header, headerJSONBytes: json.count, fileBytes: max(end, align(residentOffset + header.residentBytes, 4096)))
    }

    static func encode(_ header: MWQHeader) throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return Array(try encoder.encode(header))
    }

    /// Writes the file (see the type's comment). `progress` gets bytes written so far and the
    /// total, after each resident chunk and each record. Returns the header as written.
    @discardableResult
    public func write(to path: String, resident fillResident: ResidentFill, level fillLevel: LevelFill,
                      progress: (_ written: Int, _ total: Int) -> Void = { _, _ in }) throws -> MWQHeader {
        var header = layout.header
        let temporary = path + ".tmp-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw FormatError(path, "cannot create \(temporary): \(String(cString: strerror(errno)))") }
        var closed = false, done = false
        defer {
            if !closed { close(fd) }
            if !done { unlink(temporary) }
        }
        func put(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws {
            var sent = 0
            while sent < bytes.count {
                let n = pwrite(fd, bytes.baseAddress! + sent, bytes.count - sent, off_t(offset + sent))
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw FormatError(path, "write of \(temporary) failed at offset \(offset + sent): \(String(cString: strerror(errno)))") }
                sent += n
            }
        }
        let total = layout.fileBytes
        var written = 0

        // Resident section: tensors in row chunks; the CRC runs over the alignment padding too.
        var crc = CRC32Stream()
        let largestChunk = resident.map { t in
            let rowBytes = ElementType(rawValue: t.dtype)!.rowBytes(cols: t.cols)
            return max(1, min(t.rows, chunkBytes / max(rowBytes, 1))) * rowBytes
        }.max() ?? 0
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: max(largestChunk, 64), alignment: 64)
        defer { chunk.deallocate() }
        var sectionAt = 0
        for (i, (t, placed)) in zip(resident, header.resident).enumerated() {
            let relative = placed.offset - header.residentOffset
            if relative > sectionAt {
                let pad = UnsafeMutableRawBufferPointer(rebasing: chunk[0..<(relative - sectionAt)])
                pad.initializeMemory(as: UInt8.self, repeating: 0)
                crc.update(UnsafeRawBufferPointer(pad))
            }
            let rowBytes = ElementType(rawValue: t.dtype)!.rowBytes(cols: t.cols)
            let rowsPerChunk = max(1, min(t.rows, chunkBytes / max(rowBytes, 1)))
            for first in stride(from: 0, to: t.rows, by: rowsPerChunk) {
                let rows = first..<min(t.rows, first + rowsPerChunk)
                let buffer = UnsafeMutableRawBufferPointer(rebasing: chunk[0..<(rows.count * rowBytes)])
                buffer.initializeMemory(as: UInt8.self, repeating: 0)
                try fillResident(i, rows, buffer)
                crc.update(UnsafeRawBufferPointer(buffer))
                try put(UnsafeRawBufferPointer(buffer), at: placed.offset + first * rowBytes)
                written += buffer.count
                progress(written, total)
            }
            sectionAt = relative + placed.bytes
        }
        header.residentCRC32 = crc.value

        // Records: one buffer, filled level by level, matrix by matrix, then one write.
        let q = header.quantization
        let record = UnsafeMutableRawBufferPointer.allocate(byteCount: max(layout.largestRecordBytes, 64), alignment: 64)
        defer { record.deallocate() }
        for (ri, r) in records.enumerated() {
            var at = 0
            for k in 0..<q.bits.count {
                let levelStart = at
                for (mi, m) in r.matrices.enumerated() {
                    let n = q.levelByteCount(k, rows: m.rows, cols: m.cols)
                    let buffer = UnsafeMutableRawBufferPointer(rebasing: record[at..<(at + n)])
                    buffer.initializeMemory(as: UInt8.self, repeating: 0)
                    try fillLevel(ri, k, mi, buffer)
                    at += n
                }
                var levelCRC = CRC32Stream()
                levelCRC.update(UnsafeRawBufferPointer(rebasing: record[levelStart..<at]))
                header.experts[ri].levelCRC32[k] = levelCRC.value
            }
            try put(UnsafeRawBufferPointer(rebasing: record[0..<at]), at: header.experts[ri].offset)
            written += at
            progress(written, total)
        }

        // The file's full length (trailing padding is a hole), then the real header.
        guard ftruncate(fd, off_t(total)) == 0 else { throw FormatError(path, "cannot size \(temporary): \(String(cString: strerror(errno)))") }
        var json = try Self.encode(header)
        guard json.count <= layout.headerJSONBytes else {
            throw FormatError(path, "the header grew past its reserved \(layout.headerJSONBytes) bytes")
        }
        json += [UInt8](repeating: UInt8(ascii: " "), count: layout.headerJSONBytes - json.count)
        var prefix = Array("D2MWQ\0\0\0".utf8)
        withUnsafeBytes(of: UInt32(MWQFile.version).littleEndian) { prefix += $0 }
        withUnsafeBytes(of: UInt32(json.count).littleEndian) { prefix += $0 }
        try (prefix + json).withUnsafeBytes { try put($0, at: 0) }
        guard fsync(fd) == 0 else { throw FormatError(path, "fsync of \(temporary) failed: \(String(cString: strerror(errno)))") }
        closed = true
        guard close(fd) == 0 else { throw FormatError(path, "closing \(temporary) failed: \(String(cString: strerror(errno)))") }
        guard rename(temporary, path) == 0 else {
            throw FormatError(path, "cannot rename \(temporary) into place: \(String(cString: strerror(errno)))")
        }
        done = true
        // The rename itself is durable once the folder is synced.
        let folder = open((path as NSString).deletingLastPathComponent.isEmpty ? "." : (path as NSString).deletingLastPathComponent, O_RDONLY)
        if folder >= 0 { _ = fsync(folder); close(folder) }
        progress(total, total)
        return header
    }
}

/// CRC-32 (IEEE 802.3, the same value as `CRC32.checksum`) fed in pieces. Eight bytes a step
/// (slicing-by-8), and large pieces are split across `ComputePool.shared` and the parts' CRCs
/// combined (zlib's crc32_combine), so that checksumming keeps up with writing.
public struct CRC32Stream: Sendable {
    /// The CRC-32 of everything fed so far (0 for nothing).
    public private(set) var value: UInt32 = 0
    /// Bytes fed so far.
    public private(set) var count = 0

    public init() {}

    /// Pieces smaller than this are not split.
    static let splitBytes = 64 << 10

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        let parts = min(ComputePool.shared.threadCount, bytes.count / Self.splitBytes)
        var crc: UInt32
        if parts < 2 {
            crc = Self.checksum(bytes)
        } else {
            let size = (bytes.count + parts - 1) / parts
            let partial = UnsafeMutableBufferPointer<UInt32>.allocate(capacity: parts)
            defer { partial.deallocate() }
            ComputePool.shared.parallelFor(parts) { i in
                let range = (i * size)..<min(bytes.count, (i + 1) * size)
                partial[i] = Self.checksum(UnsafeRawBufferPointer(rebasing: bytes[range]))
            }
            crc = partial[0]
            for i in 1..<parts { crc = Self.combine(crc, partial[i], length: min(bytes.count, (i + 1) * size) - i * size) }
        }
        value = count == 0 ? crc : Self.combine(value, crc, length: bytes.count)
        count += bytes.count
    }

    /// The CRC-32 of one buffer, serially (the C target's sliced loop).
    static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 { FastCRC32.checksum(bytes) }

    /// The CRC-32 of A followed by B from crc(A), crc(B) and B's length (zlib's crc32_combine:
    /// crc(A) moved past `length` zero bytes by repeated squaring of the shift operator).
    static func combine(_ crcA: UInt32, _ crcB: UInt32, length: Int) -> UInt32 {
        guard length > 0 else { return crcA }
        func times(_ m: [UInt32], _ v: UInt32) -> UInt32 {
            var sum: UInt32 = 0, v = v, i = 0
            while v != 0 { if v & 1 != 0 { sum ^= m[i] }; v >>= 1; i += 1 }
            return sum
        }
        func square(_ m: [UInt32]) -> [UInt32] { (0..<32).map { times(m, m[$0]) } }
        // The operator for one zero bit, then two, then four.
        var odd = [UInt32](repeating: 0, count: 32)
        odd[0] = 0xEDB8_8320
        for n in 1..<32 { odd[n] = 1 << (n - 1) }
        var even = square(odd)
        odd = square(even)
        var crc = crcA, len = length
        while true {
            even = square(odd)
            if len & 1 != 0 { crc = times(even, crc) }
            len >>= 1
            if len == 0 { break }
            odd = square(even)
            if len & 1 != 0 { crc = times(odd, crc) }
            len >>= 1
            if len == 0 { break }
        }
        return crc ^ crcB
    }
}
