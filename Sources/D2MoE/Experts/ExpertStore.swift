import Foundation
import D2MoEFormats
import D2MoEKernels

/// One unit of the expert pool: level `level` (1-based) of routed expert `expert` in MoE layer
/// `layer` (the expert backend's numbering: the index among the model's MoE layers).
public struct PieceKey: Hashable, Sendable, CustomStringConvertible {
    public var layer: Int
    public var expert: Int
    public var level: Int

    public init(layer: Int, expert: Int, level: Int) {
        self.layer = layer
        self.expert = expert
        self.level = level
    }

    public var description: String { "(layer \(layer), expert \(expert), level \(level))" }
}

/// The routed experts of an `.mwq` file as pieces on disk, read with positioned reads (never
/// through the file's memory mapping, so the OS page cache does not quietly hold the model).
///
/// With `directIO` the file is opened a second time with `O_DIRECT`: reads then cover the
/// piece's 4 KiB-aligned superset into a 4 KiB-aligned buffer, and the piece starts at an offset
/// inside it. Where the file system refuses `O_DIRECT` (tmpfs, some overlays) the store falls
/// back to buffered reads and says so in `directIO`.
final class ExpertStore: @unchecked Sendable {
    /// Where one MoE layer's expert lives in the file, and where each of its matrices starts
    /// inside each level's bytes.
    struct Record {
        /// From the start of the file: offset of level k (0-based) and its length.
        let levelOffsets: [Int]
        let levelBytes: [Int]
        let levelCRC32: [UInt32]
        /// [level][gate, up, down]: byte offset of the matrix inside the level's bytes.
        let matrixOffsets: [[Int]]
    }

    static let alignment = 4096

    let path: String
    let file: MWQFile
    let levels: Int
    let group: Int
    let quantization: MWQHeader.Quantization
    let hidden: Int
    let intermediate: Int
    let expertCount: Int
    /// [moeLayer][expert]
    let records: [[Record]]
    /// True when reads bypass the page cache.
    let directIO: Bool
    private let fd: Int32
    /// Pieces whose checksum passed: each is verified the first time it is read, not every time.
    private var verified = Set<PieceKey>()
    private let verifiedLock = NSLock()

    /// `decoderLayers[m]` is the decoder layer (as the file's records number them) of MoE layer m.
    init(file: MWQFile, decoderLayers: [Int], expertCount: Int, hidden: Int, intermediate: Int, directIO: Bool) throws {
        self.file = file
        path = file.path
        let q = file.header.quantization
        levels = q.bits.count
        group = q.group
        quantization = q
        self.hidden = hidden
        self.intermediate = intermediate
        self.expertCount = expertCount
        var byKey: [Int: [Int: MWQHeader.ExpertRecord]] = [:]
        for e in file.header.experts { byKey[e.layer, default: [:]][e.expert] = e }
        records = try decoderLayers.map { layer in
            try (0..<expertCount).map { expert in
                guard let e = byKey[layer]?[expert] else {
                    throw ModelError("\(file.path): no record for routed expert \(expert) of layer \(layer)")
                }
                return try Self.record(e, file: file, hidden: hidden, intermediate: intermediate)
            }
        }
        var descriptor: Int32 = -1
        if directIO {
            descriptor = open(file.path, O_RDONLY | Self.directFlag)
            // Some file systems accept the flag at open and refuse the first aligned read.
            if descriptor >= 0, !Self.probeDirect(descriptor) { close(descriptor); descriptor = -1 }
        }
        self.directIO = descriptor >= 0
        if descriptor < 0 { descriptor = open(file.path, O_RDONLY) }
        guard descriptor >= 0 else { throw ModelError("\(file.path): cannot open for reading (\(String(cString: strerror(errno))))") }
        fd = descriptor
    }

    deinit { close(fd) }

