/// OLMoE: RMSNorm over the whole q and k projections (not per head), optional clipping of
/// q/k/v, and sparse MoE layers with softmax top-k routing (not renormalised by default).
enum OLMoE: Architecture {
    // MARK: Config
    static let modelTypes = ["olmoe"]

    // MARK: Attention, MoE block, block, model
    static func build(_ config: ConfigReader, _ w: WeightSource, options: LoadOptions) throws -> TransformerModel {
        let cfg = try CommonConfig(config)
        let nExperts = try config.int("num_experts")
        let topK = try StandardBlocks.expertsPerToken(config, experts: nExperts, options: options)
        let normalize = config.bool("norm_topk_prob", default: false)
        let clip = config.optionalDouble("clip_qkv").map { Float($0) }
        var experts: [[FeedForward]] = []
        let layers = try (0..<cfg.layers).map { i in
            let p = "model.layers.\(i)"
            let a = "\(p).self_attn"
            let qkNorm = Attention.QKNorm.whole(
                q: try StandardBlocks.norm(w, "\(a).q_norm.weight", cfg, count: cfg.heads * cfg.headDim),
                k: try StandardBlocks.norm(w, "\(a).k_norm.weight", cfg, count: cfg.kvHeads * cfg.headDim))
            experts.append(try StandardBlocks.experts(w, prefix: "\(p).mlp.experts", count: nExperts, hidden: cfg.hidden,
                                                      intermediate: cfg.intermediate, activation: cfg.activation,
                                                      options: options))
            let moe = SparseMoE(router: try Linear(w, "\(p).mlp.gate", out: nExperts, in: cfg.hidden, options: options),
                                nExperts: nExperts, topK: topK, normalizeTopK: normalize, unitWeights: false,
                                sharedExpert: nil, sharedGate: nil, moeLayer: i)
            return try StandardBlocks.layer(w, i, cfg, options: options, ffn: .sparse(moe), qkNorm: qkNorm, clip: clip)
        }
        let (embeddings, head) = try StandardBlocks.embeddingsAndHead(w, cfg, options: options)
        return TransformerModel(info: cfg.info(modelType: "olmoe", experts: nExperts, topK: topK, moeLayers: cfg.layers),
                                embeddings: embeddings, layers: layers,
                                finalNorm: try StandardBlocks.norm(w, "model.norm.weight", cfg), lmHead: head,
                                experts: ResidentExperts(experts: experts, hidden: cfg.hidden))
    }

    // MARK: Weight names
    // Hugging Face names: model.layers.N.self_attn.{q_norm, k_norm}, model.layers.N.mlp.{gate, experts.E.*}.
}
