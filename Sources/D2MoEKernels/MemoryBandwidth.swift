import Foundation
import CD2MoEKernels

/// Measures how fast this machine reads memory, the limit of batch-1 decoding: the bytes of
/// weights a token touches divided by this is the best possible time per token.
public enum MemoryBandwidth {
    /// Best-of-`rounds` read bandwidth in bytes per second over a buffer far larger than the
    /// caches, summed by all of the pool's threads.
    public static func measureRead(bytes: Int = 512 << 20, rounds: Int = 5, pool: ComputePool = .shared) -> Double {
        let count = bytes / 4
        let buffer = AlignedBuffer(byteCount: count * 4)
        let p = buffer.floats()
        for i in stride(from: 0, to: count, by: 1024) { p[i] = Float(i & 7) }
        let chunks = pool.threadCount * 8
        let sums = UnsafeMutablePointer<Float>.allocate(capacity: chunks)
        defer { sums.deallocate() }
        var best = 0.0
        for _ in 0..<rounds {
            let start = DispatchTime.now().uptimeNanoseconds
            pool.parallelFor(chunks) { c in
                let lo = c * count / chunks, hi = (c + 1) * count / chunks
                let raw = UnsafeRawPointer(p + lo)
                var a = SIMD16<Float>(), b = SIMD16<Float>()
                var i = 0
                let n = hi - lo
                while i + 32 <= n {
                    a += raw.load(fromByteOffset: i * 4, as: SIMD16<Float>.self)
                    b += raw.load(fromByteOffset: i * 4 + 64, as: SIMD16<Float>.self)
                    i += 32
                }
                sums[c] = (a + b).sum()
            }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            best = max(best, Double(count * 4) / seconds)
        }
        return best
    }
}

/// CRC-32 (IEEE 802.3, zlib's) in the C target: carry-less multiplication folding where the CPU
/// has it (every streamed expert piece is verified, on the I/O threads), slicing by 8 elsewhere.
public enum FastCRC32 {
    public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        guard let base = bytes.baseAddress else { return crc }
        return d2moe_crc32(crc, base, bytes.count)
    }

    /// The slicing-by-8 path alone: the reference the folding path is tested against.
    public static func tableChecksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        guard let base = bytes.baseAddress else { return crc }
        return d2moe_crc32_table(crc, base, bytes.count)
    }
}
