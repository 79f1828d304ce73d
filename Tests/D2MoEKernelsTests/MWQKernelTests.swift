import Testing
import D2MoEKernels

/// The MWQ bit-plane kernels against dequantize-then-multiply, on every path this machine runs.
@Suite struct MWQKernelTests {
    static var paths: [KernelPath] { KernelPath.best == .avx2 ? [.avx2, .portable] : [.portable] }

    @Test(arguments: [32, 64, 128])
    func matmulMatchesTheReference(group: Int) {
        var random = MWQRandom(seed: UInt64(group))
        var cases = 0
        for baseBits in [1, 2, 3, 4, 8] {
            for signLevels in 0...4 {
                // Rows not a multiple of 4 or 8; a group count that is not a multiple of 8 either.
                let rows = [1, 5, 13, 19][(baseBits + signLevels) % 4]
                let cols = group * [1, 3, 9, 16][(baseBits * 3 + signLevels) % 4]
                let matrix = MWQFixture(rows: rows, cols: cols, group: group, baseBits: baseBits,
                                        signLevels: signLevels, random: &random)
                for tokens in [1, 3, 8, 11] {
                    let x = (0..<(tokens * cols)).map { _ in random.float(in: -1...1) }
                    let level = 1 + signLevels
                    let reference = matrix.reference(levels: level, x, tokens: tokens)
                    for path in Self.paths {
                        let fast = matrix.fast(levels: level, x, tokens: tokens, path: path)
                        let err = relativeError(fast, reference)
                        #expect(err < 1e-5, "\(path) g\(group) b1=\(baseBits) L=\(level) \(rows)x\(cols) tokens \(tokens): \(err)")
                        cases += 1
                    }
                }
            }
        }
        #expect(cases == 5 * 5 * 4 * Self.paths.count)
    }

    /// Enough rows that the product is split over the pool, a count that is not a multiple of 4.
    @Test func rowsSplitOverThePoolMatchOneThread() {
        var random = MWQRandom(seed: 5)
        let matrix = MWQFixture(rows: 150, cols: 256, group: 64, baseBits: 2, signLevels: 2, random: &random)
        let pools = [ComputePool(threadCount: 1), ComputePool(threadCount: 3)]
        for tokens in [1, 5] {
            let x = (0..<(tokens * 256)).map { _ in random.float(in: -1...1) }
            let reference = matrix.reference(levels: 3, x, tokens: tokens)
            for path in Self.paths {
                let results = pools.map { matrix.fast(levels: 3, x, tokens: tokens, path: path, pool: $0) }
                #expect(results[0] == results[1], "\(path) tokens \(tokens)")
                #expect(relativeError(results[1], reference) < 1e-5, "\(path) tokens \(tokens)")
            }
        }
    }

