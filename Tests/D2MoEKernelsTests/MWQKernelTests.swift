import Testing
import D2MoEKernels

/// The MWQ bit-plane kernels against dequantize-then-multiply, on every path this machine runs.
@Suite struct MWQKernelTests {
    static var paths: [KernelPath] { KernelPath.best == .avx2 ? [.avx2, .portable] : [.portable] }

    @Test(arguments: [32, 64, 128, 256])
    func matmulMatchesTheReference(group: Int) {
        var random = MWQRandom(seed: UInt64(group))
        var cases = 0
        for baseBits in [1, 2, 3, 4, 8] {
            for signLevels in 0...4 {
                // Row counts that leave a partial block of 32; group counts of 1 up to 9.
                let rows = [1, 5, 33, 70][(baseBits + signLevels) % 4]
                let cols = group * [1, 3, 9, 2][(baseBits * 3 + signLevels) % 4]
                let matrix = MWQFixture(rows: rows, cols: cols, group: group, baseBits: baseBits,
                                        signLevels: signLevels, random: &random)
                for tokens in [1, 3, 4, 11] {
                    let x = (0..<(tokens * cols)).map { _ in random.float(in: -1...1) }
                    let level = 1 + signLevels
                    // The kernels multiply by int8-range activations: exact against those, close
                    // to the float ones.
                    let exact = matrix.reference(levels: level, MWQReference.quantizedActivations(x, cols: cols, group: group), tokens: tokens)
                    let float = matrix.reference(levels: level, x, tokens: tokens)
                    let bound = matrix.activationErrorBound(levels: level, x, tokens: tokens)
                    for path in Self.paths {
                        let fast = matrix.fast(levels: level, x, tokens: tokens, path: path)
                        let err = relativeError(fast, exact)
                        #expect(err < 1e-5, "\(path) g\(group) b1=\(baseBits) L=\(level) \(rows)x\(cols) tokens \(tokens): \(err)")
                        // Rounding x to the int8 grid moves each output by at most Σ_c |Ŵ[r, c]|·step/2.
                        let within = zip(zip(fast, float), bound).allSatisfy { abs($0.0 - $0.1) <= $1 * 1.001 + 1e-5 }
                        #expect(within, "\(path) g\(group) b1=\(baseBits) L=\(level) against float x")
                        cases += 1
                    }
                }
            }
        }
        #expect(cases == 5 * 5 * 4 * Self.paths.count)
    }

    /// Enough rows that the product is split over the pool.
    @Test func rowsSplitOverThePoolMatchOneThread() {
        var random = MWQRandom(seed: 5)
        let matrix = MWQFixture(rows: 650, cols: 256, group: 64, baseBits: 2, signLevels: 2, random: &random)
        let pools = [ComputePool(threadCount: 1), ComputePool(threadCount: 3)]
        for tokens in [1, 5] {
            let x = (0..<(tokens * 256)).map { _ in random.float(in: -1...1) }
            let reference = matrix.reference(levels: 3, MWQReference.quantizedActivations(x, cols: 256, group: 64), tokens: tokens)
            for path in Self.paths {
                let results = pools.map { matrix.fast(levels: 3, x, tokens: tokens, path: path, pool: $0) }
                #expect(results[0] == results[1], "\(path) tokens \(tokens)")
                #expect(relativeError(results[1], reference) < 1e-5, "\(path) tokens \(tokens)")
            }
        }
    }

