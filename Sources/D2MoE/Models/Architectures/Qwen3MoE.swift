/// Qwen3-MoE: Qwen2-MoE's sparse layers without the shared expert, no q/k/v biases, and an
/// RMSNorm over each head of q and k before rotary embedding; top-k weights renormalised.
enum Qwen3MoE: Architecture {
    // MARK: Config
    static let modelTypes = ["qwen3_moe"]

    // MARK: Attention, MoE block, block, model
    static func build(_ config: ConfigReader, _ w: WeightSource, options: LoadOptions) throws -> TransformerModel {
        let cfg = try CommonConfig(config)
        let moe = try Qwen2MoE.MoEConfig(config, normalizeDefault: true, options: options)
        return try Qwen2MoE.assemble(cfg, moe, w, options: options, modelType: "qwen3_moe", qkNorm: { i in
            let p = "model.layers.\(i).self_attn"
            return .perHead(q: try StandardBlocks.norm(w, "\(p).q_norm.weight", cfg, count: cfg.headDim),
                            k: try StandardBlocks.norm(w, "\(p).k_norm.weight", cfg, count: cfg.headDim))
        }, shared: nil)
    }

    // MARK: Weight names
    // Hugging Face names: model.layers.N.self_attn.{q_norm, k_norm}, model.layers.N.mlp.{gate, experts.E.*}.
}
