import Foundation
import Testing
import D2MoEKernels

/// Every fast kernel against its plain reference, on every path this machine can run.
@Suite struct KernelTests {
    var generator = SeededRandom(seed: 11)

    static var paths: [KernelPath] { KernelPath.best == .avx2 ? [.avx2, .portable] : [.portable] }

    mutating func randoms(_ n: Int) -> [Float] { (0..<n).map { _ in Float(generator.uniform() * 2 - 1) } }

    /// One attention head over a strided cache (GQA rows of several heads), every path, against a
    /// double-precision reference; lengths cover the four-key blocks' remainders and the vector exp's
    /// tail, head sizes a partial 64-wide output block, and large scores the exp's clamp.
    @Test(arguments: KernelPath.allCases)
    mutating func attentionMatchesTheReference(path: KernelPath) throws {
        guard Self.paths.contains(path) else { return }
        for d in [8, 64, 72, 128, 256] {
            let stride = 3 * d
            for n in [1, 2, 3, 4, 5, 7, 8, 9, 15, 33, 300] {
                for spread: Float in [1, 40] {
                    let q = randoms(d).map { $0 * spread }, keys = randoms(n * stride), values = randoms(n * stride)
                    let scale = 1 / Float(d).squareRoot()
                    var scores = [Float](repeating: .nan, count: n)
                    var fast = [Float](repeating: .nan, count: d), reference = fast
                    // The second head of the row, as a GQA cache lays them out.
                    keys.withUnsafeBufferPointer { k in
                        values.withUnsafeBufferPointer { v in
                            Kernels.attend(query: q, keys: k.baseAddress! + d, values: v.baseAddress! + d, stride: stride, n: n,
                                           headDim: d, scale: scale, scores: &scores, out: &fast, path: path)
                            Reference.attend(query: q, keys: k.baseAddress! + d, values: v.baseAddress! + d, stride: stride, n: n,
                                             headDim: d, scale: scale, out: &reference)
                        }
                    }
                    // Outputs are convex combinations of values in [-1, 1]: an absolute bound.
                    #expect(maxError(fast, reference) < 2e-5, "path \(path), d \(d), n \(n), spread \(spread)")
                }
            }
        }
    }

