import D2MoEKernels

/// The configuration fields every architecture shares, read once with the defaults
/// transformers applies.
struct CommonConfig {
    let hidden: Int
    let layers: Int
    let heads: Int
    let kvHeads: Int
    let headDim: Int
    let intermediate: Int
    let vocab: Int
    let eps: Float
    let ropeTheta: Double
    let ropeScaling: RotaryEmbedding.Scaling
    let contextLength: Int
    let tiedEmbeddings: Bool
    let activation: FeedForward.Activation
    let attentionBias: Bool

    init(_ c: ConfigReader, tiedDefault: Bool = false, epsKey: String = "rms_norm_eps") throws {
        hidden = try c.int("hidden_size")
        layers = try c.int("num_hidden_layers")
        heads = try c.int("num_attention_heads")
        kvHeads = c.optionalInt("num_key_value_heads") ?? heads
        headDim = c.optionalInt("head_dim") ?? hidden / heads
        intermediate = try c.int("intermediate_size")
        vocab = try c.int("vocab_size")
        eps = Float(c.optionalDouble(epsKey) ?? 1e-6)
        // transformers v5 moved rope_theta and rope_scaling into rope_parameters.
        let parameters = c.object("rope_parameters")
        ropeTheta = c.optionalDouble("rope_theta") ?? (parameters?["rope_theta"] as? Double) ?? 10000
        ropeScaling = RotaryEmbedding.scaling(from: c.object("rope_scaling") ?? parameters)
        contextLength = c.optionalInt("max_position_embeddings") ?? 2048
        tiedEmbeddings = c.bool("tie_word_embeddings", default: tiedDefault)
        activation = try FeedForward.Activation(
            name: (c.values["hidden_act"] as? String) ?? (c.values["hidden_activation"] as? String) ?? "silu",
            origin: c.origin)
        attentionBias = c.bool("attention_bias", default: false)
        guard hidden > 0, layers > 0, heads > 0, kvHeads > 0, heads % kvHeads == 0, vocab > 0, headDim > 0 else {
            throw ModelError("\(c.origin): inconsistent sizes (hidden \(hidden), layers \(layers), heads \(heads), kv heads \(kvHeads), vocab \(vocab))")
        }
    }

    func info(modelType: String, experts: Int = 0, topK: Int = 0, moeLayers: Int = 0) -> ModelInfo {
        ModelInfo(modelType: modelType, vocabularySize: vocab, hiddenSize: hidden, layerCount: layers, headCount: heads,
                  kvHeadCount: kvHeads, headDim: headDim, contextLength: contextLength, expertCount: experts,
                  expertsPerToken: topK, moeLayerCount: moeLayers)
    }
}

/// Builders for the parts most architectures lay out the same way, under Hugging Face names.
enum StandardBlocks {
    static func attention(_ w: WeightSource, layer i: Int, _ cfg: CommonConfig, options: LoadOptions,
                          qkNorm: Attention.QKNorm = .none, rope: RotaryEmbedding? = nil, scale: Float? = nil,
                          slidingWindow: Int? = nil, clip: Float? = nil, softcap: Float? = nil) throws -> Attention {
        let p = "model.layers.\(i).self_attn"
        let qOut = cfg.heads * cfg.headDim, kvOut = cfg.kvHeads * cfg.headDim
        return Attention(
            q: try Linear(w, "\(p).q_proj", out: qOut, in: cfg.hidden, bias: cfg.attentionBias, options: options),
            k: try Linear(w, "\(p).k_proj", out: kvOut, in: cfg.hidden, bias: cfg.attentionBias, options: options),
            v: try Linear(w, "\(p).v_proj", out: kvOut, in: cfg.hidden, bias: cfg.attentionBias, options: options),
            o: try Linear(w, "\(p).o_proj", out: cfg.hidden, in: qOut, bias: false, options: options),
            qkNorm: qkNorm, nHeads: cfg.heads, nKVHeads: cfg.kvHeads, headDim: cfg.headDim,
            rope: rope ?? RotaryEmbedding(rotaryDim: cfg.headDim, base: cfg.ropeTheta, scaling: cfg.ropeScaling),
            scale: scale ?? 1 / Float(cfg.headDim).squareRoot(), slidingWindow: slidingWindow, clip: clip, softcap: softcap)
    }