    /// O_DIRECT, which Swift's Glibc module does not export (it sits behind _GNU_SOURCE).
    private static var directFlag: Int32 {
        #if os(Linux) && (arch(arm64) || arch(arm))
        return 0o200000
        #elseif os(Linux)
        return 0o40000
        #else
        return 0
        #endif
    }

    private static func probeDirect(_ fd: Int32) -> Bool {
        guard let buffer = try? PieceBuffer(byteCount: alignment) else { return false }
        return pread(fd, buffer.base, alignment, 0) >= 0
    }

    /// The record's level offsets and its gate/up/down matrices found by name.
    private static func record(_ e: MWQHeader.ExpertRecord, file: MWQFile, hidden: Int, intermediate: Int) throws -> Record {
        let q = file.header.quantization
        func role(_ name: String) -> Int? {
            let module = name.split(separator: ".").dropLast().last.map(String.init) ?? ""
            switch module {
            case "gate_proj", "w1": return 0
            case "up_proj", "w3": return 1
            case "down_proj", "w2": return 2
            default: return nil
            }
        }
        var offsets = [[Int]](repeating: [0, 0, 0], count: q.bits.count)
        var seen = Set<Int>()
        for k in 0..<q.bits.count {
            var at = 0
            for m in e.matrices {
                guard let r = role(m.name) else { throw ModelError("\(file.path): expert matrix '\(m.name)' is not a gate, up or down projection") }
                let (rows, cols) = r == 2 ? (hidden, intermediate) : (intermediate, hidden)
                guard m.rows == rows, m.cols == cols else {
                    throw ModelError("\(file.path): '\(m.name)' has shape [\(m.rows), \(m.cols)], expected [\(rows), \(cols)]")
                }
                offsets[k][r] = at
                seen.insert(r)
                at += q.levelByteCount(k, rows: m.rows, cols: m.cols)
            }
        }
        guard seen.count == 3 else { throw ModelError("\(file.path): expert (\(e.layer), \(e.expert)) lacks a gate, up or down projection") }
        var levelOffsets: [Int] = [], at = e.offset
        for b in e.levelBytes { levelOffsets.append(at); at += b }
        return Record(levelOffsets: levelOffsets, levelBytes: e.levelBytes, levelCRC32: e.levelCRC32, matrixOffsets: offsets)
    }

    /// The levels (1-based) whose pieces computing at `level` needs: 1...level when nested, the
    /// level's own copy otherwise.
    func levelsRead(at level: Int) -> ClosedRange<Int> { quantization.levelsRead(at: level) }

    /// Bytes a piece occupies in the pool: its read span (aligned under direct I/O) in whole pages,
    /// as its buffer maps them.
    func allocationBytes(_ key: PieceKey) -> Int {
        let r = records[key.layer][key.expert]
        let (start, end) = span(offset: r.levelOffsets[key.level - 1], count: r.levelBytes[key.level - 1])
        return Pages.roundUp(end - start)
    }

    func pieceBytes(_ key: PieceKey) -> Int { records[key.layer][key.expert].levelBytes[key.level - 1] }

    private func span(offset: Int, count: Int) -> (Int, Int) {
        guard directIO else { return (offset, offset + count) }
        let a = Self.alignment
        return (offset / a * a, (offset + count + a - 1) / a * a)
    }

    /// Total bytes of every piece of every expert, as stored.
    var totalBytes: Int { records.joined().reduce(0) { $0 + $1.levelBytes.reduce(0, +) } }