    @Test(arguments: KernelPath.allCases, ElementType.allCases)
    mutating func matmulMatchesTheReference(path: KernelPath, type: ElementType) throws {
        guard Self.paths.contains(path) else { return }
        for (rows, cols) in [(1, 1), (5, 17), (37, 64), (64, 576), (131, 200), (6, 32), (13, 96)] where type.holds(cols: cols) {
            let w = DenseMatrix.random(rows: rows, cols: cols, type: type, values: randoms(rows * cols))
            for tokens in [1, 2, 3, 5, 8, 17] {
                let x = randoms(tokens * cols)
                var fast = [Float](repeating: .nan, count: tokens * rows), reference = fast
                Kernels.matmul(w, x, tokens: tokens, &fast, path: path)
                Reference.matmul(w, x, tokens: tokens, &reference)
                // Float accumulation over `cols` terms of magnitude ≤ 1; Q8_0 also rounds x to
                // 8 bits per 32, moving each output by at most Σ_c |w[r, c]|·(amax of c's block)/254
                // — or, on the AVX2 GEMM route for several tokens, to ±1023 per 32: amax/2046.
                let steps: Float = path == .avx2 && tokens >= Kernels.q8GemmMinTokens ? 2046 : 254
                for t in 0..<tokens {
                    for r in 0..<rows {
                        var bound = 1e-6 * Float(cols).squareRoot() * 4
                        if type == .q8_0 {
                            for c in 0..<cols {
                                let block = x[(t * cols + c / 32 * 32)..<(t * cols + c / 32 * 32 + 32)]
                                bound += abs(w.element(r, c)) * block.map { abs($0) }.max()! / steps * 1.001
                            }
                        }
                        let err = abs(fast[t * rows + r] - reference[t * rows + r])
                        #expect(err <= bound, "\(path) \(type) \(rows)x\(cols) tokens \(tokens) row \(r): error \(err) > \(bound)")
                    }
                }
            }
        }
        if type == .q8_0 {
            // The portable path makes the same activation codes, so both paths agree to float rounding.
            let w = DenseMatrix.random(rows: 40, cols: 128, type: .q8_0, values: randoms(40 * 128))
            let x = randoms(3 * 128)
            let results = Self.paths.map { p -> [Float] in
                var y = [Float](repeating: .nan, count: 3 * 40)
                Kernels.matmul(w, x, tokens: 3, &y, path: p)
                return y
            }
            for y in results { #expect(zip(y, results[0]).allSatisfy { abs($0 - $1) <= 1e-5 * max(1, abs($1)) }) }
        }
    }

    @Test mutating func elementwiseKernelsMatchTheReference() {
        let n = 203
        let x = randoms(n), w = randoms(n), up = randoms(n)
        for offset: Float in [0, 1] {
            var fast = [Float](repeating: 0, count: n), reference = fast
            Kernels.rmsNorm(x, weight: w, weightOffset: offset, n: n, tokens: 1, eps: 1e-6, &fast)
            Reference.rmsNorm(x, weight: w, weightOffset: offset, n: n, tokens: 1, eps: 1e-6, &reference)
            #expect(maxError(fast, reference) < 1e-5)
        }
        var a = x.map { $0 * 10 }, b = a
        Kernels.softmax(&a, n: n)
        Reference.softmax(&b, n: n)
        #expect(maxError(a, b) < 1e-6)
        var g1 = x.map { $0 * 4 }, g2 = g1
        Kernels.siluMul(&g1, up, n: n)
        Reference.siluMul(&g2, up, n: n)
        #expect(maxError(g1, g2) < 1e-5)
        // Far into both tails (where e^−g overflows or vanishes) and every lane of a vector.
        let tails: [Float] = [-200, -90, -88, -40, -10, -1e-3, 0, 1e-3, 10, 40, 88, 90, 200, 3.5, -3.5, 0.25, -0.25]
        var t1 = tails, t2 = tails
        let ones = [Float](repeating: 1, count: tails.count)
        Kernels.siluMul(&t1, ones, n: tails.count)
        Reference.siluMul(&t2, ones, n: tails.count)
        #expect(zip(t1, t2).allSatisfy { abs($0 - $1) <= 2e-6 * max(1, abs($1)) && $0.isFinite }, "\(t1) against \(t2)")
        g1 = x.map { $0 * 4 }; g2 = g1
        Kernels.geluTanhMul(&g1, up, n: n)
        Reference.geluTanhMul(&g2, up, n: n)
        #expect(maxError(g1, g2) < 1e-5)
        #expect(abs(Kernels.dot(x, w, n: n) - zip(x, w).reduce(0) { $0 + $1.0 * $1.1 }) < 1e-4)
        var y = w
        Kernels.axpy(0.5, x, &y, n: n)
        #expect(maxError(y, zip(w, x).map { $0 + 0.5 * $1 }) < 1e-6)
    }

    @Test mutating func ropeMatchesTheReference() {
        let headDim = 64, heads = 3
        let inv = (0..<(headDim / 2)).map { Float(1 / pow(10000.0, Double(2 * $0) / Double(headDim))) }
        let x = randoms(heads * headDim)
        for position in [0, 1, 17, 4095] {
            var fast = x, reference = x
            Kernels.rope(&fast, nHeads: heads, headDim: headDim, rotaryDim: headDim, position: position, invFreq: inv)
            for h in 0..<heads {
                reference.withUnsafeMutableBufferPointer {
                    Reference.rope($0.baseAddress! + h * headDim, rotaryDim: headDim, position: position, invFreq: inv)
                }
            }
            #expect(maxError(fast, reference) < 1e-5, "position \(position)")
        }
    }

    @Test func poolRunsEveryIndexExactlyOnce() {
        let pool = ComputePool(threadCount: 3)
        for n in [0, 1, 2, 7, 64, 1000] {
            for _ in 0..<50 {
                let counts = UnsafeMutablePointer<Int>.allocate(capacity: max(n, 1))
                counts.initialize(repeating: 0, count: max(n, 1))
                pool.parallelFor(n) { i in counts[i] += 1 }
                #expect((0..<n).allSatisfy { counts[$0] == 1 }, "n = \(n)")
                counts.deallocate()
            }
        }
    }

    /// Many tiny calls back to back, from two threads at once and with pools coming and going:
    /// late workers must neither run nor hold on to a call that has returned.
    @Test func poolSurvivesManyTinyCalls() async {
        await withTaskGroup(of: Bool.self) { group in
            for _ in 0..<2 {
                group.addTask {
                    var ok = true
                    for round in 0..<20 {
                        let pool = ComputePool(threadCount: 3)
                        for n in [2, 3, 5] {
                            for _ in 0..<(round % 2 == 0 ? 500 : 50) {
                                let counts = UnsafeMutablePointer<Int>.allocate(capacity: n)
                                counts.initialize(repeating: 0, count: n)
                                pool.parallelFor(n) { i in counts[i] += 1 }
                                ok = ok && (0..<n).allSatisfy { counts[$0] == 1 }
                                counts.deallocate()
                            }
                        }
                    }
                    return ok
                }
            }
            for await ok in group { #expect(ok) }
        }
    }

    @Test func nestedParallelForRunsInlineInsteadOfDeadlocking() {
        let pool = ComputePool(threadCount: 2)
        let total = UnsafeMutablePointer<Int>.allocate(capacity: 16)
        total.initialize(repeating: 0, count: 16)
        pool.parallelFor(4) { i in pool.parallelFor(4) { j in total[i * 4 + j] += 1 } }
        #expect((0..<16).allSatisfy { total[$0] == 1 })
        total.deallocate()
    }

    /// Q8_0 as ggml stores it: d = amax/127 in float16, q = round(w/d); every weight within d/2.
    @Test mutating func q8BlocksRoundTrip() {
        let values = randoms(4 * 64).enumerated().map { $0.offset == 70 ? 0 : $0.element * Float(1 + $0.offset % 5) }
        let m = DenseMatrix.random(rows: 4, cols: 64, type: .q8_0, values: values)
        #expect(m.byteCount == 4 * 2 * 34)
        var row = [Float](repeating: .nan, count: 64)
        for r in 0..<4 {
            m.row(r, into: &row)
            for b in 0..<2 {
                let block = values[(r * 64 + 32 * b)..<(r * 64 + 32 * b + 32)]
                let d = Float(Float16(block.map { abs($0) }.max()! / 127))
                for c in 0..<32 {
                    let w = values[r * 64 + 32 * b + c]
                    #expect(abs(row[32 * b + c] - w) <= d * 0.5 + abs(w) * 1e-3, "row \(r) column \(32 * b + c)")
                    #expect(row[32 * b + c] == m.element(r, 32 * b + c))
                }
            }
        }
    }

    @Test func halfAndBFloat16ConversionsAreExact() {
        for bits in stride(from: UInt16(0), to: UInt16.max, by: 7) where !Float16(bitPattern: bits).isNaN {
            #expect(floatFromHalfBits(bits) == Float(Float16(bitPattern: bits)))
        }
        #expect(bfloat16BitsFromFloat(1.00390625) == 0x3F80)  // ties round to even
        #expect(bfloat16BitsFromFloat(-2.5) == 0xC020)
    }

    /// Pages moved from the middle of one mapping into another keep their contents; the pages
    /// around them stay where they were.
    /// Converting a matrix a few rows at a time (the load path) gives the same bytes as converting
    /// all of it at once, for every element type, with blocks that do not divide the rows.
    @Test func matrixBuiltRowBlocksAtATimeEqualsTheWholeConversion() {
        var rng = SeededRandom(seed: 11)
        let rows = 37, cols = 64
        let values = (0..<(rows * cols)).map { _ in Float(rng.uniform() * 4 - 2) }
        for type in [ElementType.f32, .f16, .bf16, .q8_0] {
            let whole = DenseMatrix.random(rows: rows, cols: cols, type: type, values: values)
            var calls = 0
            let blocked = DenseMatrix.quantized(rows: rows, cols: cols, type: type, blockRows: 5) { range, out in
                calls += 1
                for (i, r) in range.enumerated() { for c in 0..<cols { out[i * cols + c] = values[r * cols + c] } }
            }
            let bytes = rows * type.rowBytes(cols: cols)
            #expect(calls == 8, "\(type): \(calls) blocks of at most 5 rows for 37 rows")
            #expect(memcmp(whole.base, blocked.base, bytes) == 0, "\(type): the blocked conversion differs")
        }
    }

    @Test func movedPagesKeepTheirContents() throws {
        let page = Pages.size, n = 6 * page
        let map = { () throws -> UnsafeMutableRawPointer in
            let p = mmap(nil, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            return try #require(p == MAP_FAILED ? nil : p)
        }
        let a = try map(), b = try map()
        defer { munmap(a, n); munmap(b, n) }
        for i in 0..<n { a.storeBytes(of: UInt8(truncatingIfNeeded: i &* 7 &+ 1), toByteOffset: i, as: UInt8.self) }
        memset(b, 0xEE, n)
        let ok = Pages.move(from: a + 2 * page, length: 3 * page, to: b + page)
        #if os(Linux)
        #expect(ok)
        #endif
        guard ok else { return }  // no mremap here: nothing moved
        let moved = (0..<(3 * page)).allSatisfy { b.load(fromByteOffset: page + $0, as: UInt8.self) == UInt8(truncatingIfNeeded: (2 * page + $0) &* 7 &+ 1) }
        #expect(moved)
        #expect((0..<page).allSatisfy { b.load(fromByteOffset: $0, as: UInt8.self) == 0xEE && b.load(fromByteOffset: 4 * page + $0, as: UInt8.self) == 0xEE })
        #expect((0..<(2 * page)).allSatisfy { a.load(fromByteOffset: $0, as: UInt8.self) == UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) })
        // The source range is unmapped now: map it again so the deferred munmap has whole ranges.
        _ = mmap(a + 2 * page, 3 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
    }

    func maxError(_ a: [Float], _ b: [Float]) -> Float { zip(a, b).map { abs($0 - $1) }.max() ?? 0 }
}

/// The CRC-32 folding path (PCLMULQDQ where the CPU has it) against the table path and the
/// standard check value, for every length up to 300 and a few large ones, at unaligned starts.
@Suite struct CRC32Tests {
    @Test func foldingEqualsTheTablePath() {
        let check = Array("123456789".utf8)
        check.withUnsafeBytes {
            #expect(FastCRC32.checksum($0) == 0xCBF4_3926)
            #expect(FastCRC32.tableChecksum($0) == 0xCBF4_3926)
        }
        var rng = SeededRandom(seed: 11)
        let data = (0..<70_000).map { _ in UInt8(rng.uniform() * 256) }
        data.withUnsafeBytes { all in
            for n in Array(0...300) + [1024, 4096 + 7, 65_536, 69_990] {
                for offset in [0, 1, 5] {
                    let slice = UnsafeRawBufferPointer(rebasing: all[offset..<(offset + n)])
                    for start: UInt32 in [0, 0x1234_5678] {
                        #expect(FastCRC32.checksum(slice, continuing: start) == FastCRC32.tableChecksum(slice, continuing: start),
                                "\(n) bytes at \(offset) from \(start)")
                    }
                }
            }
            // Continuing across a split gives the checksum of the whole.
            let whole = FastCRC32.checksum(all)
            #expect(FastCRC32.checksum(UnsafeRawBufferPointer(rebasing: all[1000...]),
                                       continuing: FastCRC32.checksum(UnsafeRawBufferPointer(rebasing: all[..<1000]))) == whole)
        }
    }
}

/// Deterministic uniform numbers for tests.
struct SeededRandom {
    var state: UInt64
    init(seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 | 1 }
    mutating func uniform() -> Double {
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        return Double(state >> 11) / Double(1 << 53)
    }
}

extension DenseMatrix {
    static func random(rows: Int, cols: Int, type: ElementType, values: [Float]) -> DenseMatrix {
        values.withUnsafeBufferPointer { DenseMatrix.quantized(rows: rows, cols: cols, values: $0, type: type) }
    }
}