    /// The pre-norm block most architectures share: input norm, attention, post-attention norm
    /// before the feed-forward block, no extra norms.
    static func layer(_ w: WeightSource, _ i: Int, _ cfg: CommonConfig, options: LoadOptions, ffn: DecoderLayer.FFN,
                      qkNorm: Attention.QKNorm = .none, slidingWindow: Int? = nil, clip: Float? = nil) throws -> DecoderLayer {
        let p = "model.layers.\(i)"
        return DecoderLayer(
            inputNorm: try norm(w, "\(p).input_layernorm.weight", cfg),
            attention: try attention(w, layer: i, cfg, options: options, qkNorm: qkNorm, slidingWindow: slidingWindow, clip: clip),
            postAttentionNorm: nil,
            preFFNNorm: try norm(w, "\(p).post_attention_layernorm.weight", cfg),
            postFFNNorm: nil, ffn: ffn)
    }

    static func norm(_ w: WeightSource, _ name: String, _ cfg: CommonConfig, count: Int? = nil, offset: Float = 0) throws -> RMSNorm {
        try RMSNorm(w, name, count: count ?? cfg.hidden, eps: cfg.eps, weightOffset: offset)
    }

    /// Embeddings (in `options.dtype`: a lookup dequantizes one row) and the output head (tied, the
    /// same matrix, or `lm_head`).
    static func embeddingsAndHead(_ w: WeightSource, _ cfg: CommonConfig, options: LoadOptions) throws -> (DenseMatrix, DenseMatrix) {
        let embeddings = try w.matrix("model.embed_tokens.weight", rows: cfg.vocab, cols: cfg.hidden, dtype: options.dtype)
        // A present lm_head wins (tied checkpoints omit it); GGUF files omit output.weight when tied.
        if w.contains("lm_head.weight") {
            return (embeddings, try w.matrix("lm_head.weight", rows: cfg.vocab, cols: cfg.hidden, dtype: options.dtype))
        }
        guard cfg.tiedEmbeddings || w is GGUFWeights else { throw ModelError("\(w.origin): missing tensor 'lm_head.weight'") }
        return (embeddings, embeddings)
    }

    /// Experts per token: the config's `num_experts_per_tok` unless the options override it.
    static func expertsPerToken(_ c: ConfigReader, experts: Int, options: LoadOptions) throws -> Int {
        let k = try options.expertsPerToken ?? c.int("num_experts_per_tok")
        guard k >= 1, k <= experts else { throw ModelError("\(c.origin): experts per token \(k) must be in 1...\(experts)") }
        return k
    }

    /// Routed experts of one MoE layer: per-expert tensors (`<prefix>.<e>.<name>.weight`) or
    /// transformers v5's fused `<prefix>.gate_up_proj` [E, 2·ff, hidden] and `down_proj` [E, hidden, ff].
    static func experts(_ w: WeightSource, prefix: String, count: Int, hidden: Int, intermediate: Int,
                        activation: FeedForward.Activation, options: LoadOptions,
                        names: (gate: String, up: String, down: String) = ("gate_proj", "up_proj", "down_proj")) throws -> [FeedForward] {
        // Streamed experts are read by the expert pool, never mapped here.
        if let mwq = w as? MWQWeights, mwq.streamsRoutedExperts { return [] }
        if let recorder = w as? TensorNameRecorder {
            // FeedForward's order: gate, up, down of each expert.
            for e in 0..<count {
                for n in [names.gate, names.up, names.down] { recorder.record("\(prefix).\(e).\(n).weight") }
            }
            return []
        }
        if w.contains("\(prefix).gate_up_proj") {
            let gateUp = try w.checkedFloats("\(prefix).gate_up_proj", shape: [count, 2 * intermediate, hidden])
            let down = try w.checkedFloats("\(prefix).down_proj", shape: [count, hidden, intermediate])
            let block = intermediate * hidden
            return (0..<count).map { e in
                let gu = 2 * e * block
                func linear(_ values: ArraySlice<Float>, rows: Int, cols: Int) -> Linear {
                    Linear(weight: DenseMatrix.make(rows: rows, cols: cols, values: Array(values), dtype: options.dtype))
                }
                return FeedForward(gate: linear(gateUp[gu..<(gu + block)], rows: intermediate, cols: hidden),
                                   up: linear(gateUp[(gu + block)..<(gu + 2 * block)], rows: intermediate, cols: hidden),
                                   down: linear(down[(e * block)..<((e + 1) * block)], rows: hidden, cols: intermediate),
                                   activation: activation)
            }
        }
        return try (0..<count).map { e in
            try FeedForward(w, "\(prefix).\(e)", hidden: hidden, intermediate: intermediate, activation: activation,
                            options: options, names: names)
        }
    }
}