    @Test func lowerLevelsIgnoreTheHigherPlanes() {
        var random = MWQRandom(seed: 7)
        let matrix = MWQFixture(rows: 11, cols: 192, group: 64, baseBits: 3, signLevels: 4, random: &random)
        for tokens in [1, 5] {
            let x = (0..<(tokens * 192)).map { _ in random.float(in: -1...1) }
            var previous: [Float]?
            for level in 1...5 {
                let reference = matrix.reference(levels: level, x, tokens: tokens)
                for path in Self.paths {
                    let fast = matrix.fast(levels: level, x, tokens: tokens, path: path)
                    #expect(relativeError(fast, reference) < 1e-5, "\(path) level \(level) tokens \(tokens)")
                }
                // Each level changes the product (its sign scales are not zero).
                if let previous { #expect(relativeError(previous, reference) > 1e-3) }
                previous = reference
            }
            // Scribbling over the planes and scales of levels above the one served changes nothing.
            let before = Self.paths.map { matrix.fast(levels: 3, x, tokens: tokens, path: $0) }
            matrix.scribbleOverSignLevels(from: 2)
            for (path, served) in zip(Self.paths, before) {
                #expect(matrix.fast(levels: 3, x, tokens: tokens, path: path) == served, "\(path) tokens \(tokens)")
            }
            matrix.restore()
        }
    }

    /// One row, group 32, b1 = 2, one sign level, worked out by hand.
    @Test func handCheckedCase() {
        // Codes q_c = c % 4 → plane 0 bit c set iff c is odd, plane 1 iff c % 4 >= 2.
        let plane0: UInt32 = 0xAAAA_AAAA, plane1: UInt32 = 0xCCCC_CCCC
        // Sign +1 on the first 16 columns, −1 on the rest.
        let sign: UInt32 = 0x0000_FFFF
        // s = 0.5, m = −1, s_2 = 0.25 (all exact in float16).
        let scales: [UInt16] = [Float16(0.5).bitPattern, Float16(-1).bitPattern]
        let signScale: [UInt16] = [Float16(0.25).bitPattern]
        let x = (0..<32).map { Float($0 + 1) }  // 1, 2, …, 32
        // Σ_c (c % 4)(c + 1): block b (c = 4b…4b+3) gives 0 + (4b+2) + 2(4b+3) + 3(4b+4) = 24b + 20,
        // b = 0…7: 24·28 + 160 = 832; Σ_c (c + 1) = 528.
        // Level 1: Σ (0.5·(c % 4) − 1)·(c + 1) = 0.5·832 − 528 = −112.
        // Level 2 adds 0.25·(Σ_{c<16}(c+1) − Σ_{c≥16}(c+1)) = 0.25·(136 − 392) = −64 → −176.
        let expected: [Int: Float] = [1: -112, 2: -176]
        [plane0, plane1].withUnsafeBufferPointer { base in
            [sign].withUnsafeBufferPointer { signPlane in
                scales.withUnsafeBufferPointer { baseScales in
                    signScale.withUnsafeBufferPointer { signScales in
                        let m = MWQMatrixView(rows: 1, cols: 32, group: 32, baseBits: 2,
                                              basePlanes: base.baseAddress!, baseScales: baseScales.baseAddress!,
                                              signPlanes: [signPlane.baseAddress!], signScales: [signScales.baseAddress!])
                        let w = MWQReference.dequantize(m, levels: 2)
                        #expect(w[0] == -1 + 0.25 && w[3] == 0.5 + 0.25 && w[17] == -0.5 - 0.25 && w[31] == 0.5 - 0.25)
                        var xsum: Float = 0
                        MWQKernels.groupSums(x, tokens: 1, cols: 32, group: 32, into: &xsum)
                        #expect(xsum == 528)
                        for level in 1...2 {
                            var y: Float = 0
                            MWQReference.matmul(m, levels: level, x, tokens: 1, &y)
                            #expect(y == expected[level])
                            for path in Self.paths {
                                var fast: Float = .nan
                                MWQKernels.matmul(m, levels: level, x, xsum: &xsum, tokens: 1, &fast, path: path)
                                #expect(fast == expected[level], "\(path) level \(level)")
                            }
                        }
                    }
                }
            }
        }
    }

    @Test func groupSumsAddEachGroup() {
        var random = MWQRandom(seed: 3)
        let cols = 256, tokens = 3
        let x = (0..<(tokens * cols)).map { _ in random.float(in: -1...1) }
        for group in [32, 64, 128] {
            var sums = [Float](repeating: .nan, count: tokens * cols / group)
            MWQKernels.groupSums(x, tokens: tokens, cols: cols, group: group, into: &sums)
            for t in 0..<tokens {
                for j in 0..<(cols / group) {
                    let plain = x[(t * cols + j * group)..<(t * cols + (j + 1) * group)].reduce(0, +)
                    #expect(abs(sums[t * cols / group + j] - plain) < 1e-5)
                }
            }
        }
    }

    func relativeError(_ a: [Float], _ b: [Float]) -> Float {
        let scale = b.map { abs($0) }.max() ?? 0
        let diff = zip(a, b).map { abs($0 - $1) }.max() ?? 0
        return scale == 0 ? diff : diff / scale
    }
}

/// Deterministic uniform numbers (xorshift).
struct MWQRandom {
    var state: UInt64
    init(seed: UInt64) { state = (seed &+ 1) &* 0x9E37_79B9_7F4A_7C15 | 1 }
    mutating func next() -> UInt64 {
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        return state
    }
    mutating func word() -> UInt32 { UInt32(truncatingIfNeeded: next() >> 17) }
    mutating func float(in range: ClosedRange<Float>) -> Float {
        range.lowerBound + (range.upperBound - range.lowerBound) * Float(next() >> 40) / Float(1 << 24)
    }
}

/// A random MWQ matrix in owned memory, laid out as `MWQMatrixView` documents.
final class MWQFixture {
    let view: MWQMatrixView
    let basePlanes: UnsafeMutableBufferPointer<UInt32>
    let baseScales: UnsafeMutableBufferPointer<UInt16>
    let signPlanes: [UnsafeMutableBufferPointer<UInt32>]
    let signScales: [UnsafeMutableBufferPointer<UInt16>]
    private var saved: [([UInt32], [UInt16])] = []

