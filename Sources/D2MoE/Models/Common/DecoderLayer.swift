import D2MoEKernels

/// One transformer block: pre-norm attention and feed-forward (dense or sparse) with residuals;
/// Gemma's extra norms after each sub-block are optional.
struct DecoderLayer {
    enum FFN {
        case dense(FeedForward)
        case sparse(SparseMoE)
    }

    let inputNorm: RMSNorm
    let attention: Attention
    /// Applied to the attention output before the residual add (Gemma 3).
    let postAttentionNorm: RMSNorm?
    let preFFNNorm: RMSNorm
    /// Applied to the feed-forward output before the residual add (Gemma 3).
    let postFFNNorm: RMSNorm?
    let ffn: FFN
}

/// Sees the inside of feed-forward blocks during a forward pass (calibration, MoEfication,
/// router training). Called on the compute thread; must not retain the pointers.
public protocol FeedForwardObserver: AnyObject {
    /// For a dense block: `input` [tokens, hidden] entering it (after its norm) and `activations`
    /// [tokens, intermediate] entering its down projection.
    func observe(layer: Int, input: UnsafePointer<Float>, activations: UnsafePointer<Float>, tokens: Int,
                 hidden: Int, intermediate: Int)
}
