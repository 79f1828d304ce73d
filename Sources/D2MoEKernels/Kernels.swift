import CD2MoEKernels
import Foundation

/// How matrix products run on this processor.
public enum KernelPath: String, Sendable, CaseIterable {
    /// AVX2 + FMA (+ F16C) in the C target.
    case avx2
    /// Swift SIMD, for any processor.
    case portable

    /// The best path this processor supports.
    public static let best: KernelPath = {
        let f = d2moe_cpu_features()
        let need = UInt32(D2MOE_CPU_AVX2) | UInt32(D2MOE_CPU_FMA) | UInt32(D2MOE_CPU_F16C)
        return f & need == need ? .avx2 : .portable
    }()
}

/// The fast kernels the model layer calls. Each has a `Reference` twin it is tested against.
public enum Kernels {
    /// Q8_0 products of at least this many tokens take the int16 GEMM route on AVX2 (activations
    /// at ±1023 per 32 columns instead of int8, so also closer to the float product). Measured on
    /// 1536x576, one core: 1.2x the int8 kernel at 4 tokens, 1.6x at 8, 2.3x at 128.
    public static let q8GemmMinTokens = 4

    /// y[t, r] = Σ_c W[r, c] · x[t, c]; x: [tokens, W.cols], y: [tokens, W.rows]. Rows are split
    /// over the pool's threads.
    public static func matmul(_ w: DenseMatrix, _ x: UnsafePointer<Float>, tokens: Int, _ y: UnsafeMutablePointer<Float>,
                              pool: ComputePool = .shared, path: KernelPath = .best) {
        // Chunks of rows, a multiple of 4, about 4 per thread so uneven progress evens out;
        // small products stay on one thread, where dispatch would cost more than it saves.
        let work = w.rows * w.cols * tokens
        let chunks = work < 32_768 ? 1 : min(pool.threadCount * 4, max(1, w.rows / 16))
        let per = ((w.rows + chunks - 1) / chunks + 3) & ~3
        let n = (w.rows + per - 1) / per
        if w.elementType == .q8_0, path == .avx2, tokens >= q8GemmMinTokens {
            // int16 activations per 32 columns (the MWQ kernels' integers at group 32) and the
            // codes themselves as int16 weights: the GEMM route of mwq_gemm_avx2.c.
            withUnsafeTemporaryAllocation(byteCount: tokens * w.cols * 2 + tokens * w.cols / 8, alignment: 64) { m in
                let xs = m.baseAddress!.bindMemory(to: Float.self, capacity: tokens * w.cols / 32)
                let xq = (m.baseAddress! + tokens * w.cols / 8).bindMemory(to: Int16.self, capacity: tokens * w.cols)
                d2moe_mwq_prepare_avx2(x, tokens, w.cols, 32, nil, xs, nil, xq)
                pool.parallelFor(n) { chunk in
                    let r0 = chunk * per, r1 = min(w.rows, r0 + per)
                    d2moe_q8_gemm_avx2(w.base, w.rows, w.cols, xq, xs, tokens, y, r0, r1)
                }
            }
            return
        }
        if w.elementType == .q8_0 {
            // Activations to Q8_0 as well: tokens·cols bytes and a scale per 32, on the stack for decode.
            withUnsafeTemporaryAllocation(byteCount: tokens * w.cols + tokens * w.cols / 8, alignment: 64) { m in
                let xq = m.baseAddress!.bindMemory(to: Int8.self, capacity: tokens * w.cols)
                let xs = (m.baseAddress! + tokens * w.cols).bindMemory(to: Float.self, capacity: tokens * w.cols / 32)
                switch path {
                case .avx2: d2moe_q8_quantize_avx2(x, tokens * w.cols, xq, xs)
                case .portable: PortableKernels.quantizeQ8(x, n: tokens * w.cols, xq, xs)
                }
                pool.parallelFor(n) { chunk in
                    let r0 = chunk * per, r1 = min(w.rows, r0 + per)
                    switch path {
                    case .avx2: d2moe_q8_matmul_avx2(w.base, w.rows, w.cols, xq, xs, tokens, y, r0, r1)
                    case .portable: PortableKernels.matmulQ8(w, xq, xs, tokens: tokens, y, rows: r0..<r1)
                    }
                }
            }
            return
        }
        let elem: Int32 = w.elementType == .f32 ? Int32(D2MOE_F32) : w.elementType == .f16 ? Int32(D2MOE_F16) : Int32(D2MOE_BF16)
        pool.parallelFor(n) { chunk in
            let r0 = chunk * per, r1 = min(w.rows, r0 + per)
            switch path {
            case .avx2:
                d2moe_matmul_avx2(w.base, elem, w.rows, w.cols, x, tokens, y, r0, r1)
            case .portable:
                PortableKernels.matmul(w, x, tokens: tokens, y, rows: r0..<r1)
            }
        }
    }