    init(rows: Int, cols: Int, group: Int, baseBits: Int, signLevels: Int, random: inout MWQRandom) {
        let groups = rows * cols / group, n32 = group / 32
        basePlanes = .allocate(capacity: groups * baseBits * n32)
        for i in basePlanes.indices { basePlanes[i] = random.word() }
        baseScales = .allocate(capacity: 2 * groups)
        for gi in 0..<groups {
            // Scale and offset as a quantizer picks them: Ŵ1 spans about [−1, 1].
            let s = random.float(in: 0.5...1.5) * 2 / Float((1 << baseBits) - 1)
            let m = -s * Float((1 << baseBits) - 1) / 2 + random.float(in: -0.1...0.1)
            baseScales[2 * gi] = Float16(s).bitPattern
            baseScales[2 * gi + 1] = Float16(m).bitPattern
        }
        var planes: [UnsafeMutableBufferPointer<UInt32>] = [], scales: [UnsafeMutableBufferPointer<UInt16>] = []
        for k in 0..<signLevels {
            let p = UnsafeMutableBufferPointer<UInt32>.allocate(capacity: groups * n32)
            for i in p.indices { p[i] = random.word() }
            let s = UnsafeMutableBufferPointer<UInt16>.allocate(capacity: groups)
            let size = 0.2 / Float(1 << k)
            for i in s.indices { s[i] = Float16(random.float(in: 0.5...1.5) * size).bitPattern }
            planes.append(p)
            scales.append(s)
        }
        signPlanes = planes
        signScales = scales
        view = MWQMatrixView(rows: rows, cols: cols, group: group, baseBits: baseBits,
                             basePlanes: UnsafePointer(basePlanes.baseAddress!),
                             baseScales: UnsafePointer(baseScales.baseAddress!),
                             signPlanes: planes.map { UnsafePointer($0.baseAddress!) },
                             signScales: scales.map { UnsafePointer($0.baseAddress!) })
    }

    deinit {
        basePlanes.deallocate()
        baseScales.deallocate()
        signPlanes.forEach { $0.deallocate() }
        signScales.forEach { $0.deallocate() }
    }

    func reference(levels: Int, _ x: [Float], tokens: Int) -> [Float] {
        var y = [Float](repeating: .nan, count: tokens * view.rows)
        MWQReference.matmul(view, levels: levels, x, tokens: tokens, &y)
        return y
    }

    func fast(levels: Int, _ x: [Float], tokens: Int, path: KernelPath, pool: ComputePool = .shared) -> [Float] {
        var xsum = [Float](repeating: .nan, count: tokens * view.groups)
        MWQKernels.groupSums(x, tokens: tokens, cols: view.cols, group: view.group, into: &xsum)
        var y = [Float](repeating: .nan, count: tokens * view.rows)
        MWQKernels.matmul(view, levels: levels, x, xsum: xsum, tokens: tokens, &y, pool: pool, path: path)
        return y
    }

    /// Overwrites sign levels `from`… (0-based) with NaN scales and fresh bits; `restore` undoes it.
    func scribbleOverSignLevels(from: Int) {
        saved = []
        for k in from..<signPlanes.count {
            saved.append((Array(signPlanes[k]), Array(signScales[k])))
            for i in signPlanes[k].indices { signPlanes[k][i] = ~signPlanes[k][i] }
            for i in signScales[k].indices { signScales[k][i] = Float16.nan.bitPattern }
        }
    }

    func restore() {
        for (i, (planes, scales)) in saved.enumerated() {
            let k = signPlanes.count - saved.count + i
            _ = signPlanes[k].update(fromContentsOf: planes)
            _ = signScales[k].update(fromContentsOf: scales)
        }
        saved = []
    }
}