    /// One fused call over several matrices (q, k and v) gives each the result of its own call.
    @Test func fusedProductsMatchSeparateOnes() {
        var random = MWQRandom(seed: 11)
        let matrices = [MWQFixture(rows: 70, cols: 192, group: 32, baseBits: 4, signLevels: 0, random: &random),
                        MWQFixture(rows: 33, cols: 192, group: 32, baseBits: 2, signLevels: 2, random: &random),
                        MWQFixture(rows: 300, cols: 192, group: 32, baseBits: 3, signLevels: 1, random: &random)]
        let levels = [1, 3, 2]
        for tokens in [1, 6] {
            let x = (0..<(tokens * 192)).map { _ in random.float(in: -1...1) }
            for path in Self.paths {
                let separate = zip(matrices, levels).map { $0.fast(levels: $1, x, tokens: tokens, path: path) }
                for pool in [ComputePool(threadCount: 1), ComputePool(threadCount: 3)] {
                    // All three outputs in one buffer, one after the other.
                    let rows = matrices.map { tokens * $0.view.rows }
                    var flat = [Float](repeating: .nan, count: rows.reduce(0, +))
                    let size = MWQPreparedInput.byteCount(tokens: tokens, cols: 192, group: 32)
                    var memory = [UInt32](repeating: 0, count: size / 4)
                    memory.withUnsafeMutableBytes { m in
                        let input = MWQPreparedInput(memory: m.baseAddress!, tokens: tokens, cols: 192, group: 32)
                        MWQKernels.prepare(x, into: input, path: path)
                        flat.withUnsafeMutableBufferPointer { y in
                            let list = [MWQProduct(matrices[0].view, levels: 1, y.baseAddress!),
                                        MWQProduct(matrices[1].view, levels: 3, y.baseAddress! + rows[0]),
                                        MWQProduct(matrices[2].view, levels: 2, y.baseAddress! + rows[0] + rows[1])]
                            list.withUnsafeBufferPointer { MWQKernels.matmul($0, input, pool: pool, path: path) }
                        }
                    }
                    let outputs = [Array(flat[0..<rows[0]]), Array(flat[rows[0]..<(rows[0] + rows[1])]), Array(flat[(rows[0] + rows[1])...])]
                    #expect(outputs == separate, "\(path) tokens \(tokens) threads \(pool.threadCount)")
                }
            }
        }
    }

