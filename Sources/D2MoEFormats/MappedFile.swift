import D2MoEKernels
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A whole file mapped read-only. Every access is bounds-checked, so a truncated file gives a
/// `FormatError` instead of a fault. Weights are viewed in place, never copied wholesale.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    /// File size in bytes.
    public let size: Int
    private let base: UnsafeRawPointer?

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw FormatError(path, "cannot open (\(String(cString: strerror(errno))))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw FormatError(path, "cannot stat (\(String(cString: strerror(errno))))") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw FormatError(path, "not a regular file") }
        size = Int(st.st_size)
        if size == 0 {
            base = nil
            return
        }
        let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p, p != MAP_FAILED else { throw FormatError(path, "cannot map (\(String(cString: strerror(errno))))") }
        base = UnsafeRawPointer(p)
    }

    deinit {
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), size) }
    }

    /// `count` bytes at `offset`, or an error naming what was being read.
    public func bytes(at offset: Int, count: Int, what: @autoclosure () -> String = "data") throws -> UnsafeRawBufferPointer {
        guard offset >= 0, count >= 0, offset <= size, count <= size - offset else {
            throw FormatError(path, "\(what()) [offset \(offset), \(count) bytes] extends past the end of the file (\(size) bytes)")
        }
        guard let base else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: base + offset, count: count)
    }

    /// Lets the kernel drop the mapping's resident pages (they are read again from the file if
    /// touched): after a load has copied what it needs, the mapping stops counting as memory.
    public func releaseResidentPages() { releaseResidentPages(at: 0, count: size) }

    /// As `releaseResidentPages()`, for the whole pages within `count` bytes at `offset`: a load
    /// that converts a tensor a few rows at a time drops each block's pages once it has read them.
    public func releaseResidentPages(at offset: Int, count: Int) {
        guard let base, offset >= 0, count > 0, offset < size else { return }
        let start = Pages.roundUp(offset), end = min(offset + count, size) / Pages.size * Pages.size
        guard end > start else { return }
        _ = madvise(UnsafeMutableRawPointer(mutating: base + start), end - start, Int32(MADV_DONTNEED))
    }

    /// This process's resident bytes of the mapping: the `Rss` of its entry in /proc/self/smaps
    /// (page-cache residency, which mincore reports, would not show what the process holds).
    /// 0 where smaps cannot be read.
    package func residentMappedBytes() -> Int {
        // Read to the end: procfs files report a size of 0, which whole-file readers trust.
        guard let base, let handle = FileHandle(forReadingAtPath: "/proc/self/smaps") else { return 0 }
        defer { try? handle.close() }
        guard let data = try? handle.readToEnd(), let smaps = String(data: data, encoding: .utf8) else { return 0 }
        let start = String(UInt(bitPattern: base), radix: 16)
        var inside = false
        for line in smaps.split(separator: "\n") {
            if let dash = line.firstIndex(of: "-"), line[..<dash].allSatisfy(\.isHexDigit) {
                inside = line[..<dash].drop { $0 == "0" } == start.drop { $0 == "0" }
            } else if inside, line.hasPrefix("Rss:") {
                return (Int(line.split(separator: " ")[1]) ?? 0) * 1024
            }
        }
        return 0
    }
}

/// Sequential little-endian reads over a mapped file, each bounds-checked.
struct ByteCursor {
    let file: MappedFile
    var offset: Int

    mutating func take(_ n: Int, _ what: @autoclosure () -> String) throws -> UnsafeRawBufferPointer {
        let b = try file.bytes(at: offset, count: n, what: what())
        offset += n
        return b
    }

    mutating func read<T: FixedWidthInteger>(_: T.Type, _ what: @autoclosure () -> String) throws -> T {
        let b = try take(MemoryLayout<T>.size, what())
        return T(littleEndian: b.loadUnaligned(as: T.self))
    }

    mutating func readFloat(_ what: @autoclosure () -> String) throws -> Float {
        Float(bitPattern: try read(UInt32.self, what()))
    }

    mutating func readDouble(_ what: @autoclosure () -> String) throws -> Double {
        Double(bitPattern: try read(UInt64.self, what()))
    }
}
