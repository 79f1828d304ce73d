import Foundation

/// The fast kernels the model layer calls. Each has a `Reference` twin it is tested against.
/// PLACEHOLDER BODIES: they forward to `Reference` until the SIMD versions land.
public enum Kernels {
    /// y[t, r] = Σ_c W[r, c] · x[t, c]; x: [tokens, W.cols], y: [tokens, W.rows]. Split over the
    /// pool's threads by rows. Any `tokens` ≥ 1 (1 = matrix-vector).
    public static func matmul(_ w: DenseMatrix, _ x: UnsafePointer<Float>, tokens: Int, _ y: UnsafeMutablePointer<Float>,
                              pool: ComputePool = .shared) {
        Reference.matmul(w, x, tokens: tokens, y)
    }

    /// RMSNorm over `tokens` rows of n: out = x / sqrt(mean(x²) + eps) · (weight + weightOffset).
    /// `out` may equal `x`.
    public static func rmsNorm(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, weightOffset: Float = 0,
                               n: Int, tokens: Int = 1, eps: Float, _ out: UnsafeMutablePointer<Float>) {
        Reference.rmsNorm(x, weight: weight, weightOffset: weightOffset, n: n, tokens: tokens, eps: eps, out)
    }

    /// In-place softmax of n values.
    public static func softmax(_ x: UnsafeMutablePointer<Float>, n: Int) { Reference.softmax(x, n: n) }

    /// Rotate-half rotary embedding of `nHeads` consecutive heads of `headDim` at `position`.
    public static func rope(_ heads: UnsafeMutablePointer<Float>, nHeads: Int, headDim: Int, rotaryDim: Int,
                            position: Int, invFreq: UnsafePointer<Float>) {
        for h in 0..<nHeads { Reference.rope(heads + h * headDim, rotaryDim: rotaryDim, position: position, invFreq: invFreq) }
    }

    /// gate = silu(gate) · up, element-wise.
    public static func siluMul(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, n: Int) {
        Reference.siluMul(gate, up, n: n)
    }

    /// gate = gelu_tanh(gate) · up, element-wise.
    public static func geluTanhMul(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, n: Int) {
        Reference.geluTanhMul(gate, up, n: n)
    }

    /// Σ a[i]·b[i].
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, n: Int) -> Float {
        var s: Float = 0
        for i in 0..<n { s += a[i] * b[i] }
        return s
    }

    /// y += alpha · x.
    public static func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, n: Int) {
        for i in 0..<n { y[i] += alpha * x[i] }
    }

    /// y += x.
    public static func add(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, n: Int) {
        for i in 0..<n { y[i] += x[i] }
    }

    /// x *= s.
    public static func scale(_ x: UnsafeMutablePointer<Float>, by s: Float, n: Int) {
        for i in 0..<n { x[i] *= s }
    }
}

/// A fixed pool of compute threads that persist for the process (spin briefly, then sleep), so a
/// kernel call costs about a microsecond of dispatch rather than a Dispatch round trip.
/// PLACEHOLDER: runs inline until the real pool lands.
public final class ComputePool: @unchecked Sendable {
    /// One thread per core.
    public static let shared = ComputePool(threadCount: ProcessInfo.processInfo.activeProcessorCount)

    /// Threads that run work, the caller's included.
    public let threadCount: Int

    public init(threadCount: Int) { self.threadCount = max(1, threadCount) }

    /// Runs body(i) for i in 0..<n across the threads (the caller takes part); returns when all
    /// have finished. Not reentrant: body must not call parallelFor on the same pool.
    public func parallelFor(_ n: Int, _ body: (Int) -> Void) {
        for i in 0..<n { body(i) }
    }
}
