/// Mixtral: the Llama block with its feed-forward replaced by a sparse MoE of SwiGLU experts
/// (softmax router, top-k renormalised). Also the format `d2moe moefy` writes: with
/// `d2moe_unit_expert_weights` the chosen experts' outputs are summed unweighted, so a dense
/// model split into experts is exactly itself when every expert is active.
enum Mixtral: GGUFArchitecture {
    // MARK: Config
    static let modelTypes = ["mixtral"]

    // MARK: MoE block, block, model
    static func build(_ config: ConfigReader, _ w: WeightSource, options: LoadOptions) throws -> TransformerModel {
        let cfg = try CommonConfig(config)
        let nExperts = try config.int("num_local_experts")
        let topK = try StandardBlocks.expertsPerToken(config, experts: nExperts, options: options)
        let unitWeights = config.bool("d2moe_unit_expert_weights", default: false)
        let window = config.optionalInt("sliding_window")
        var experts: [[FeedForward]] = []
        let layers = try (0..<cfg.layers).map { i in
            let p = "model.layers.\(i)"
            // transformers v5 renamed block_sparse_moe to mlp; accept both.
            let moe = w.contains("\(p).block_sparse_moe.gate.weight") ? "\(p).block_sparse_moe" : "\(p).mlp"
            experts.append(try StandardBlocks.experts(w, prefix: "\(moe).experts", count: nExperts, hidden: cfg.hidden,
                                                      intermediate: cfg.intermediate, activation: cfg.activation,
                                                      options: options, names: ("w1", "w3", "w2")))
            let block = SparseMoE(router: try Linear(w, "\(moe).gate", out: nExperts, in: cfg.hidden, options: options),
                                  nExperts: nExperts, topK: topK, normalizeTopK: true, unitWeights: unitWeights,
                                  sharedExpert: nil, sharedGate: nil, moeLayer: i)
            return try StandardBlocks.layer(w, i, cfg, options: options, ffn: .sparse(block), slidingWindow: window)
        }
        let (embeddings, head) = try StandardBlocks.embeddingsAndHead(w, cfg, options: options)
        return TransformerModel(info: cfg.info(modelType: "mixtral", experts: nExperts, topK: topK, moeLayers: cfg.layers),
                                embeddings: embeddings, layers: layers,
                                finalNorm: try StandardBlocks.norm(w, "model.norm.weight", cfg), lmHead: head,
                                experts: ResidentExperts(experts: experts, hidden: cfg.hidden))
    }

    // MARK: Weight names
    // Hugging Face names: model.layers.N.block_sparse_moe.{gate, experts.E.w1|w2|w3}. In GGUF
    // (llama architecture with experts) these are slices of blk.N.ffn_{gate,up,down}_exps.
    static let ggufArchitectures: [String] = []  // chosen by the loader: "llama" with experts
    static let ggufPermutesQK = true

    static func ggufName(_ name: String) -> String? { GGUFNames.translate(name) }

    static func config(fromGGUF m: [String: Any], architecture a: String) -> [String: Any] {
        var c = Llama.config(fromGGUF: m, architecture: a)
        c["model_type"] = "mixtral"
        if let ff = m["\(a).expert_feed_forward_length"] { c["intermediate_size"] = ff }
        c["d2moe_unit_expert_weights"] = (m["d2moe.unit_expert_weights"] as? Bool) ?? false
        return c
    }
}