    /// RMSNorm over `tokens` rows of n: out = x / sqrt(mean(x²) + eps) · (weight + weightOffset).
    /// `out` may equal `x`.
    public static func rmsNorm(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, weightOffset: Float = 0,
                               n: Int, tokens: Int = 1, eps: Float, _ out: UnsafeMutablePointer<Float>) {
        for t in 0..<tokens {
            let row = x + t * n
            let ss = dot(row, row, n: n)
            let scale = 1 / (ss / Float(n) + eps).squareRoot()
            let o = out + t * n
            for i in 0..<n { o[i] = row[i] * scale * (weight[i] + weightOffset) }
        }
    }

    /// One attention head for one query over n ≥ 1 cached positions: out[0..<headDim] = Σ_j p_j · v_j
    /// with p = softmax(scale · q·k_j), k_j = keys + j·stride and v_j = values + j·stride.
    /// scores: n floats of scratch. On AVX2 one C pass (four keys per horizontal sum, a vector exp,
    /// the output held in registers across the values) when headDim is a multiple of 8.
    public static func attend(query: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
                              stride: Int, n: Int, headDim: Int, scale: Float, scores: UnsafeMutablePointer<Float>,
                              out: UnsafeMutablePointer<Float>, path: KernelPath = .best) {
        if path == .avx2 && headDim % 8 == 0 {
            d2moe_attend_avx2(query, keys, values, stride, n, headDim, scale, scores, out)
            return
        }
        for j in 0..<n { scores[j] = dot(query, keys + j * stride, n: headDim) * scale }
        softmax(scores, n: n)
        out.initialize(repeating: 0, count: headDim)
        for j in 0..<n { axpy(scores[j], values + j * stride, out, n: headDim) }
    }

    /// In-place softmax of n values.
    public static func softmax(_ x: UnsafeMutablePointer<Float>, n: Int) {
        var m = -Float.infinity
        for i in 0..<n { m = max(m, x[i]) }
        var sum: Float = 0
        for i in 0..<n { let e = Foundation.exp(x[i] - m); x[i] = e; sum += e }
        let inv = 1 / sum
        for i in 0..<n { x[i] *= inv }
    }

    /// Rotate-half rotary embedding of `nHeads` consecutive heads of `headDim` at `position`.
    public static func rope(_ heads: UnsafeMutablePointer<Float>, nHeads: Int, headDim: Int, rotaryDim: Int,
                            position: Int, invFreq: UnsafePointer<Float>) {
        let half = rotaryDim / 2
        // Angles in double: positions reach thousands and float would lose the low bits.
        for i in 0..<half {
            let angle = Double(position) * Double(invFreq[i])
            let c = Float(Foundation.cos(angle)), s = Float(Foundation.sin(angle))
            for h in 0..<nHeads {
                let p = heads + h * headDim
                let a = p[i], b = p[i + half]
                p[i] = a * c - b * s
                p[i + half] = b * c + a * s
            }
        }
    }

    /// gate = silu(gate) · up, element-wise, eight at a time with `exp8` (a prompt's FFNs call
    /// it on tokens × hidden values, where the scalar exp was 4-5% of the time).
    public static func siluMul(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, n: Int) {
        var i = 0
        while i + 8 <= n {
            let g = UnsafeRawPointer(gate + i).loadUnaligned(as: SIMD8<Float>.self)
            let u = UnsafeRawPointer(up + i).loadUnaligned(as: SIMD8<Float>.self)
            UnsafeMutableRawPointer(gate + i).storeBytes(of: g / (1 + exp8(-g)) * u, as: SIMD8<Float>.self)
            i += 8
        }
        for j in i..<n { let g = gate[j]; gate[j] = g / (1 + Foundation.exp(-g)) * up[j] }
    }

    /// e^x for eight floats, within 2 ulp over the float range (Cephes' expf: x = n·ln 2 + r with
    /// |r| ≤ ln 2 / 2, a degree-6 polynomial for e^r, 2^n from the exponent bits); inputs are
    /// clamped to [−87.3, 88.3], so e^x never overflows to infinity nor drops below the smallest
    /// normal float. Only arithmetic and bit casts: the generic SIMD conversions and roundings
    /// are scalar loops here.
    @inline(__always)
    static func exp8(_ x: SIMD8<Float>) -> SIMD8<Float> {
        var x = x
        x.replace(with: SIMD8(repeating: -87.3), where: x .< -87.3)
        x.replace(with: SIMD8(repeating: 88.3), where: x .> 88.3)
        // Adding 1.5·2^23 rounds x·log2(e) to the nearest integer n, which then sits in the low
        // mantissa bits: n in float, and n as an integer from the bits.
        let magic = SIMD8<Float>(repeating: 12_582_912)
        let shifted = x * 1.442_695_04 + magic
        let n = shifted - magic
        let k = unsafeBitCast(shifted, to: SIMD8<Int32>.self) &- unsafeBitCast(magic, to: SIMD8<Int32>.self)
        // ln 2 in two parts, so that n·ln 2 is subtracted without losing r's low bits.
        let r = x - n * 0.693_359_375 + n * 2.121_944_4e-4
        var p = SIMD8<Float>(repeating: 1.987_569_15e-4)
        p = p * r + 1.398_199_95e-3
        p = p * r + 8.333_451_9e-3
        p = p * r + 4.166_579_59e-2
        p = p * r + 1.666_666_55e-1
        p = p * r + 5.000_000_12e-1
        let e = p * r * r + r + 1
        return e * unsafeBitCast((k &+ 127) &<< 23, to: SIMD8<Float>.self)
    }

