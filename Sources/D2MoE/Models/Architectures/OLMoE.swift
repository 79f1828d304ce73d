/// OLMoE: RMSNorm over the whole q and k projections (not per head), optional clipping of
/// q/k/v, and sparse MoE layers with softmax top-k routing (not renormalised by default).
/// Also read from llama.cpp's `olmoe` GGUF architecture.
enum OLMoE: GGUFArchitecture {
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
    // In GGUF: blk.N.attn_{q,k}_norm, blk.N.ffn_gate_inp and the stacked blk.N.ffn_{gate,up,down}_exps.
    static let ggufArchitectures = ["olmoe"]
    // llama.cpp runs OLMoE with NEOX (rotate-half) rope, so its converter leaves q/k rows in order.
    static let ggufPermutesQK = false

    static func ggufName(_ name: String) -> String? { GGUFNames.translate(name) }

    static func config(fromGGUF m: [String: Any], architecture a: String) -> [String: Any] {
        var c = GGUFNames.commonConfig(m, a)
        c["model_type"] = "olmoe"
        c["num_experts"] = c.removeValue(forKey: "num_local_experts")
        if let ff = m["\(a).expert_feed_forward_length"] { c["intermediate_size"] = ff }
        // llama.cpp's olmoe graph neither clips q/k/v nor renormalises the top-k weights.
        c["norm_topk_prob"] = false
        return c
    }
}
