import D2MoEKernels

/// A linear layer y = W·x (+ b) on a batch of token rows.
struct Linear {
    /// [outFeatures, inFeatures]
    let weight: DenseMatrix
    /// [outFeatures], nil when the layer has no bias.
    let bias: [Float]?

    var inFeatures: Int { weight.cols }
    var outFeatures: Int { weight.rows }

    init(_ source: WeightSource, _ prefix: String, out: Int, in inFeatures: Int, bias hasBias: Bool = false,
         options: LoadOptions) throws {
        weight = try source.matrix(prefix + ".weight", rows: out, cols: inFeatures, dtype: options.dtype)
        bias = hasBias ? try source.vector(prefix + ".bias", count: out) : nil
    }

    init(weight: DenseMatrix, bias: [Float]? = nil) {
        self.weight = weight
        self.bias = bias
    }

    /// y: [tokens, out] = x: [tokens, in] · Wᵀ (+ b).
    func callAsFunction(_ x: UnsafePointer<Float>, tokens: Int, _ y: UnsafeMutablePointer<Float>) {
        Kernels.matmul(weight, x, tokens: tokens, y)
        if let bias {
            bias.withUnsafeBufferPointer { b in
                for t in 0..<tokens { Kernels.add(b.baseAddress!, y + t * outFeatures, n: outFeatures) }
            }
        }
    }
}

/// RMSNorm with a learned scale; Gemma checkpoints store the scale minus one (`weightOffset` 1).
struct RMSNorm {
    /// [n]
    let weight: [Float]
    let weightOffset: Float
    let eps: Float

    init(_ source: WeightSource, _ name: String, count: Int, eps: Float, weightOffset: Float = 0) throws {
        weight = try source.vector(name, count: count)
        self.eps = eps
        self.weightOffset = weightOffset
    }

    /// Normalises each of `tokens` rows of `weight.count` values.
    func callAsFunction(_ x: UnsafePointer<Float>, tokens: Int, _ out: UnsafeMutablePointer<Float>) {
        weight.withUnsafeBufferPointer { w in
            Kernels.rmsNorm(x, weight: w.baseAddress!, weightOffset: weightOffset, n: weight.count, tokens: tokens,
                            eps: eps, out)
        }
    }
}