    /// gate = gelu_tanh(gate) · up, element-wise.
    public static func geluTanhMul(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, n: Int) {
        for i in 0..<n {
            let g = gate[i]
            gate[i] = 0.5 * g * (1 + Foundation.tanh(0.7978845608 * (g + 0.044715 * g * g * g))) * up[i]
        }
    }

    /// Σ a[i]·b[i].
    @inlinable
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, n: Int) -> Float {
        var s0 = SIMD8<Float>(), s1 = SIMD8<Float>()
        var i = 0
        let ra = UnsafeRawPointer(a), rb = UnsafeRawPointer(b)
        while i + 16 <= n {
            s0 += ra.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self) * rb.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            s1 += ra.loadUnaligned(fromByteOffset: i * 4 + 32, as: SIMD8<Float>.self) * rb.loadUnaligned(fromByteOffset: i * 4 + 32, as: SIMD8<Float>.self)
            i += 16
        }
        var s = (s0 + s1).sum()
        while i < n { s += a[i] * b[i]; i += 1 }
        return s
    }

    /// y += alpha · x.
    @inlinable
    public static func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, n: Int) {
        var i = 0
        let rx = UnsafeRawPointer(x), ry = UnsafeMutableRawPointer(y)
        let a = SIMD8<Float>(repeating: alpha)
        while i + 8 <= n {
            let v = ry.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self) + a * rx.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            ry.storeBytes(of: v, toByteOffset: i * 4, as: SIMD8<Float>.self)
            i += 8
        }
        while i < n { y[i] += alpha * x[i]; i += 1 }
    }

    /// y += x.
    public static func add(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, n: Int) { axpy(1, x, y, n: n) }

    /// x *= s.
    public static func scale(_ x: UnsafeMutablePointer<Float>, by s: Float, n: Int) {
        for i in 0..<n { x[i] *= s }
    }
}

/// Swift SIMD versions for processors without AVX2 (and the fallback the tests compare too).
enum PortableKernels {
    static func matmul(_ w: DenseMatrix, _ x: UnsafePointer<Float>, tokens: Int, _ y: UnsafeMutablePointer<Float>, rows: Range<Int>) {
        let cols = w.cols
        switch w.elementType {
        case .f32:
            let base = w.base.assumingMemoryBound(to: Float.self)
            for t in 0..<tokens {
                for r in rows { y[t * w.rows + r] = Kernels.dot(base + r * cols, x + t * cols, n: cols) }
            }
        case .f16, .bf16, .q8_0:
            for t in 0..<tokens {
                let xt = x + t * cols
                for r in rows {
                    var s: Float = 0
                    for c in 0..<cols { s += w.element(r, c) * xt[c] }
                    y[t * w.rows + r] = s
                }
            }
        }
    }

    /// Q8_0 activations, as d2moe_q8_quantize_avx2 makes them (the same rounding, so the same codes).
    static func quantizeQ8(_ x: UnsafePointer<Float>, n: Int, _ xq: UnsafeMutablePointer<Int8>, _ xs: UnsafeMutablePointer<Float>) {
        for b in 0..<(n / 32) {
            var amax: Float = 0
            for i in 0..<32 { amax = max(amax, abs(x[32 * b + i])) }
            xs[b] = amax / 127
            let inv = amax > 0 ? 127 / amax : 0
            for i in 0..<32 { xq[32 * b + i] = Int8((x[32 * b + i] * inv).rounded(.toNearestOrEven)) }
        }
    }

    static func matmulQ8(_ w: DenseMatrix, _ xq: UnsafePointer<Int8>, _ xs: UnsafePointer<Float>, tokens: Int,
                         _ y: UnsafeMutablePointer<Float>, rows: Range<Int>) {
        let cols = w.cols, blocks = cols / 32, rowBytes = w.elementType.rowBytes(cols: cols)
        for t in 0..<tokens {
            for r in rows {
                var s: Float = 0
                for b in 0..<blocks {
                    let block = w.base + r * rowBytes + 34 * b
                    var dot: Int32 = 0
                    for i in 0..<32 { dot += Int32(block.load(fromByteOffset: 2 + i, as: Int8.self)) * Int32(xq[t * cols + 32 * b + i]) }
                    s += Float(dot) * floatFromHalfBits(block.loadUnaligned(as: UInt16.self)) * xs[t * blocks + b]
                }
                y[t * w.rows + r] = s
            }
        }
    }
}
