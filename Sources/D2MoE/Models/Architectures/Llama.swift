/// Llama family (Llama 2/3, SmolLM, Mistral): pre-norm attention with rotary positions and a
/// SwiGLU feed-forward block.
enum Llama: GGUFArchitecture {
    // MARK: Config
    static let modelTypes = ["llama", "mistral"]

    // MARK: Attention, block, model
    static func build(_ config: ConfigReader, _ w: WeightSource, options: LoadOptions) throws -> TransformerModel {
        let cfg = try CommonConfig(config)
        // Mistral's sliding window (null in most released configs).
        let window = config.optionalInt("sliding_window")
        let layers = try (0..<cfg.layers).map { i in
            let mlp = try FeedForward(w, "model.layers.\(i).mlp", hidden: cfg.hidden, intermediate: cfg.intermediate,
                                      activation: cfg.activation, options: options)
            return try StandardBlocks.layer(w, i, cfg, options: options, ffn: .dense(mlp), slidingWindow: window)
        }
        let (embeddings, head) = try StandardBlocks.embeddingsAndHead(w, cfg, options: options)
        return TransformerModel(info: cfg.info(modelType: config.values["model_type"] as? String ?? "llama"),
                                embeddings: embeddings, layers: layers,
                                finalNorm: try StandardBlocks.norm(w, "model.norm.weight", cfg), lmHead: head, experts: nil)
    }

    // MARK: Weight names
    static let ggufArchitectures = ["llama", "mistral"]
    static let ggufPermutesQK = true

    static func ggufName(_ name: String) -> String? { GGUFNames.translate(name) }

    static func config(fromGGUF m: [String: Any], architecture a: String) -> [String: Any] {
        var c = GGUFNames.commonConfig(m, a)
        c["model_type"] = "llama"
        c["tie_word_embeddings"] = true
        if let dims = m["\(a).rope.dimension_count"] as? Int, let heads = c["num_attention_heads"] as? Int,
           let hidden = c["hidden_size"] as? Int, dims != hidden / heads {
            c["head_dim"] = dims
        }
        return c
    }
}
