import Foundation
import Testing
import D2MoEKernels

/// Every fast kernel against its plain reference, on every path this machine can run.
@Suite struct KernelTests {
    var generator = SeededRandom(seed: 11)

    static var paths: [KernelPath] { KernelPath.best == .avx2 ? [.avx2, .portable] : [.portable] }

    mutating func randoms(_ n: Int) -> [Float] { (0..<n).map { _ in Float(generator.uniform() * 2 - 1) } }

    @Test(arguments: KernelPath.allCases, ElementType.allCases)
    mutating func matmulMatchesTheReference(path: KernelPath, type: ElementType) throws {
        guard Self.paths.contains(path) else { return }
        for (rows, cols) in [(1, 1), (5, 17), (37, 64), (64, 576), (131, 200)] {
            let w = DenseMatrix.random(rows: rows, cols: cols, type: type, values: randoms(rows * cols))
            for tokens in [1, 2, 3, 5, 8, 17] {
                let x = randoms(tokens * cols)
                var fast = [Float](repeating: .nan, count: tokens * rows), reference = fast
                Kernels.matmul(w, x, tokens: tokens, &fast, path: path)
                Reference.matmul(w, x, tokens: tokens, &reference)
                // Float accumulation over `cols` terms of magnitude ≤ 1.
                let bound = 1e-6 * Float(cols).squareRoot() * 4
                let err = zip(fast, reference).map { abs($0 - $1) }.max()!
                #expect(err <= bound, "\(path) \(type) \(rows)x\(cols) tokens \(tokens): error \(err)")
            }
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

    @Test func nestedParallelForRunsInlineInsteadOfDeadlocking() {
        let pool = ComputePool(threadCount: 2)
        let total = UnsafeMutablePointer<Int>.allocate(capacity: 16)
        total.initialize(repeating: 0, count: 16)
        pool.parallelFor(4) { i in pool.parallelFor(4) { j in total[i * 4 + j] += 1 } }
        #expect((0..<16).allSatisfy { total[$0] == 1 })
        total.deallocate()
    }

    @Test func halfAndBFloat16ConversionsAreExact() {
        for bits in stride(from: UInt16(0), to: UInt16.max, by: 7) where !Float16(bitPattern: bits).isNaN {
            #expect(floatFromHalfBits(bits) == Float(Float16(bitPattern: bits)))
        }
        #expect(bfloat16BitsFromFloat(1.00390625) == 0x3F80)  // ties round to even
        #expect(bfloat16BitsFromFloat(-2.5) == 0xC020)
    }

    func maxError(_ a: [Float], _ b: [Float]) -> Float { zip(a, b).map { abs($0 - $1) }.max() ?? 0 }
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
        let buffer = AlignedBuffer(byteCount: rows * cols * type.byteCount)
        for (i, v) in values.enumerated() {
            switch type {
            case .f32: buffer.pointer.storeBytes(of: v, toByteOffset: i * 4, as: Float.self)
            case .f16: buffer.pointer.storeBytes(of: halfBitsFromFloat(v), toByteOffset: i * 2, as: UInt16.self)
            case .bf16: buffer.pointer.storeBytes(of: bfloat16BitsFromFloat(v), toByteOffset: i * 2, as: UInt16.self)
            }
        }
        return DenseMatrix(rows: rows, cols: cols, elementType: type, base: buffer.pointer, owner: buffer)
    }
}
