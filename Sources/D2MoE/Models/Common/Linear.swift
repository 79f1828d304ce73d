import D2MoEKernels

/// An MWQ matrix served in place from its container at a fixed level.
struct PackedMWQ: @unchecked Sendable {
    let view: MWQMatrixView
    /// 1-based level the products use.
    let level: Int
    /// Keeps the mapping the view points into alive.
    let owner: AnyObject
}

/// A source that can hand out packed MWQ matrices instead of float ones.
protocol PackedWeightSource: WeightSource {
    /// The packed matrix `name`, nil when it is stored unquantized.
    func packed(_ name: String) throws -> PackedMWQ?
}

/// A linear layer y = W·x (+ b) on a batch of token rows.
struct Linear {
    enum Storage {
        /// [outFeatures, inFeatures]
        case dense(DenseMatrix)
        /// [outFeatures, inFeatures], computed on the packed bit-planes.
        case mwq(PackedMWQ)
    }

    let storage: Storage
    /// [outFeatures], nil when the layer has no bias.
    let bias: [Float]?

    var inFeatures: Int { switch storage { case .dense(let w): w.cols; case .mwq(let p): p.view.cols } }
    var outFeatures: Int { switch storage { case .dense(let w): w.rows; case .mwq(let p): p.view.rows } }
    /// The float matrix, nil for packed layers.
    var dense: DenseMatrix? { if case .dense(let w) = storage { return w }; return nil }
    /// Bytes one product reads.
    var byteCount: Int { switch storage { case .dense(let w): w.byteCount; case .mwq(let p): p.view.byteCount(levels: p.level) } }

    init(_ source: WeightSource, _ prefix: String, out: Int, in inFeatures: Int, bias hasBias: Bool = false,
         options: LoadOptions) throws {
        let name = prefix + ".weight"
        if let packedSource = source as? PackedWeightSource, let p = try packedSource.packed(name) {
            guard p.view.rows == out, p.view.cols == inFeatures else {
                throw ModelError("\(source.origin): tensor '\(name)' has shape [\(p.view.rows), \(p.view.cols)], expected [\(out), \(inFeatures)]")
            }
            storage = .mwq(p)
        } else {
            storage = .dense(try source.matrix(name, rows: out, cols: inFeatures, dtype: options.dtype))
        }
        bias = hasBias ? try source.vector(prefix + ".bias", count: out) : nil
    }

    /// A packed MWQ layer over memory someone else holds (the expert pool).
    init(packed: PackedMWQ) {
        storage = .mwq(packed)
        bias = nil
    }

    init(weight: DenseMatrix, bias: [Float]? = nil) {
        storage = .dense(weight)
        self.bias = bias
    }

    /// y: [tokens, out] = x: [tokens, in] · Wᵀ (+ b).
    func callAsFunction(_ x: UnsafePointer<Float>, tokens: Int, _ y: UnsafeMutablePointer<Float>) {
        switch storage {
        case .dense(let w):
            Kernels.matmul(w, x, tokens: tokens, y)
        case .mwq(let p):
            withUnsafeTemporaryAllocation(of: MWQProduct.self, capacity: 1) { list in
                list.initializeElement(at: 0, to: MWQProduct(p.view, levels: p.level, y))
                Self.products(UnsafeBufferPointer(list), x, tokens: tokens)
                list.deinitialize()
            }
        }
        addBias(y, tokens: tokens)
    }

    /// Two or three layers reading the same x (gate and up; q, k and v): packed layers of one
    /// group share the prepared input and one pass over the pool, so the small ones do not each
    /// pay a dispatch. Others run one after the other.
    static func shared(_ x: UnsafePointer<Float>, tokens: Int, _ a: Linear, _ ya: UnsafeMutablePointer<Float>,
                       _ b: Linear, _ yb: UnsafeMutablePointer<Float>,
                       _ c: Linear? = nil, _ yc: UnsafeMutablePointer<Float>? = nil) {
        func packed(_ l: Linear?) -> PackedMWQ? { if case .mwq(let p)? = l?.storage { return p }; return nil }
        let pc = packed(c)
        guard let pa = packed(a), let pb = packed(b), pb.view.group == pa.view.group, pb.view.cols == pa.view.cols,
              c == nil || (pc?.view.group == pa.view.group && pc?.view.cols == pa.view.cols) else {
            a(x, tokens: tokens, ya)
            b(x, tokens: tokens, yb)
            if let c, let yc { c(x, tokens: tokens, yc) }
            return
        }
        let count = c == nil ? 2 : 3
        withUnsafeTemporaryAllocation(of: MWQProduct.self, capacity: count) { list in
            list.initializeElement(at: 0, to: MWQProduct(pa.view, levels: pa.level, ya))
            list.initializeElement(at: 1, to: MWQProduct(pb.view, levels: pb.level, yb))
            if let pc, let yc { list.initializeElement(at: 2, to: MWQProduct(pc.view, levels: pc.level, yc)) }
            products(UnsafeBufferPointer(list), x, tokens: tokens)
            list.deinitialize()
        }
        a.addBias(ya, tokens: tokens)
        b.addBias(yb, tokens: tokens)
        if let c, let yc { c.addBias(yc, tokens: tokens) }
    }

    /// The packed products of `list`, all reading x: [tokens, cols], which is prepared once.
    private static func products(_ list: UnsafeBufferPointer<MWQProduct>, _ x: UnsafePointer<Float>, tokens: Int) {
        let view = list[0].matrix
        // Long inputs (prompts, experts' shares of them) take the route that requantizes each block of
        // rows once per call.
        let gemm = list.allSatisfy { MWQKernels.prefersGemm(tokens: tokens, planes: $0.planes) }
        let route: MWQPreparedInput.Route = gemm ? .gemm : .tables
        // Tables are 8 bytes per input per token: stack space for decode steps.
        let size = MWQPreparedInput.byteCount(tokens: tokens, cols: view.cols, group: view.group, route: route)
        withUnsafeTemporaryAllocation(byteCount: size, alignment: 64) { memory in
            let input = MWQPreparedInput(memory: memory.baseAddress!, tokens: tokens, cols: view.cols, group: view.group, route: route)
            MWQKernels.prepare(x, into: input)
            MWQKernels.matmul(list, input)
        }
    }

    private func addBias(_ y: UnsafeMutablePointer<Float>, tokens: Int) {
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
