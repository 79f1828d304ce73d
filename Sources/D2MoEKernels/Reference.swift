import Foundation

/// Plain, obviously-correct versions of every kernel. The fast kernels are tested against these
/// with an error bound; nothing on a hot path calls them.
public enum Reference {
    /// y[t, r] = Σ_c W[r, c] · x[t, c] for t in 0..<tokens. x: [tokens, W.cols], y: [tokens, W.rows].
    public static func matmul(_ w: DenseMatrix, _ x: UnsafePointer<Float>, tokens: Int, _ y: UnsafeMutablePointer<Float>) {
        for t in 0..<tokens {
            for r in 0..<w.rows {
                var sum: Double = 0
                for c in 0..<w.cols { sum += Double(w.element(r, c)) * Double(x[t * w.cols + c]) }
                y[t * w.rows + r] = Float(sum)
            }
        }
    }

    /// RMSNorm of each of `tokens` rows of length n: out = x / sqrt(mean(x²) + eps) · (weight + offset).
    public static func rmsNorm(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, weightOffset: Float,
                               n: Int, tokens: Int, eps: Float, _ out: UnsafeMutablePointer<Float>) {
        for t in 0..<tokens {
            var ss: Double = 0
            for i in 0..<n { ss += Double(x[t * n + i]) * Double(x[t * n + i]) }
            let scale = 1 / (ss / Double(n) + Double(eps)).squareRoot()
            for i in 0..<n { out[t * n + i] = Float(Double(x[t * n + i]) * scale) * (weight[i] + weightOffset) }
        }
    }

    /// One attention head for one query over n cached positions, in double: out[0..<d] =
    /// Σ_j p_j · v_j with p = softmax(scale · q·k_j), k_j = keys + j·stride, v_j = values + j·stride.
    public static func attend(query q: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
                              stride: Int, n: Int, headDim d: Int, scale: Float, out: UnsafeMutablePointer<Float>) {
        var s = [Double](repeating: 0, count: n)
        for j in 0..<n {
            var dot = 0.0
            for i in 0..<d { dot += Double(q[i]) * Double(keys[j * stride + i]) }
            s[j] = dot * Double(scale)
        }
        let m = s.max()!
        var sum = 0.0
        for j in 0..<n { s[j] = Foundation.exp(s[j] - m); sum += s[j] }
        for i in 0..<d {
            var acc = 0.0
            for j in 0..<n { acc += s[j] * Double(values[j * stride + i]) }
            out[i] = Float(acc / sum)
        }
    }

    /// In-place softmax of n values.
    public static func softmax(_ x: UnsafeMutablePointer<Float>, n: Int) {
        var m = -Float.infinity
        for i in 0..<n { m = max(m, x[i]) }
        var sum: Double = 0
        for i in 0..<n { let e = Foundation.exp(Double(x[i] - m)); x[i] = Float(e); sum += e }
        for i in 0..<n { x[i] = Float(Double(x[i]) / sum) }
    }

    /// Rotary embedding, "rotate half" (NeoX/Hugging Face) layout, in place on one head of length
    /// `headDim`: the first `rotaryDim` dims rotate in pairs (i, i + rotaryDim/2) by angle
    /// position · invFreq[i].
    public static func rope(_ head: UnsafeMutablePointer<Float>, rotaryDim: Int, position: Int, invFreq: UnsafePointer<Float>) {
        let half = rotaryDim / 2
        for i in 0..<half {
            let angle = Double(position) * Double(invFreq[i])
            let c = Foundation.cos(angle), s = Foundation.sin(angle)
            let a = Double(head[i]), b = Double(head[i + half])
            head[i] = Float(a * c - b * s)
            head[i + half] = Float(b * c + a * s)
        }
    }

    /// silu(gate) · up, element-wise, into gate.
    public static func siluMul(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, n: Int) {
        for i in 0..<n { let g = Double(gate[i]); gate[i] = Float(g / (1 + Foundation.exp(-g)) * Double(up[i])) }
    }

    /// gelu_tanh(gate) · up, element-wise, into gate (Gemma's gelu_pytorch_tanh).
    public static func geluTanhMul(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, n: Int) {
        for i in 0..<n {
            let g = Double(gate[i])
            let inner = 0.7978845608028654 * (g + 0.044715 * g * g * g)
            gate[i] = Float(0.5 * g * (1 + Foundation.tanh(inner)) * Double(up[i]))
        }
    }
}
