import Foundation
import D2MoEKernels

/// What a loaded model is: the numbers `inspect` prints and the engine sizes its caches by.
public struct ModelInfo: Sendable {
    /// config.json's model_type (GGUF architectures are mapped to it).
    public var modelType: String
    public var vocabularySize: Int
    public var hiddenSize: Int
    public var layerCount: Int
    public var headCount: Int
    public var kvHeadCount: Int
    public var headDim: Int
    /// Context length the model was trained for.
    public var contextLength: Int
    /// Routed experts per MoE layer (0 for a dense model) and experts chosen per token.
    public var expertCount: Int
    public var expertsPerToken: Int
    /// Number of layers whose feed-forward block is sparse.
    public var moeLayerCount: Int
}

/// A decoder-only transformer assembled from the shared blocks by an architecture file.
/// `forward` runs a batch of tokens from any number of sequences, each with its own KV cache.
/// One forward at a time: callers serialise (the generation scheduler does).
public final class TransformerModel: @unchecked Sendable {
    public let info: ModelInfo
    /// [vocab, hidden], float32 for direct row lookup.
    let embeddings: DenseMatrix
    /// Multiplies looked-up embeddings (Gemma: √hidden).
    let embeddingScale: Float
    let layers: [DecoderLayer]
    let finalNorm: RMSNorm
    /// [vocab, hidden]; the embedding matrix itself when tied.
    let lmHead: DenseMatrix
    /// Final logits pass through c·tanh(x/c) when set.
    let finalSoftcap: Float?
    /// Routed experts of the MoE layers; nil for dense models.
    public internal(set) var experts: ExpertBackend?
    /// Calibration hooks (see `FeedForwardObserver`).
    public var observer: FeedForwardObserver?
    /// Replaces or records the routers' choices (trace replay, `--record-trace`).
    public var routingHook: RoutingHook?
    /// Per-token bit-widths of the experts held in memory (`--bit-policy` without a budget) and
    /// what they chose; nil serves every expert at the level it was loaded at.
    public internal(set) var bitRouting: BitRouting?
    /// A dense model's FFNs at every level, when `bitRouting` covers them.
    var mixedDense: MixedLevelDense?
    /// Router training (`--objective kl`): sees the residual stream entering each decoder layer
    /// ([tokens, hidden]), and starts a pass at a layer from such a saved stream. Resuming is only
    /// valid over the same batch whose earlier run left the layers before it in the cache.
    var captureResidual: ((Int, UnsafePointer<Float>) -> Void)?
    var resume: (layer: Int, residual: UnsafePointer<Float>)?

    let pool: ComputePool
    private let scratch = Scratch()
    /// [decoder layer] → the next sparse block after it, for prefetching; after the last one, the
    /// first (of the next step: the I/O threads would otherwise idle from the last MoE layer's reads
    /// to the first one's, and with many sequences in a step most of its experts are needed again).
    private lazy var nextMoE: [SparseMoE?] = {
        let sparse = layers.map { layer -> SparseMoE? in if case .sparse(let m) = layer.ffn { m } else { nil } }
        let first = sparse.lazy.compactMap { $0 }.first
        return layers.indices.map { l in
            sparse[(l + 1)...].lazy.compactMap { $0 }.first ?? (first?.moeLayer == sparse[l]?.moeLayer ? nil : first)
        }
    }()
    private let lock = NSLock()

    init(info: ModelInfo, embeddings: DenseMatrix, embeddingScale: Float = 1, layers: [DecoderLayer],
         finalNorm: RMSNorm, lmHead: DenseMatrix, finalSoftcap: Float? = nil, experts: ExpertBackend?,
         pool: ComputePool = .shared) {
        self.info = info
        self.embeddings = embeddings
        self.embeddingScale = embeddingScale
        self.layers = layers
        self.finalNorm = finalNorm
        self.lmHead = lmHead
        self.finalSoftcap = finalSoftcap
        self.experts = experts
        self.pool = pool
    }

    /// A cache for one sequence of up to `capacity` positions.
    public func makeCache(capacity: Int) -> KVCache {
        KVCache(capacity: capacity, kvWidths: layers.map(\.attention.kvWidth))
    }

    /// Bytes one position of one sequence takes in a KV cache (keys and values of every layer).
    public var kvBytesPerPosition: Int { layers.reduce(0) { $0 + $1.attention.kvWidth } * 4 * 2 }

    /// Bytes of weights held in memory (experts included when resident).
    public var weightBytes: Int {
        embeddings.byteCount + (lmHead.base == embeddings.base ? 0 : lmHead.byteCount) + layerBytes + residentExpertBytes
    }

    /// Bytes of weights one decode step reads: every layer matrix and the output head once, and
    /// the chosen experts' share of the expert bytes.
    public var decodeBytesPerToken: Int {
        let experts = info.expertCount > 0 ? residentExpertBytes * info.expertsPerToken / info.expertCount : 0
        return lmHead.byteCount + layerBytes + experts
    }

    private var residentExpertBytes: Int { (experts as? ResidentExperts)?.byteCount ?? 0 }

    /// Attention, dense feed-forward, router and shared-expert matrices of all layers.
    private var layerBytes: Int {
        func bytes(_ f: FeedForward) -> Int { f.gate.byteCount + f.up.byteCount + f.down.byteCount }
        var total = 0
        for layer in layers {
            let a = layer.attention
            total += [a.q, a.k, a.v, a.o].reduce(0) { $0 + $1.byteCount }
            switch layer.ffn {
            case .dense(let f): total += bytes(f)
            case .sparse(let m): total += m.router.byteCount + (m.sharedExpert.map(bytes) ?? 0)
            }
        }
        return total
    }