    /// Reads a piece into `buffer` (at least `allocationBytes(key)` bytes) and returns the offset
    /// of the piece's first byte in it. Short reads and read errors throw, naming the piece.
    func read(_ key: PieceKey, into buffer: PieceBuffer) throws -> Int {
        let r = records[key.layer][key.expert]
        let offset = r.levelOffsets[key.level - 1], count = r.levelBytes[key.level - 1]
        let (start, end) = span(offset: offset, count: count)
        precondition(buffer.byteCount >= end - start, "piece buffer too small")
        var done = 0
        while done < end - start {
            let n = pread(fd, buffer.base + done, end - start - done, off_t(start + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw ModelError("\(path): reading expert piece \(key) failed (\(String(cString: strerror(errno))))")
            }
            if n == 0 { break }
            done += n
        }
        // Under direct I/O the last aligned block may run past the end of the file; the piece may not.
        guard done >= offset + count - start else {
            throw ModelError("\(path): short read of expert piece \(key): \(done) of \(offset + count - start) bytes (the file is truncated)")
        }
        verifiedLock.lock()
        let known = verified.contains(key)
        verifiedLock.unlock()
        if !known {
            let bytes = UnsafeRawBufferPointer(start: buffer.base + (offset - start), count: count)
            guard CRC32.checksum(bytes) == r.levelCRC32[key.level - 1] else {
                throw ModelError("\(path): expert piece \(key) checksum mismatch (the file is corrupt)")
            }
            verifiedLock.lock()
            verified.insert(key)
            verifiedLock.unlock()
        }
        return offset - start
    }
}

/// Page-aligned memory for one piece, mapped anonymously and unmapped on release, so the
/// process's resident memory follows the pool's accounting (malloc would keep freed blocks).
///
/// The pool recycles buffers: a piece whose size no spare buffer has gets a buffer assembled
/// from spare buffers' pages, moved into a fresh address range without copying. Fresh pages
/// would cost a page fault and the zeroing of every page inside the I/O thread's read: with
/// buffers resized instead, 15% of an olmoe-1b-7b run's reads at 32 requests took fresh pages,
/// 3.8 million page faults in all against 0.9 million for a baseline whose pieces all have one size.
final class PieceBuffer: @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    /// A multiple of the page size; shrinks as spare pages are given to other buffers.
    private(set) var byteCount: Int
    /// Byte lengths, in address order, of the runs of pages that were moved in together or
    /// mapped together: each lies within one kernel mapping, which a move needs before Linux 6.17.
    private var runs: [Int]
    /// Runs a buffer may be assembled from: every run can be a kernel mapping of its own, and a
    /// process has a limit on those (65530 by default).
    static let maxRuns = 16

    init(byteCount: Int) throws {
        let size = Pages.roundUp(max(byteCount, 1))
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else {
            throw ModelError("cannot allocate \(size) bytes for an expert piece (\(String(cString: strerror(errno))))")
        }
        base = p
        self.byteCount = size
        runs = [size]
    }

    /// A buffer of `byteCount` bytes (a multiple of the page size) whose pages are taken from the
    /// ends of `donors`, last donor first, while they have pages and the runs allow; the rest are
    /// fresh. Donors left with no pages are removed. Returns the buffer and the bytes it took from
    /// donors, or nil (donors untouched) when no address range can be mapped.
    static func assemble(byteCount: Int, from donors: inout [PieceBuffer]) -> (PieceBuffer, moved: Int)? {
        guard let buffer = try? PieceBuffer(byteCount: byteCount) else { return nil }
        var filled = 0
        var moved: [Int] = []
        while filled < buffer.byteCount, moved.count < maxRuns - 1, let donor = donors.last {
            let take = min(donor.runs.last!, buffer.byteCount - filled)
            guard Pages.move(from: donor.base + donor.byteCount - take, length: take, to: buffer.base + filled) else { break }
            donor.byteCount -= take
            donor.runs[donor.runs.count - 1] -= take
            if donor.runs.last == 0 { donor.runs.removeLast() }
            if donor.byteCount == 0 { donors.removeLast() }
            moved.append(take)
            filled += take
        }
        buffer.runs = moved + (filled < buffer.byteCount ? [buffer.byteCount - filled] : [])
        return (buffer, filled)
    }

    deinit {
        if byteCount > 0 { munmap(base, byteCount) }
    }
}
