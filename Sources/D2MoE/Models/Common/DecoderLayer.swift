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

    /// For routed expert `expert` of the sparse block in decoder layer `layer`: `input`
    /// [tokens, hidden] holds only the rows routed to it (in token order) and `activations`
    /// [tokens, intermediate] what enters its down projection for them. Not called for shared
    /// experts, nor for experts no token chose.
    func observeExpert(layer: Int, expert: Int, input: UnsafePointer<Float>, activations: UnsafePointer<Float>,
                       tokens: Int, hidden: Int, intermediate: Int)

    /// As above, with each row's token in the batch (`rows`, ascending) and its gate weight
    /// (`weights`): router training matches an expert's rows to the token's other experts.
    func observeExpert(layer: Int, expert: Int, input: UnsafePointer<Float>, activations: UnsafePointer<Float>,
                       tokens: Int, hidden: Int, intermediate: Int, rows: [Int], weights: [Float])
}

extension FeedForwardObserver {
    /// Observers of dense blocks alone (MoEfication) ignore routed experts.
    public func observeExpert(layer: Int, expert: Int, input: UnsafePointer<Float>, activations: UnsafePointer<Float>,
                              tokens: Int, hidden: Int, intermediate: Int) {}

    public func observeExpert(layer: Int, expert: Int, input: UnsafePointer<Float>, activations: UnsafePointer<Float>,
                              tokens: Int, hidden: Int, intermediate: Int, rows: [Int], weights: [Float]) {
        observeExpert(layer: layer, expert: expert, input: input, activations: activations, tokens: tokens, hidden: hidden,
                      intermediate: intermediate)
    }
}