    /// Runs `batch` and writes the logits of the tokens that want them, in batch order, into
    /// `logits` ([wanted, vocab]). Each token's position must be the next unwritten position of its
    /// sequence or earlier ones of this batch; positions must fit the cache.
    public func forward(_ batch: [BatchToken], caches: [KVCache], logits: UnsafeMutablePointer<Float>) throws {
        lock.lock()
        defer { lock.unlock() }
        try validate(batch, caches: caches)
        experts?.stepBegan()
        // A prompt step holds several tokens of a sequence: some token past its cache's next position.
        let promptStep = batch.contains { $0.position > caches[$0.sequence].count }
        let tokens = batch.count
        let hidden = info.hiddenSize
        let x = scratch.floats(.hidden, tokens * hidden)
        let xn = scratch.floats(.normed, tokens * hidden)
        let y = scratch.floats(.blockOut, tokens * hidden)
        for (t, bt) in batch.enumerated() {
            embeddings.row(Int(bt.token), into: x + t * hidden)
            if embeddingScale != 1 { Kernels.scale(x + t * hidden, by: embeddingScale, n: hidden) }
        }
        let first = resume?.layer ?? 0
        if let resume { x.update(from: resume.residual, count: tokens * hidden) }
        for l in first..<layers.count {
            let layer = layers[l]
            captureResidual?(l, x)
            layer.inputNorm(x, tokens: tokens, xn)
            layer.attention(xn, batch: batch, caches: caches, layer: l, scratch: scratch, pool: pool, y)
            if let norm = layer.postAttentionNorm { norm(y, tokens: tokens, y) }
            Kernels.add(y, x, n: tokens * hidden)
            layer.preFFNNorm(x, tokens: tokens, xn)
            switch layer.ffn {
            case .dense(let ffn):
                // Observers (calibration) read the activations of the level the model was loaded at.
                if let mixedDense, observer == nil {
                    mixedDense(layer: l, xn, tokens: tokens, hidden: hidden, y)
                    break
                }
                let gate = scratch.floats(.gate, tokens * ffn.intermediate)
                ffn(xn, tokens: tokens, y, gateBuffer: gate, upBuffer: scratch.floats(.up, tokens * ffn.intermediate))
                observer?.observe(layer: l, input: xn, activations: gate, tokens: tokens, hidden: hidden,
                                  intermediate: ffn.intermediate)
            case .sparse(let moe):
                guard let experts else { throw ModelError("model has MoE layers but no expert backend") }
                // Next-layer prefetch: the next MoE layer's router on this layer's input predicts its experts.
                if experts.wantsPrefetch, let next = nextMoE[l] {
                    experts.schedulePrefetch(layer: next.moeLayer, routes: next.route(xn, tokens: tokens, scratch: scratch))
                }
                let observe: ExpertObservation? = observer.map { o in
                    { e, input, a, n, intermediate, rows, weights in
                        o.observeExpert(layer: l, expert: e, input: input, activations: a, tokens: n, hidden: hidden,
                                        intermediate: intermediate, rows: rows, weights: weights)
                    }
                }
                try moe(xn, tokens: tokens, hidden: hidden, backend: experts, scratch: scratch, observe: observe,
                        hook: routingHook.map { ($0, batch) }, y)
            }
            if let norm = layer.postFFNNorm { norm(y, tokens: tokens, y) }
            Kernels.add(y, x, n: tokens * hidden)
        }
        for bt in batch { caches[bt.sequence].count = max(caches[bt.sequence].count, bt.position + 1) }

        // Only the rows whose logits are wanted go through the final norm and the output head.
        var wanted = 0
        for (t, bt) in batch.enumerated() where bt.wantsLogits {
            (xn + wanted * hidden).update(from: x + t * hidden, count: hidden)
            wanted += 1
        }
        if wanted > 0 {
            finalNorm(xn, tokens: wanted, xn)
            Kernels.matmul(lmHead, xn, tokens: wanted, logits, pool: pool)
            if let c = finalSoftcap {
                for i in 0..<(wanted * info.vocabularySize) { logits[i] = c * Foundation.tanh(logits[i] / c) }
            }
        }
        experts?.stepEnded(prompt: promptStep)
    }

    /// Convenience for tests and tools: the logits of every token wanting them, as arrays.
    public func forward(_ batch: [BatchToken], caches: [KVCache]) throws -> [[Float]] {
        let wanted = batch.filter(\.wantsLogits).count
        let vocab = info.vocabularySize
        var flat = [Float](repeating: 0, count: max(wanted, 1) * vocab)
        try flat.withUnsafeMutableBufferPointer { try forward(batch, caches: caches, logits: $0.baseAddress!) }
        return (0..<wanted).map { Array(flat[($0 * vocab)..<(($0 + 1) * vocab)]) }
    }

    private func validate(_ batch: [BatchToken], caches: [KVCache]) throws {
        guard !batch.isEmpty else { throw ModelError("empty batch") }
        for bt in batch {
            guard bt.sequence >= 0, bt.sequence < caches.count else {
                throw ModelError("batch token names sequence \(bt.sequence) but \(caches.count) caches were given")
            }
            guard bt.token >= 0, Int(bt.token) < info.vocabularySize else {
                throw ModelError("token id \(bt.token) is outside the vocabulary (0..<\(info.vocabularySize))")
            }
            let cache = caches[bt.sequence]
            guard bt.position >= 0, bt.position < cache.capacity else {
                throw ModelError("position \(bt.position) is past the context (\(cache.capacity) tokens)")
            }
            guard bt.position <= cache.count + batch.count else {
                throw ModelError("position \(bt.position) skips ahead of the cache (\(cache.count) positions written)")
            }
        }
    }
}
