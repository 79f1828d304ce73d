import Foundation
import D2MoEKernels

/// Weight bytes per second of each product kernel, as a fraction of the read bandwidth measured in
/// the same run (issue 5's kernel target: matrix-vector at 4 bits ≥ 70% with both cores).
///
/// Each case cycles through enough matrices (rows × cols, 2048 × 2048 by default; random tiles with unit scales) that
/// the bytes it reads are several times the last-level cache, so every product streams its
/// weights from memory as a decode step does. A product's time includes preparing its input.
public enum KernelBenchmark {
    public struct Case: Codable, Sendable {
        /// "mwq" (the table route), "mwq-gemm" (where `MWQKernels.prefersGemm`, as the models run
        /// them), "q8_0", "f16", "f32".
        public var kernel: String
        /// Base bits and level served (MWQ), nil for dense.
        public var baseBits: Int?
        public var level: Int?
        /// Weight bits served, including scales.
        public var bitsPerWeight: Double
        public var tokens: Int
        public var bytesPerProduct: Int
        public var gbPerSecond: Double
        public var bandwidthFraction: Double
        /// Weights times tokens per second, in billions.
        public var gigaMACsPerSecond: Double
    }

    public struct Result: Codable, Sendable {
        public var threads: Int
        public var readBandwidth: Double
        public var cases: [Case]
    }

    /// MWQ at base `b1` and levels 1…`levels`: the V1 preset {2,3,4}, V2 {5,…,8} and RTN-4; dense
    /// Q8_0, float16 and float32 for comparison; each at every batch size in `tokens`.
    public static func run(tokens: [Int] = [1, 8], group: Int = 128, rows: Int = 2048, cols: Int = 2048,
                           seconds: Double = 0.5, pool: ComputePool = .shared) -> Result {
        let target = 256 << 20
        let bandwidth = MemoryBandwidth.measureRead(pool: pool)
        var cases: [Case] = []
        for (b1, levels) in [(2, 3), (5, 4), (4, 1)] {
            let perMatrix = (1...levels).map { MWQMatrixView.levelByteCount(level: $0, rows: rows, cols: cols, group: group, baseBits: b1) }
            let count = max(2, target / perMatrix.reduce(0, +))
            let buffers = (0..<count).map { _ in randomTiles(perMatrix, group: group, baseBits: b1) }
            let views = buffers.map { b in
                MWQMatrixView(rows: rows, cols: cols, group: group, baseBits: b1,
                              levels: perMatrix.indices.map { k in UnsafeRawPointer(b.pointer + perMatrix.prefix(k).reduce(0, +)) })
            }
            for level in 1...levels {
                let bytes = views[0].byteCount(levels: level)
                for t in tokens {
                    let route: MWQPreparedInput.Route = MWQKernels.prefersGemm(tokens: t, planes: b1 + level - 1) ? .gemm : .tables
                    let rate = measure(count: count, tokens: t, cols: cols, rows: rows, seconds: seconds) { i, x, y in
                        let size = MWQPreparedInput.byteCount(tokens: t, cols: cols, group: group, route: route)
                        withUnsafeTemporaryAllocation(byteCount: size, alignment: 64) { m in
                            let input = MWQPreparedInput(memory: m.baseAddress!, tokens: t, cols: cols, group: group, route: route)
                            MWQKernels.prepare(x, into: input)
                            MWQKernels.matmul(views[i], levels: level, input, y, pool: pool)
                        }
                    }
                    withExtendedLifetime(buffers) {}
                    cases.append(Case(kernel: route == .gemm ? "mwq-gemm" : "mwq", baseBits: b1, level: level, bitsPerWeight: Double(bytes * 8) / Double(rows * cols),
                                      tokens: t, bytesPerProduct: bytes, gbPerSecond: rate * Double(bytes) / 1e9,
                                      bandwidthFraction: rate * Double(bytes) / bandwidth,
                                      gigaMACsPerSecond: rate * Double(rows * cols * t) / 1e9))
                }
            }
        }
        for type in [ElementType.q8_0, .f16, .f32] {
            let bytes = rows * type.rowBytes(cols: cols)
            let count = max(2, target / bytes)
            let values = (0..<(rows * cols)).map { Float(($0 * 7919) % 255 - 127) / 127 }
            let matrices = values.withUnsafeBufferPointer { v in
                (0..<count).map { _ in DenseMatrix.quantized(rows: rows, cols: cols, values: v, type: type) }
            }
            for t in tokens {
                let rate = measure(count: count, tokens: t, cols: cols, rows: rows, seconds: seconds) { i, x, y in
                    Kernels.matmul(matrices[i], x, tokens: t, y, pool: pool)
                }
                cases.append(Case(kernel: type.rawValue, baseBits: nil, level: nil, bitsPerWeight: Double(bytes * 8) / Double(rows * cols),
                                  tokens: t, bytesPerProduct: bytes, gbPerSecond: rate * Double(bytes) / 1e9,
                                  bandwidthFraction: rate * Double(bytes) / bandwidth,
                                  gigaMACsPerSecond: rate * Double(rows * cols * t) / 1e9))
            }
        }
        return Result(threads: pool.threadCount, readBandwidth: bandwidth, cases: cases)
    }

    /// Random planes, unit scales (offset −1 for the base), one buffer holding every level.
    static func randomTiles(_ levelBytes: [Int], group: Int, baseBits: Int) -> AlignedBuffer {
        let buffer = AlignedBuffer(byteCount: levelBytes.reduce(0, +))
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        let words = buffer.pointer.bindMemory(to: UInt64.self, capacity: buffer.byteCount / 8)
        for i in 0..<(buffer.byteCount / 8) {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            words[i] = state
        }
        var at = 0
        for (k, size) in levelBytes.enumerated() {
            let tile = MWQMatrixView.tileBytes(level: k + 1, group: group, baseBits: baseBits)
            let planes = k == 0 ? 4 * baseBits * group : 4 * group
            for t in stride(from: at, to: at + size, by: tile) {
                let scales = (buffer.pointer + t + planes).bindMemory(to: UInt16.self, capacity: (tile - planes) / 2)
                for i in 0..<((tile - planes) / 2) { scales[i] = k == 0 && i >= 32 ? 0xBC00 : 0x3C00 }
            }
            at += size
        }
        return buffer
    }

    /// Products per second, cycling through `count` matrices for at least `seconds`.
    static func measure(count: Int, tokens: Int, cols: Int, rows: Int, seconds: Double,
                        _ product: (Int, UnsafePointer<Float>, UnsafeMutablePointer<Float>) -> Void) -> Double {
        var x = [Float](repeating: 0, count: tokens * cols)
        for i in x.indices { x[i] = Float((i * 7919) % 201 - 100) / 100 }
        var y = [Float](repeating: 0, count: tokens * rows)
        return x.withUnsafeBufferPointer { x in
            y.withUnsafeMutableBufferPointer { y in
                for i in 0..<count { product(i, x.baseAddress!, y.baseAddress!) }  // warm-up: page in
                var done = 0
                let start = DispatchTime.now().uptimeNanoseconds
                var elapsed = 0.0
                repeat {
                    for i in 0..<count { product(i, x.baseAddress!, y.baseAddress!) }
                    done += count
                    elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                } while elapsed < seconds
                return Double(done) / elapsed
            }
        }
    }
}
