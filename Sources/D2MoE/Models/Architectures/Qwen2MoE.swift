/// Qwen2-MoE (Qwen1.5-MoE): q/k/v biases; sparse MoE layers with softmax top-k routing
/// (optionally renormalised) plus an always-on shared expert scaled by a sigmoid gate; layers
/// listed in `mlp_only_layers` (or off the `decoder_sparse_step`) are dense.
enum Qwen2MoE: Architecture {
    // MARK: Config
    static let modelTypes = ["qwen2_moe"]

    struct MoEConfig {
        let nExperts: Int
        let topK: Int
        let expertIntermediate: Int
        let normalizeTopK: Bool
        let sparseStep: Int
        let denseLayers: Set<Int>

        init(_ c: ConfigReader, normalizeDefault: Bool, options: LoadOptions) throws {
            // transformers v5 writes Qwen3-MoE's expert count as num_local_experts.
            nExperts = try c.optionalInt("num_local_experts") ?? c.int("num_experts")
            topK = try StandardBlocks.expertsPerToken(c, experts: nExperts, options: options)
            expertIntermediate = try c.int("moe_intermediate_size")
            normalizeTopK = c.bool("norm_topk_prob", default: normalizeDefault)
            sparseStep = max(1, c.optionalInt("decoder_sparse_step") ?? 1)
            denseLayers = Set(c.intArray("mlp_only_layers") ?? [])
        }

        /// transformers' rule for which layers are sparse.
        func isSparse(_ layer: Int) -> Bool {
            !denseLayers.contains(layer) && nExperts > 0 && (layer + 1) % sparseStep == 0
        }
    }

    // MARK: Attention, MoE block, block, model
    static func build(_ config: ConfigReader, _ w: WeightSource, options: LoadOptions) throws -> TransformerModel {
        // Qwen2-MoE always has q/k/v biases (no attention_bias key in its config).
        var values = config.values
        values["attention_bias"] = true
        let cfg = try CommonConfig(ConfigReader(values, origin: config.origin))
        let moe = try MoEConfig(config, normalizeDefault: false, options: options)
        let sharedIntermediate = try config.int("shared_expert_intermediate_size")
        return try assemble(cfg, moe, w, options: options, modelType: "qwen2_moe", qkNorm: { _ in .none }) { p in
            (try FeedForward(w, "\(p).shared_expert", hidden: cfg.hidden, intermediate: sharedIntermediate,
                             activation: cfg.activation, options: options),
             try Linear(w, "\(p).shared_expert_gate", out: 1, in: cfg.hidden, options: options))
        }
    }

    /// The Qwen MoE model skeleton shared with Qwen3-MoE: attention variant and shared expert differ.
    static func assemble(_ cfg: CommonConfig, _ moe: MoEConfig, _ w: WeightSource, options: LoadOptions, modelType: String,
                         qkNorm: (Int) throws -> Attention.QKNorm,
                         shared: ((String) throws -> (FeedForward, Linear))?) throws -> TransformerModel {
        var experts: [[FeedForward]] = []
        let layers = try (0..<cfg.layers).map { i in
            let p = "model.layers.\(i)"
            let ffn: DecoderLayer.FFN
            if moe.isSparse(i) {
                experts.append(try StandardBlocks.experts(w, prefix: "\(p).mlp.experts", count: moe.nExperts, hidden: cfg.hidden,
                                                          intermediate: moe.expertIntermediate, activation: cfg.activation,
                                                          options: options))
                let s = try shared?("\(p).mlp")
                ffn = .sparse(SparseMoE(router: try Linear(w, "\(p).mlp.gate", out: moe.nExperts, in: cfg.hidden, options: options),
                                        nExperts: moe.nExperts, topK: moe.topK, normalizeTopK: moe.normalizeTopK,
                                        unitWeights: false, sharedExpert: s?.0, sharedGate: s?.1, moeLayer: experts.count - 1))
            } else {
                ffn = .dense(try FeedForward(w, "\(p).mlp", hidden: cfg.hidden, intermediate: cfg.intermediate,
                                             activation: cfg.activation, options: options))
            }
            return try StandardBlocks.layer(w, i, cfg, options: options, ffn: ffn, qkNorm: try qkNorm(i))
        }
        let (embeddings, head) = try StandardBlocks.embeddingsAndHead(w, cfg, options: options)
        return TransformerModel(info: cfg.info(modelType: modelType, experts: moe.nExperts, topK: moe.topK, moeLayers: experts.count),
                                embeddings: embeddings, layers: layers,
                                finalNorm: try StandardBlocks.norm(w, "model.norm.weight", cfg), lmHead: head,
                                experts: ResidentExperts(experts: experts, hidden: cfg.hidden))
    }

    // MARK: Weight names
    // Hugging Face names: model.layers.N.mlp.{gate, experts.E.*, shared_expert.*, shared_expert_gate}.
}
