import Testing
import D2MoEKernels

/// The `.gemm` route of MWQ products (long inputs: weights requantized to int16) against its plain
/// rule, against the table route and against the float product, on every path this machine runs.
@Suite struct MWQWideTests {
    static var paths: [KernelPath] { KernelPath.best == .avx2 ? [.avx2, .portable] : [.portable] }

    static func gemmProduct(_ view: MWQMatrixView, levels: Int, _ x: [Float], tokens: Int, path: KernelPath,
                            pool: ComputePool = .shared) -> [Float] {
        let size = MWQPreparedInput.byteCount(tokens: tokens, cols: view.cols, group: view.group, route: .gemm)
        var memory = [UInt32](repeating: 0, count: size / 4)
        var y = [Float](repeating: .nan, count: tokens * view.rows)
        memory.withUnsafeMutableBytes { m in
            let p = MWQPreparedInput(memory: m.baseAddress!, tokens: tokens, cols: view.cols, group: view.group, route: .gemm)
            MWQKernels.prepare(x, into: p, path: path)
            MWQKernels.matmul(view, levels: levels, p, &y, pool: pool, path: path)
        }
        return y
    }

    static func relativeError(_ a: [Float], _ b: [Float]) -> Float {
        let scale = b.map { abs($0) }.max() ?? 0
        let diff = zip(a, b).map { abs($0 - $1) }.max() ?? 0
        return scale == 0 ? diff : diff / scale
    }

    @Test(arguments: [32, 64, 128, 256])
    func gemmRouteMatchesItsRuleAndTheTableRoute(group: Int) {
        var random = MWQRandom(seed: 100 + UInt64(group))
        var cases = 0
        for (baseBits, signLevels) in [(1, 0), (1, 3), (2, 2), (3, 1), (4, 0), (5, 3), (8, 0)] {
            // Partial row blocks and octets; more than 512 columns (the kernel's chunk) for some.
            let rows = [5, 37, 70][(baseBits + signLevels) % 3]
            let cols = [group, 3 * group, (512 / group + 2) * group][(baseBits * 2 + signLevels) % 3]
            let matrix = MWQFixture(rows: rows, cols: cols, group: group, baseBits: baseBits, signLevels: signLevels, random: &random)
            let level = 1 + signLevels
            for tokens in [1, 3, 4, 9] {
                var x = (0..<(tokens * cols)).map { _ in random.float(in: -1...1) }
                x[0] = 7  // an outlier: its group's other activations get a coarse grid
                let rule = MWQReference.gemmMatmul(matrix.view, levels: level, x, tokens: tokens)
                let bound = Self.weightErrorBound(matrix.view, levels: level, x, tokens: tokens)
                var results = [[Float]]()
                for path in Self.paths {
                    let fast = Self.gemmProduct(matrix.view, levels: level, x, tokens: tokens, path: path)
                    results.append(fast)
                    let err = Self.relativeError(fast, rule)
                    #expect(err < 1e-5, "\(path) g\(group) b1=\(baseBits) L=\(level) \(rows)x\(cols) tokens \(tokens): \(err)")
                    // Same activations as the table route: only the int16 weight grid separates them.
                    let tables = matrix.fast(levels: level, x, tokens: tokens, path: path)
                    let within = zip(zip(fast, tables), bound).allSatisfy { abs($0.0 - $0.1) <= $1 * 1.01 + 1e-5 }
                    #expect(within, "\(path) g\(group) b1=\(baseBits) L=\(level) \(rows)x\(cols) tokens \(tokens) against the table route")
                    cases += 1
                }
                // The portable path follows the AVX2 kernel's order of operations.
                #expect(results.allSatisfy { $0 == results[0] }, "g\(group) b1=\(baseBits) L=\(level) tokens \(tokens)")
            }
        }
        #expect(cases == 7 * 4 * Self.paths.count)
    }

