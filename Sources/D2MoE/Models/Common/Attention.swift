import Foundation
import D2MoEKernels

/// Grouped-query self-attention with rotary positions and a per-sequence KV cache; the variants
/// the architectures need (biases, q/k norms, clipping, sliding windows, soft-capping) are options.
struct Attention {
    /// How q and k are normalised before rotary embedding.
    enum QKNorm {
        case none
        /// One RMSNorm of headDim applied to every head (Qwen3, Gemma 3).
        case perHead(q: RMSNorm, k: RMSNorm)
        /// One RMSNorm over the whole projection (OLMoE).
        case whole(q: RMSNorm, k: RMSNorm)
    }

    let q: Linear  // [nHeads·headDim, hidden]
    let k: Linear  // [nKVHeads·headDim, hidden]
    let v: Linear  // [nKVHeads·headDim, hidden]
    let o: Linear  // [hidden, nHeads·headDim]
    let qkNorm: QKNorm
    let nHeads: Int
    let nKVHeads: Int
    let headDim: Int
    let rope: RotaryEmbedding
    /// Multiplies q·k (1/√headDim unless the model says otherwise).
    let scale: Float
    /// Keys further back than this many positions (the query's included) are masked.
    let slidingWindow: Int?
    /// q, k and v are clamped to ±clip (OLMoE's clip_qkv).
    let clip: Float?
    /// Attention logits pass through c·tanh(s/c).
    let softcap: Float?

    var kvWidth: Int { nKVHeads * headDim }

    /// out: [tokens, hidden] = attention of x: [tokens, hidden] (already normalised). Writes the
    /// batch's keys and values into the caches first, so tokens of one sequence in the same batch
    /// see each other causally.
    func callAsFunction(_ x: UnsafePointer<Float>, batch: [BatchToken], caches: [KVCache], layer: Int,
                        scratch: Scratch, pool: ComputePool, _ out: UnsafeMutablePointer<Float>) {
        let tokens = batch.count
        let qWidth = nHeads * headDim
        let qs = scratch.floats(.query, tokens * qWidth)
        let ks = scratch.floats(.key, tokens * kvWidth)
        let vs = scratch.floats(.value, tokens * kvWidth)
        Linear.shared(x, tokens: tokens, q, qs, k, ks, v, vs)
        if let clip {
            for (p, n) in [(qs, tokens * qWidth), (ks, tokens * kvWidth), (vs, tokens * kvWidth)] {
                for i in 0..<n { p[i] = min(max(p[i], -clip), clip) }
            }
        }
        switch qkNorm {
        case .none: break
        case .perHead(let qn, let kn):
            qn(qs, tokens: tokens * nHeads, qs)
            kn(ks, tokens: tokens * nKVHeads, ks)
        case .whole(let qn, let kn):
            qn(qs, tokens: tokens, qs)
            kn(ks, tokens: tokens, ks)
        }
        rope.invFreq.withUnsafeBufferPointer { inv in
            for (t, bt) in batch.enumerated() {
                Kernels.rope(qs + t * qWidth, nHeads: nHeads, headDim: headDim, rotaryDim: rope.rotaryDim,
                             position: bt.position, invFreq: inv.baseAddress!)
                Kernels.rope(ks + t * kvWidth, nHeads: nKVHeads, headDim: headDim, rotaryDim: rope.rotaryDim,
                             position: bt.position, invFreq: inv.baseAddress!)
            }
        }
        for (t, bt) in batch.enumerated() {
            let cache = caches[bt.sequence]
            (cache.keys(layer: layer) + bt.position * kvWidth).update(from: ks + t * kvWidth, count: kvWidth)
            (cache.values(layer: layer) + bt.position * kvWidth).update(from: vs + t * kvWidth, count: kvWidth)
        }

        // Each work chunk owns one row of the scores buffer, sized for the longest visible span.
        let attended = scratch.floats(.attention, tokens * qWidth)
        let maxKeys = (batch.map(\.position).max() ?? 0) + 1
        let items = tokens * nHeads
        let chunks = min(items, pool.threadCount * 4)
        let scores = scratch.floats(.scores, chunks * maxKeys)
        let group = nHeads / nKVHeads
        pool.parallelFor(chunks) { chunk in
            let row = scores + chunk * maxKeys
            var item = chunk * items / chunks
            let end = (chunk + 1) * items / chunks
            while item < end {
                let t = item / nHeads, h = item % nHeads
                let bt = batch[t]
                let cache = caches[bt.sequence]
                let first = slidingWindow.map { max(0, bt.position - $0 + 1) } ?? 0
                let n = bt.position + 1 - first
                let query = qs + t * qWidth + h * headDim
                let keyBase = cache.keys(layer: layer) + (h / group) * headDim
                let valueBase = cache.values(layer: layer) + (h / group) * headDim
                let dst = attended + t * qWidth + h * headDim
                if softcap == nil {
                    Kernels.attend(query: query, keys: keyBase + first * kvWidth, values: valueBase + first * kvWidth,
                                   stride: kvWidth, n: n, headDim: headDim, scale: scale, scores: row, out: dst)
                    item += 1
                    continue
                }
                for j in 0..<n {
                    var s = Kernels.dot(query, keyBase + (first + j) * kvWidth, n: headDim) * scale
                    if let softcap { s = softcap * Foundation.tanh(s / softcap) }
                    row[j] = s
                }
                Kernels.softmax(row, n: n)
                dst.initialize(repeating: 0, count: headDim)
                for j in 0..<n { Kernels.axpy(row[j], valueBase + (first + j) * kvWidth, dst, n: headDim) }
                item += 1
            }
        }
        o(attended, tokens: tokens, out)
    }
}