    @Test func lowerLevelsIgnoreTheHigherPlanes() {
        var random = MWQRandom(seed: 7)
        let matrix = MWQFixture(rows: 40, cols: 192, group: 64, baseBits: 3, signLevels: 4, random: &random)
        for tokens in [1, 5] {
            let x = (0..<(tokens * 192)).map { _ in random.float(in: -1...1) }
            let xq = MWQReference.quantizedActivations(x, cols: 192, group: 64)
            var previous: [Float]?
            for level in 1...5 {
                let reference = matrix.reference(levels: level, xq, tokens: tokens)
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

    /// One row, group 32, b1 = 2, one sign level, worked out by hand, in tiles written byte by byte.
    @Test func handCheckedCase() {
        // Codes q_c = c % 4: in every quad the nibble of plane 0 is 0b1010, of plane 1 0b1100 (row 0
        // is the low nibble of byte 0). Sign +1 on the first 16 columns (quads 0-3), −1 on the rest.
        // s = 0.5, m = −1, s_2 = 0.25 (all exact in float16).
        var base = [UInt8](repeating: 0, count: MWQMatrixView.tileBytes(level: 1, group: 32, baseBits: 2))
        var sign = [UInt8](repeating: 0, count: MWQMatrixView.tileBytes(level: 2, group: 32, baseBits: 2))
        for c in 0..<8 {
            base[c * 16] = 0b1010
            base[(8 + c) * 16] = 0b1100
            sign[c * 16] = c < 4 ? 0b1111 : 0
        }
        func put(_ bytes: inout [UInt8], _ at: Int, _ v: Float16) { bytes[at] = UInt8(v.bitPattern & 0xFF); bytes[at + 1] = UInt8(v.bitPattern >> 8) }
        put(&base, 256, 0.5)
        put(&base, 256 + 64, -1)
        put(&sign, 128, 0.25)
        // x_c = 32c + 31: the largest is R = 1023 (group 32), so the integer activations are x itself.
        let x = (0..<32).map { Float(32 * $0 + 31) }
        // Σ x = 16864, Σ (c % 4)·x_c = 26576. Level 1: 0.5·26576 − 16864 = −3576.
        // Level 2 adds 0.25·(Σ_{c<16} x − Σ_{c≥16} x) = 0.25·(4336 − 12528) = −2048 → −5624.
        let expected: [Int: Float] = [1: -3576, 2: -5624]
        base.withUnsafeBytes { b in
            sign.withUnsafeBytes { s in
                let m = MWQMatrixView(rows: 1, cols: 32, group: 32, baseBits: 2, levels: [b.baseAddress!, s.baseAddress!])
                let w = MWQReference.dequantize(m, levels: 2)
                #expect(w[0] == -1 + 0.25 && w[3] == 0.5 + 0.25 && w[17] == -0.5 - 0.25 && w[31] == 0.5 - 0.25)
                #expect(MWQReference.quantizedActivations(x, cols: 32, group: 32) == x)
                for level in 1...2 {
                    var y: Float = 0
                    MWQReference.matmul(m, levels: level, x, tokens: 1, &y)
                    #expect(y == expected[level])
                    for path in Self.paths {
                        #expect(MWQFixture.fast(m, levels: level, x, tokens: 1, path: path) == [expected[level]!], "\(path) level \(level)")
                    }
                }
            }
        }
    }

    @Test func preparedActivationsMatchOnEveryPath() {
        var random = MWQRandom(seed: 11)
        for group in [32, 128] {
            let cols = group * 3, tokens = 2
            var x = (0..<(tokens * cols)).map { _ in random.float(in: -3...3) }
            x[5] = 0; for c in 0..<group { x[cols + c] = 0 }  // an all-zero group
            let size = MWQPreparedInput.byteCount(tokens: tokens, cols: cols, group: group)
            let prepared = Self.paths.map { path -> [UInt8] in
                var memory = [UInt32](repeating: 0xDEAD, count: size / 4)
                memory.withUnsafeMutableBytes { m in
                    MWQKernels.prepare(x, into: MWQPreparedInput(memory: m.baseAddress!, tokens: tokens, cols: cols, group: group), path: path)
                }
                return memory.withUnsafeBytes { Array($0) }
            }
            #expect(prepared.allSatisfy { $0 == prepared[0] })
            // Table entries are the sums of the quad's integer activations.
            let xq = MWQReference.quantizedActivations(x, cols: cols, group: group)
            prepared[0].withUnsafeBytes { raw in
                let p = MWQPreparedInput(memory: UnsafeMutableRawPointer(mutating: raw.baseAddress!), tokens: tokens, cols: cols, group: group)
                for t in 0..<tokens {
                    for j in 0..<(cols / group) {
                        let scale = p.scales[t * cols / group + j]
                        var total = 0
                        for c in 0..<(group / 4) {
                            let col = t * cols + j * group + 4 * c
                            let q = (0..<4).map { scale == 0 ? 0 : Int((xq[col + $0] / scale).rounded()) }
                            total += q.reduce(0, +)
                            for e in 0..<16 {
                                let entry = Int(Int16(p.tables![(t * cols + j * group + 4 * c) * 8 + e])
                                                | Int16(Int8(bitPattern: p.tables![(t * cols + j * group + 4 * c) * 8 + 16 + e])) << 8)
                                let sum = (0..<4).filter { e >> $0 & 1 == 1 }.map { q[$0] }.reduce(0, +)
                                #expect(entry == sum, "group \(group) token \(t) quad \(c) entry \(e)")
                            }
                        }
                        #expect(Int(p.sums![t * cols / group + j]) == total)
                    }
                }
            }
        }
    }

    @Test func tilesRoundTrip() {
        var random = MWQRandom(seed: 13)
        for (rows, P, S) in [(45, 3, 2), (64, 1, 1), (7, 2, 2)] {
            let group = 64, cols = 192, n = rows * (cols / group)
            let planes = (0..<(n * P * group / 32)).map { _ in random.word() }
            let scales = (0..<(n * S)).map { _ in UInt16(truncatingIfNeeded: random.word()) }
            let bytes = MWQTiles.encode(planes: planes, planesPerGroup: P, scales: scales, scalesPerGroup: S, rows: rows, cols: cols, group: group)
            #expect(bytes.count == (rows + 31) / 32 * 3 * (P * group * 4 + S * 64))
            let back = bytes.withUnsafeBytes { MWQTiles.decode($0, planesPerGroup: P, scalesPerGroup: S, rows: rows, cols: cols, group: group) }
            #expect(back.planes == planes && back.scales == scales)
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

/// A random MWQ matrix in owned memory, in the tiled layout `MWQMatrixView` documents.
final class MWQFixture {
    let view: MWQMatrixView
    let levels: [UnsafeMutableRawBufferPointer]
    private var saved: [[UInt8]] = []

    init(rows: Int, cols: Int, group: Int, baseBits: Int, signLevels: Int, random: inout MWQRandom) {
        let groups = rows * cols / group, n32 = group / 32
        let basePlanes = (0..<(groups * baseBits * n32)).map { _ in random.word() }
        var baseScales = [UInt16]()
        for _ in 0..<groups {
            // Scale and offset as a quantizer picks them: Ŵ1 spans about [−1, 1].
            let s = random.float(in: 0.5...1.5) * 2 / Float((1 << baseBits) - 1)
            let m = -s * Float((1 << baseBits) - 1) / 2 + random.float(in: -0.1...0.1)
            baseScales += [Float16(s).bitPattern, Float16(m).bitPattern]
        }
        var encoded = [MWQTiles.encode(planes: basePlanes, planesPerGroup: baseBits, scales: baseScales, scalesPerGroup: 2,
                                       rows: rows, cols: cols, group: group)]
        for k in 0..<signLevels {
            let planes = (0..<(groups * n32)).map { _ in random.word() }
            let size = 0.2 / Float(1 << k)
            let scales = (0..<groups).map { _ in Float16(random.float(in: 0.5...1.5) * size).bitPattern }
            encoded.append(MWQTiles.encode(planes: planes, planesPerGroup: 1, scales: scales, scalesPerGroup: 1,
                                           rows: rows, cols: cols, group: group))
        }
        levels = encoded.map { bytes in
            let b = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 64)
            b.copyMemory(from: UnsafeRawBufferPointer(start: bytes, count: bytes.count))
            return b
        }
        view = MWQMatrixView(rows: rows, cols: cols, group: group, baseBits: baseBits,
                             levels: levels.map { UnsafeRawPointer($0.baseAddress!) })
    }

    deinit { levels.forEach { $0.deallocate() } }

    func reference(levels: Int, _ x: [Float], tokens: Int) -> [Float] {
        var y = [Float](repeating: .nan, count: tokens * view.rows)
        MWQReference.matmul(view, levels: levels, x, tokens: tokens, &y)
        return y
    }

    /// Per output, Σ_c |Ŵ[r, c]|·step/2 (step = amax of c's group / R): how far the integer
    /// activations can move it.
    func activationErrorBound(levels: Int, _ x: [Float], tokens: Int) -> [Float] {
        let w = MWQReference.dequantize(view, levels: levels), cols = view.cols, g = view.group
        var bound = [Float](repeating: 0, count: tokens * view.rows)
        for t in 0..<tokens {
            let half = (0..<view.groups).map { j in x[(t * cols + j * g)..<(t * cols + (j + 1) * g)].map { abs($0) }.max()! / Float(2 * MWQPreparedInput.range(group: g)) }
            for r in 0..<view.rows {
                for c in 0..<cols { bound[t * view.rows + r] += abs(w[r * cols + c]) * half[c / g] }
            }
        }
        return bound
    }

    func fast(levels: Int, _ x: [Float], tokens: Int, path: KernelPath, pool: ComputePool = .shared) -> [Float] {
        Self.fast(view, levels: levels, x, tokens: tokens, path: path, pool: pool)
    }

    static func fast(_ view: MWQMatrixView, levels: Int, _ x: [Float], tokens: Int, path: KernelPath,
                     pool: ComputePool = .shared) -> [Float] {
        let size = MWQPreparedInput.byteCount(tokens: tokens, cols: view.cols, group: view.group)
        var memory = [UInt32](repeating: 0, count: size / 4)
        var y = [Float](repeating: .nan, count: tokens * view.rows)
        memory.withUnsafeMutableBytes { m in
            let p = MWQPreparedInput(memory: m.baseAddress!, tokens: tokens, cols: view.cols, group: view.group)
            MWQKernels.prepare(x, into: p, path: path)
            MWQKernels.matmul(view, levels: levels, p, &y, pool: pool, path: path)
        }
        return y
    }

    /// Overwrites sign levels `from`… (0-based) with all-ones bytes (set bits, NaN scales); `restore`
    /// undoes it.
    func scribbleOverSignLevels(from: Int) {
        saved = levels[(from + 1)...].map { Array($0) }
        for level in levels[(from + 1)...] { for i in level.indices { level[i] = 0xFF } }
    }

    func restore() {
        for (i, bytes) in saved.enumerated() { levels[levels.count - saved.count + i].copyBytes(from: bytes) }
        saved = []
    }
}