    /// Per output, how far the int16 weight grid can move it: Σ_c ws/2·|x̃| (x̃ the prepared
    /// activations, at most |x| + its step).
    static func weightErrorBound(_ view: MWQMatrixView, levels: Int, _ x: [Float], tokens: Int) -> [Float] {
        let cols = view.cols, g = view.group, G = view.groups
        let ws = MWQReference.gemmWeights(view, levels: levels).scales
        let xt = MWQReference.quantizedActivations(x, cols: cols, group: g)
        var bound = [Float](repeating: 0, count: tokens * view.rows)
        for t in 0..<tokens {
            for r in 0..<view.rows {
                for c in 0..<cols { bound[t * view.rows + r] += ws[r * G + c / g] / 2 * abs(xt[t * cols + c]) }
            }
        }
        return bound
    }

    /// The rule's weights are within (planes + 1)/2 steps of Ŵ (one rounding per integer
    /// coefficient), and its grid spans Ŵ: |wq| comes within that of the range in most groups (the
    /// bound is the level's extreme value, which random codes hit).
    @Test func gemmWeightsRoundŴToTheirGrid() {
        var random = MWQRandom(seed: 7)
        let matrix = MWQFixture(rows: 40, cols: 256, group: 128, baseBits: 2, signLevels: 2, random: &random)
        let w = MWQReference.dequantize(matrix.view, levels: 3)
        let (wq, ws) = MWQReference.gemmWeights(matrix.view, levels: 3)
        var full = 0
        for r in 0..<40 {
            for j in 0..<2 {
                let cols = (j * 128)..<((j + 1) * 128)
                // C, two base planes and two sign planes: five roundings.
                #expect(cols.allSatisfy { abs(Float(wq[r * 256 + $0]) * ws[r * 2 + j] - w[r * 256 + $0]) <= ws[r * 2 + j] * 2.5001 + 1e-7 })
                if cols.contains(where: { abs(Int(wq[r * 256 + $0])) >= 32750 - 3 }) { full += 1 }
            }
        }
        #expect(full > 40)
    }

    /// A `.gemm` input holds the same integers and scales as a `.tables` input, on every path.
    @Test func gemmInputHoldsTheTableRoutesIntegers() {
        var random = MWQRandom(seed: 9)
        let group = 64, cols = 192, tokens = 3
        var x = (0..<(tokens * cols)).map { _ in random.float(in: -3...3) }
        for c in 0..<group { x[cols + c] = 0 }  // an all-zero group
        let reference = MWQReference.quantizedActivations(x, cols: cols, group: group)
        for path in Self.paths {
            let size = MWQPreparedInput.byteCount(tokens: tokens, cols: cols, group: group, route: .gemm)
            var memory = [UInt32](repeating: 0xDEAD, count: size / 4)
            memory.withUnsafeMutableBytes { m in
                let p = MWQPreparedInput(memory: m.baseAddress!, tokens: tokens, cols: cols, group: group, route: .gemm)
                MWQKernels.prepare(x, into: p, path: path)
                #expect(p.tables == nil && p.sums == nil)
                let values = (0..<(tokens * cols)).map { Float(p.integers![$0]) * p.scales[$0 / group] }
                #expect(values == reference, "\(path)")
                #expect((0..<(tokens * cols)).contains { abs(Int(p.integers![$0])) == MWQPreparedInput.range(group: group) })
            }
        }
    }

    /// Split over threads, the gemm route gives what one thread gives.
    @Test func gemmRouteSplitOverThePoolMatchesOneThread() {
        var random = MWQRandom(seed: 23)
        let matrix = MWQFixture(rows: 650, cols: 256, group: 64, baseBits: 2, signLevels: 2, random: &random)
        let x = (0..<(50 * 256)).map { _ in random.float(in: -1...1) }
        for path in Self.paths {
            let one = Self.gemmProduct(matrix.view, levels: 3, x, tokens: 50, path: path, pool: ComputePool(threadCount: 1))
            let three = Self.gemmProduct(matrix.view, levels: 3, x, tokens: 50, path: path, pool: ComputePool(threadCount: 3))
            #expect(one == three, "\(path)")
        }
    }
}
