import Foundation
import D2MoEFormats
import D2MoEKernels

/// Synthetic MoE models of real shapes (DESIGN §6): random weights at the real sizes, written
/// straight into an `.mwq` container for measuring throughput and memory at scale — no MoE
/// weights can be downloaded here. They compute nothing meaningful.
///
/// Everything is generated as it is written (`MWQStreamWriter`), never as a float copy of the
/// model: resident tensors row by row, expert levels directly as tiles of the packed layout
/// (`MWQMatrixView`) — random plane bytes and float16 scales, never by quantizing a float matrix —
/// so writing is bound by the disk. Deterministic given the seed: each resident row and each
/// 32-row block of each level has its own generator (xoshiro256** seeded by splitmix64 from the
/// seed and its position), so the bytes do not depend on chunking or threads.
///
/// - Resident matrices (embeddings, `lm_head`, attention q/k/v/o, routers, shared experts and
///   their gates) are uniform with standard deviation 0.02 (routers 0.05, so routing is not
///   near-uniform), q/k/v biases 0.02; norms are 1. Matrices are stored in the chosen resident
///   type (Q8_0 needs rows a multiple of 32 long, else float16), vectors in float32, as
///   `MWQConverter` stores them.
/// - Expert levels: per (row, group) a base step s = f·0.02·2/(2^b₁ − 1) with f uniform in
///   [0.75, 1.25) and offset m = −s·(2^b₁ − 1)/2, so the uniform random codes give weights centred
///   on 0 within ±0.02·f; sign level k (2, 3, …) has s_k = s/2^k — the base's rounding error is
///   uniform within ±s/2, mean |R| = s/4, and each level halves what is left.
/// - The tokenizer is byte-level BPE (`gpt2`): the 256 byte tokens in GPT-2's byte-to-unicode
///   mapping (ids 0–255), BOS `<s>` (256), EOS `</s>` (257), one merge ("Ġ Ġ" → "ĠĠ", 258; the
///   tokenizer requires at least one) and `<unused_N>` up to the vocabulary size. So any text
///   encodes (one token per byte) and decodes back.
/// - The config is what the architecture file reads, plus `"d2moe_synthetic": true` and
///   `d2moe_synthetic_shape` / `d2moe_synthetic_seed`.
public enum SyntheticModel {
    /// A model's shape: what sizes every tensor.
    public struct Shape: Sendable, Equatable {
        public var name: String
        /// Hugging Face `model_type`: "olmoe", "qwen2_moe" or "mixtral".
        public var modelType: String
        public var layers: Int
        public var hidden: Int
        public var heads: Int
        public var kvHeads: Int
        public var vocab: Int
        public var experts: Int
        public var topK: Int
        /// Intermediate size of each routed expert.
        public var expertIntermediate: Int
        /// Intermediate size of the always-on shared expert (qwen2_moe), nil for none.
        public var sharedExpertIntermediate: Int?
        /// config.json's `intermediate_size` where it is not the expert's (qwen2_moe: the dense
        /// FFN width, required although every layer here is sparse).
        public var denseIntermediate: Int
        public var normalizeTopK: Bool
        public var ropeTheta: Double
        public var rmsNormEps: Double
        /// What the shape stands for, for listings.
        public var summary: String

        public var headDim: Int { hidden / heads }

        /// Weights of all routed experts: layers · experts · 3 · hidden · expert FFN.
        public var expertWeights: Int { layers * experts * 3 * hidden * expertIntermediate }

        /// The same shape with `n` layers (e.g. Mixtral at reduced depth).
        public func withLayers(_ n: Int) -> Shape { var s = self; s.layers = n; return s }
    }

    /// OLMoE-1B-7B (allenai/OLMoE-1B-7B-0924): 16 layers, hidden 2048, 16 heads, 64 experts, top-8,
    /// expert FFN 1024, vocabulary 50304.
    public static let olmoe1B7B = Shape(
        name: "olmoe-1b-7b", modelType: "olmoe", layers: 16, hidden: 2048, heads: 16, kvHeads: 16, vocab: 50304,
        experts: 64, topK: 8, expertIntermediate: 1024, sharedExpertIntermediate: nil, denseIntermediate: 1024,
        normalizeTopK: false, ropeTheta: 10000, rmsNormEps: 1e-5, summary: "OLMoE-1B-7B")

    /// Qwen1.5-MoE-A2.7B: 24 layers, hidden 2048, 16 heads, 60 experts + a shared expert of 5632,
    /// top-4, expert FFN 1408, vocabulary 151936.
    public static let qwen15MoEA27B = Shape(
        name: "qwen1.5-moe-a2.7b", modelType: "qwen2_moe", layers: 24, hidden: 2048, heads: 16, kvHeads: 16, vocab: 151936,
        experts: 60, topK: 4, expertIntermediate: 1408, sharedExpertIntermediate: 5632, denseIntermediate: 5632,
        normalizeTopK: false, ropeTheta: 1_000_000, rmsNormEps: 1e-6, summary: "Qwen1.5-MoE-A2.7B")

    /// Mixtral-8x7B: 32 layers (use `withLayers` for reduced depth), hidden 4096, 32 heads / 8 kv
    /// heads, 8 experts, top-2, FFN 14336, vocabulary 32000.
    public static let mixtral8x7B = Shape(
        name: "mixtral-8x7b", modelType: "mixtral", layers: 32, hidden: 4096, heads: 32, kvHeads: 8, vocab: 32000,
        experts: 8, topK: 2, expertIntermediate: 14336, sharedExpertIntermediate: nil, denseIntermediate: 14336,
        normalizeTopK: true, ropeTheta: 1_000_000, rmsNormEps: 1e-5, summary: "Mixtral-8x7B")

    /// DeepSeek-V2-Lite's MoE part: 26 MoE layers, hidden 2048, 64 routed experts of FFN 1408,
    /// top-6, 2 shared experts, vocabulary 102400. We have no DeepSeek architecture (MLA
    /// attention), so it is built as `qwen2_moe`: ordinary attention with 16 heads (and q/k/v
    /// biases), its two shared experts as one shared expert of intermediate 2·1408 = 2816, which
    /// qwen2_moe scales by a sigmoid gate (DeepSeek adds it ungated), and no dense first layer
    /// (the real model's layer 0 is a dense FFN of 10944). Expert bytes and routing shape are the
    /// real model's — what replaying its routing traces needs; attention cost is not.
    public static let deepseekV2Lite = Shape(
        name: "deepseek-v2-lite", modelType: "qwen2_moe", layers: 26, hidden: 2048, heads: 16, kvHeads: 16, vocab: 102400,
        experts: 64, topK: 6, expertIntermediate: 1408, sharedExpertIntermediate: 2 * 1408, denseIntermediate: 10944,
        normalizeTopK: false, ropeTheta: 10000, rmsNormEps: 1e-6, summary: "DeepSeek-V2-Lite as qwen2_moe (no MLA)")

    /// Tiny shapes of each architecture, for tests: 2 layers, hidden 256, 8 experts, top-2, FFN
    /// 128, vocabulary 512.
    public static let tiny = Shape(
        name: "tiny-moe", modelType: "olmoe", layers: 2, hidden: 256, heads: 4, kvHeads: 4, vocab: 512,
        experts: 8, topK: 2, expertIntermediate: 128, sharedExpertIntermediate: nil, denseIntermediate: 128,
        normalizeTopK: false, ropeTheta: 10000, rmsNormEps: 1e-5, summary: "tiny olmoe, for tests")
    public static let tinyQwen2MoE = Shape(
        name: "tiny-qwen2-moe", modelType: "qwen2_moe", layers: 2, hidden: 256, heads: 4, kvHeads: 4, vocab: 512,
        experts: 8, topK: 2, expertIntermediate: 128, sharedExpertIntermediate: 256, denseIntermediate: 512,
        normalizeTopK: false, ropeTheta: 1_000_000, rmsNormEps: 1e-6, summary: "tiny qwen2_moe with a shared expert, for tests")
    public static let tinyMixtral = Shape(
        name: "tiny-mixtral", modelType: "mixtral", layers: 2, hidden: 256, heads: 4, kvHeads: 2, vocab: 512,
        experts: 8, topK: 2, expertIntermediate: 128, sharedExpertIntermediate: nil, denseIntermediate: 128,
        normalizeTopK: true, ropeTheta: 1_000_000, rmsNormEps: 1e-5, summary: "tiny mixtral, for tests")

    /// Every named shape.
    public static let shapes: [Shape] = [olmoe1B7B, qwen15MoEA27B, mixtral8x7B, deepseekV2Lite, tiny, tinyQwen2MoE, tinyMixtral]

    /// The shape called `name`; the error lists the valid names.
    public static func shape(named name: String) throws -> Shape {
        guard let s = shapes.first(where: { $0.name == name }) else {
            throw ModelError("unknown shape '\(name)' (\(shapes.map(\.name).joined(separator: ", ")))")
        }
        return s
    }

    /// What a file holds (from `expectedSizes` without writing, or after `write`).
    public struct Summary: Sendable {
        public var shape: Shape
        public var scheme: String
        public var bits: [Int]
        /// The group used: the one asked for, or 64/32 where it does not divide every expert width.
        public var group: Int
        /// Element type of resident matrices.
        public var resident: String
        public var fileBytes: Int
        public var residentBytes: Int
        /// Bytes of all expert records at each level (not cumulative).
        public var expertBytesPerLevel: [Int]
        public var expertRecords: Int
        public var expertWeights: Int
        /// Seconds the write took (0 from `expectedSizes`).
        public var seconds: Double
    }

    /// The sizes `write` would produce, computed from the shapes alone.
    public static func expectedSizes(shape: Shape, scheme: MWQConverter.Scheme, group: Int = 128,
                                     resident: String = "f16") throws -> Summary {
        let plan = try Plan(shape: shape, scheme: scheme, group: group, resident: resident, seed: 0)
        return plan.summary(seconds: 0)
    }

    /// Writes `shape` with random weights to `path` (atomically: a temporary file renamed into
    /// place). `resident` is "f16", "bf16", "f32" or "q8_0" ("q8" accepted); `progress` gets
    /// bytes written and the total.
    @discardableResult
    public static func write(shape: Shape, scheme: MWQConverter.Scheme, group: Int = 128, resident: String = "f16",
                             seed: UInt64 = 0, to path: String,
                             progress: (_ writtenBytes: Int, _ totalBytes: Int) -> Void = { _, _ in }) throws -> Summary {
        let start = Date()
        let plan = try Plan(shape: shape, scheme: scheme, group: group, resident: resident, seed: seed)
        do {
            try plan.writer.write(to: path, resident: plan.fillResident, level: plan.fillLevel, progress: progress)
        } catch let e as FormatError {
            throw ModelError(e.description)
        }
        return plan.summary(seconds: Date().timeIntervalSince(start))
    }

    // MARK: The plan: tensors, records, config, tokenizer

    /// How a resident tensor is filled.
    enum Fill { case uniform(std: Float), ones }

    struct Plan {
        let shape: Shape
        let scheme: MWQConverter.Scheme
        let group: Int
        let residentType: String
        let seed: UInt64
        let fills: [Fill]
        let writer: MWQStreamWriter

        init(shape: Shape, scheme: MWQConverter.Scheme, group requested: Int, resident: String, seed: UInt64) throws {
            let residentType = resident == "q8" ? "q8_0" : resident
            guard ["f16", "bf16", "f32", "q8_0"].contains(residentType) else {
                throw ModelError("resident type '\(resident)' is not supported (f16, bf16, f32, q8)")
            }
            guard [32, 64, 128, 256].contains(requested) else { throw ModelError("group \(requested) must be 32, 64, 128 or 256") }
            guard shape.layers >= 1, shape.hidden > 0, shape.heads > 0, shape.hidden % shape.heads == 0,
                  shape.kvHeads > 0, shape.heads % shape.kvHeads == 0, shape.experts >= 1,
                  (1...shape.experts).contains(shape.topK), shape.expertIntermediate > 0, shape.vocab >= 256 + Self.specialTokens else {
                throw ModelError("shape '\(shape.name)' is inconsistent (layers \(shape.layers), hidden \(shape.hidden), heads \(shape.heads)/\(shape.kvHeads), experts \(shape.topK) of \(shape.experts), vocabulary \(shape.vocab))")
            }
            let widths = [shape.hidden, shape.expertIntermediate]
            guard let group = [requested, 64, 32].filter({ $0 <= requested }).first(where: { g in widths.allSatisfy { $0 % g == 0 } }) else {
                throw ModelError("shape '\(shape.name)': expert widths \(widths) are not multiples of 32")
            }
            self.shape = shape
            self.scheme = scheme
            self.group = group
            self.residentType = residentType
            self.seed = seed
            let (declarations, fills) = Self.residentTensors(shape, type: residentType)
            self.fills = fills
            writer = try MWQStreamWriter(
                modelType: shape.modelType, config: Self.config(shape, seed: seed), tokenizer: Self.tokenizer(vocab: shape.vocab),
                quantization: .init(scheme: scheme.name, bits: scheme.bits, group: group, scales: "synthetic", resident: residentType,
                                    nested: scheme.nested),
                resident: declarations, records: Self.records(shape))
        }

        func summary(seconds: Double) -> Summary {
            let layout = writer.layout
            return Summary(shape: shape, scheme: scheme.name, bits: scheme.bits, group: group, resident: residentType,
                           fileBytes: layout.fileBytes, residentBytes: layout.header.residentBytes,
                           expertBytesPerLevel: layout.expertBytesPerLevel, expertRecords: writer.records.count,
                           expertWeights: shape.expertWeights, seconds: seconds)
        }

        /// Resident tensors in file order, with how each is filled.
        static func residentTensors(_ s: Shape, type: String) -> ([MWQStreamWriter.ResidentDeclaration], [Fill]) {
            var out: [(MWQStreamWriter.ResidentDeclaration, Fill)] = []
            func add(_ name: String, _ shape: [Int], _ fill: Fill) {
                // Matrices in the resident type (Q8_0 only where rows are a multiple of 32 long);
                // vectors in float32, as MWQConverter stores them.
                var dtype = shape.count >= 2 ? type : "f32"
                if dtype == "q8_0" && (shape.last ?? 1) % 32 != 0 { dtype = "f16" }
                out.append((.init(name: name, shape: shape, dtype: dtype), fill))
            }
            let std: Float = 0.02, routerStd: Float = 0.05
            let q = s.heads * s.headDim, kv = s.kvHeads * s.headDim
            add("model.embed_tokens.weight", [s.vocab, s.hidden], .uniform(std: std))
            for l in 0..<s.layers {
                let p = "model.layers.\(l)", a = "\(p).self_attn"
                add("\(p).input_layernorm.weight", [s.hidden], .ones)
                add("\(a).q_proj.weight", [q, s.hidden], .uniform(std: std))
                add("\(a).k_proj.weight", [kv, s.hidden], .uniform(std: std))
                add("\(a).v_proj.weight", [kv, s.hidden], .uniform(std: std))
                if s.modelType == "qwen2_moe" {
                    add("\(a).q_proj.bias", [q], .uniform(std: std))
                    add("\(a).k_proj.bias", [kv], .uniform(std: std))
                    add("\(a).v_proj.bias", [kv], .uniform(std: std))
                }
                add("\(a).o_proj.weight", [s.hidden, q], .uniform(std: std))
                if s.modelType == "olmoe" {
                    add("\(a).q_norm.weight", [q], .ones)
                    add("\(a).k_norm.weight", [kv], .ones)
                }
                add("\(p).post_attention_layernorm.weight", [s.hidden], .ones)
                add("\(Self.moePrefix(s, layer: l)).gate.weight", [s.experts, s.hidden], .uniform(std: routerStd))
                if let shared = s.sharedExpertIntermediate {
                    add("\(p).mlp.shared_expert.gate_proj.weight", [shared, s.hidden], .uniform(std: std))
                    add("\(p).mlp.shared_expert.up_proj.weight", [shared, s.hidden], .uniform(std: std))
                    add("\(p).mlp.shared_expert.down_proj.weight", [s.hidden, shared], .uniform(std: std))
                    add("\(p).mlp.shared_expert_gate.weight", [1, s.hidden], .uniform(std: std))
                }
            }
            add("model.norm.weight", [s.hidden], .ones)
            add("lm_head.weight", [s.vocab, s.hidden], .uniform(std: std))
            return (out.map(\.0), out.map(\.1))
        }

        static func moePrefix(_ s: Shape, layer: Int) -> String {
            s.modelType == "mixtral" ? "model.layers.\(layer).block_sparse_moe" : "model.layers.\(layer).mlp"
        }

        /// One record per (layer, expert): gate, up, down, under the checkpoint's names.
        static func records(_ s: Shape) -> [MWQStreamWriter.RecordDeclaration] {
            let names = s.modelType == "mixtral" ? ("w1", "w3", "w2") : ("gate_proj", "up_proj", "down_proj")
            return (0..<s.layers).flatMap { l in
                (0..<s.experts).map { e in
                    let p = "\(moePrefix(s, layer: l)).experts.\(e)"
                    return MWQStreamWriter.RecordDeclaration(layer: l, expert: e, matrices: [
                        .init(name: "\(p).\(names.0).weight", rows: s.expertIntermediate, cols: s.hidden),
                        .init(name: "\(p).\(names.1).weight", rows: s.expertIntermediate, cols: s.hidden),
                        .init(name: "\(p).\(names.2).weight", rows: s.hidden, cols: s.expertIntermediate),
                    ])
                }
            }
        }

        /// config.json as the architecture files read it.
        static func config(_ s: Shape, seed: UInt64) -> JSONValue {
            var c: [String: JSONValue] = [
                "model_type": .string(s.modelType),
                "hidden_size": .int(s.hidden),
                "num_hidden_layers": .int(s.layers),
                "num_attention_heads": .int(s.heads),
                "num_key_value_heads": .int(s.kvHeads),
                "head_dim": .int(s.headDim),
                "vocab_size": .int(s.vocab),
                "num_experts_per_tok": .int(s.topK),
                "max_position_embeddings": .int(4096),
                "rms_norm_eps": .double(s.rmsNormEps),
                "rope_theta": .double(s.ropeTheta),
                "hidden_act": .string("silu"),
                "tie_word_embeddings": .bool(false),
                "norm_topk_prob": .bool(s.normalizeTopK),
                "bos_token_id": .int(SyntheticModel.bosID),
                "eos_token_id": .int(SyntheticModel.eosID),
                "d2moe_synthetic": .bool(true),
                "d2moe_synthetic_shape": .string(s.name),
                "d2moe_synthetic_seed": .string(String(seed)),
            ]
            switch s.modelType {
            case "olmoe":
                c["architectures"] = .array([.string("OlmoeForCausalLM")])
                c["num_experts"] = .int(s.experts)
                c["intermediate_size"] = .int(s.expertIntermediate)
                c["attention_bias"] = .bool(false)
            case "qwen2_moe":
                c["architectures"] = .array([.string("Qwen2MoeForCausalLM")])
                c["num_experts"] = .int(s.experts)
                c["moe_intermediate_size"] = .int(s.expertIntermediate)
                c["intermediate_size"] = .int(s.denseIntermediate)
                c["shared_expert_intermediate_size"] = .int(s.sharedExpertIntermediate ?? s.expertIntermediate)
                c["decoder_sparse_step"] = .int(1)
                c["mlp_only_layers"] = .array([])
            default:
                c["architectures"] = .array([.string("MixtralForCausalLM")])
                c["num_local_experts"] = .int(s.experts)
                c["intermediate_size"] = .int(s.expertIntermediate)
            }
            return .object(c)
        }

        static let specialTokens = 3

        /// GGUF-style metadata of the byte-level tokenizer described on `SyntheticModel`.
        static func tokenizer(vocab: Int) -> JSONValue {
            var tokens = SyntheticModel.byteToUnicode.map { JSONValue.string(String(Character($0))) }
            var types = [JSONValue](repeating: .int(1), count: 256)
            tokens += [.string("<s>"), .string("</s>"), .string("ĠĠ")]
            types += [.int(3), .int(3), .int(1)]
            for n in 0..<(vocab - tokens.count) {
                tokens.append(.string("<unused_\(n)>"))
                types.append(.int(5))
            }
            return .object(["kind": .string("gguf"), "metadata": .object([
                "tokenizer.ggml.model": .string("gpt2"),
                "tokenizer.ggml.pre": .string("gpt2"),
                "tokenizer.ggml.tokens": .array(tokens),
                "tokenizer.ggml.token_type": .array(types),
                "tokenizer.ggml.merges": .array([.string("Ġ Ġ")]),
                "tokenizer.ggml.bos_token_id": .int(SyntheticModel.bosID),
                "tokenizer.ggml.eos_token_id": .int(SyntheticModel.eosID),
                "tokenizer.ggml.add_bos_token": .bool(true),
                "tokenizer.ggml.add_eos_token": .bool(false),
            ])])
        }

        // MARK: Filling

        /// One chunk of rows of resident tensor `index`, in its stored type. Uniform values are
        /// 65,536 evenly spaced levels on (−a, a), a = √3·std, picked by 16 random bits each
        /// through a table of their stored bits: the float → float16 conversion per value was
        /// most of the time.
        func fillResident(_ index: Int, _ rows: Range<Int>, _ buffer: UnsafeMutableRawBufferPointer) throws {
            let t = writer.resident[index]
            let type = ElementType(rawValue: t.dtype)!
            let cols = t.cols, rowBytes = type.rowBytes(cols: cols)
            let base = buffer.baseAddress!, seed = self.seed
            let levels: [Float]
            switch fills[index] {
            case .ones: levels = [Float](repeating: 1, count: 65536)
            case .uniform(let std):
                let a = std * Float(3).squareRoot()
                levels = (0..<65536).map { (Float($0) + 0.5) / 32768 * a - a }
            }
            let bits16: [UInt16] = type == .f16 ? levels.map(SyntheticModel.half) : type == .bf16 ? levels.map(bfloat16BitsFromFloat) : []
            levels.withUnsafeBufferPointer { levels in
                bits16.withUnsafeBufferPointer { bits16 in
                    ComputePool.shared.parallelFor(rows.count) { i in
                        var rng = Xoshiro256(seed: SyntheticModel.mix(seed, 1, UInt64(index), UInt64(rows.lowerBound + i)))
                        let out = base + i * rowBytes
                        // Four 16-bit picks per draw.
                        func picks(_ body: (Int, Int) -> Void) {
                            var c = 0
                            while c < cols {
                                let r = rng.next()
                                for k in 0..<min(4, cols - c) { body(c + k, Int(truncatingIfNeeded: (r >> (16 * UInt64(k))) & 0xFFFF)) }
                                c += 4
                            }
                        }
                        switch type {
                        case .f32:
                            picks { c, k in out.storeBytes(of: levels[k], toByteOffset: 4 * c, as: Float.self) }
                        case .f16, .bf16:
                            picks { c, k in out.storeBytes(of: bits16[k].littleEndian, toByteOffset: 2 * c, as: UInt16.self) }
                        case .q8_0:
                            // As DenseMatrix.quantized: per 32 values d = amax/127, codes round(v/d).
                            withUnsafeTemporaryAllocation(of: Float.self, capacity: cols) { values in
                                picks { c, k in values[c] = levels[k] }
                                for b in 0..<(cols / 32) {
                                    let block = out + 34 * b
                                    var amax: Float = 0
                                    for k in 0..<32 { amax = max(amax, abs(values[32 * b + k])) }
                                    let inv = amax > 0 ? 127 / amax : 0
                                    block.storeBytes(of: SyntheticModel.half(amax / 127).littleEndian, as: UInt16.self)
                                    for k in 0..<32 {
                                        block.storeBytes(of: Int8((values[32 * b + k] * inv).rounded(.toNearestOrEven)), toByteOffset: 2 + k, as: Int8.self)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }

        /// Level `level` (0-based) of matrix `matrix` of record `record`, generated as tiles.
        func fillLevel(_ record: Int, _ level: Int, _ matrix: Int, _ buffer: UnsafeMutableRawBufferPointer) throws {
            let m = writer.records[record].matrices[matrix]
            // A separate copy (not nested) is a base level of its own bits.
            let isBase = level == 0 || !scheme.nested
            let b1 = scheme.nested ? scheme.bits[0] : scheme.bits[level], g = group
            let G = m.cols / g, blocks = (m.rows + 31) / 32
            let planeBytes = (isBase ? b1 : 1) * 4 * g
            let tile = MWQMatrixView.tileBytes(level: isBase ? 1 : level + 1, group: g, baseBits: b1)
            precondition(buffer.count == blocks * G * tile, "SyntheticModel: level buffer size")
            let maxCode = Float((1 << b1) - 1)
            let nominal: Float = 0.02 * 2 / maxCode
            let signDivisor = Float(1 << (level + 1))
            let base = buffer.baseAddress!, seed = self.seed
            ComputePool.shared.parallelFor(blocks) { b in
                var planes = Xoshiro256(seed: SyntheticModel.mix(seed, 2, UInt64(record), UInt64(matrix), UInt64(level), UInt64(b)))
                // The same stream at every level, so each level's scales follow the group's base step.
                var factors = Xoshiro256(seed: SyntheticModel.mix(seed, 3, UInt64(record), UInt64(matrix), UInt64(b)))
                let validRows = min(32, m.rows - 32 * b)
                // Rows past the matrix (last block) stay zero, as MWQTiles.encode leaves them.
                var mask = [UInt8](repeating: 0, count: 16)
                for i in 0..<16 { mask[i] = (i < validRows ? 0x0F : 0) | (16 + i < validRows ? 0xF0 : 0) }
                for j in 0..<G {
                    let t = base + (b * G + j) * tile
                    for w in stride(from: 0, to: planeBytes, by: 8) { t.storeBytes(of: planes.next(), toByteOffset: w, as: UInt64.self) }
                    if validRows < 32 {
                        for w in 0..<planeBytes { t.storeBytes(of: t.load(fromByteOffset: w, as: UInt8.self) & mask[w % 16], toByteOffset: w, as: UInt8.self) }
                    }
                    let scales = t + planeBytes
                    for i in 0..<validRows {
                        let s = nominal * (0.75 + 0.5 * factors.unitFloat())
                        if isBase {
                            scales.storeBytes(of: SyntheticModel.half(s).littleEndian, toByteOffset: 2 * i, as: UInt16.self)
                            scales.storeBytes(of: SyntheticModel.half(-s * maxCode / 2).littleEndian, toByteOffset: 64 + 2 * i, as: UInt16.self)
                        } else {
                            scales.storeBytes(of: SyntheticModel.half(s / signDivisor).littleEndian, toByteOffset: 2 * i, as: UInt16.self)
                        }
                    }
                }
            }
        }
    }

    static let bosID = 256
    static let eosID = 257

    /// GPT-2's reversible map from bytes to printable characters (as the byte-level tokenizer
    /// reads its vocabulary).
    static let byteToUnicode: [Unicode.Scalar] = {
        let printable = Set(Array(33...126) + Array(161...172) + Array(174...255))
        var extra = 0
        return (0..<256).map { b in
            if printable.contains(b) { return Unicode.Scalar(UInt32(b))! }
            defer { extra += 1 }
            return Unicode.Scalar(UInt32(256 + extra))!
        }
    }()

    /// float16 bits of `f`, rounded to nearest even: the bit arithmetic for values that are
    /// normal in float16 (all but a few here), the library's conversion for the rest — a
    /// software call that dominated writing the resident tensors.
    @inline(__always) static func half(_ f: Float) -> UInt16 {
        let x = f.bitPattern
        let exponent = Int((x >> 23) & 0xFF) - 127 + 15
        guard exponent > 0 && exponent < 31 else { return halfBitsFromFloat(f) }
        let mantissa = x & 0x7F_FFFF, rest = mantissa & 0x1FFF
        var h = UInt32(exponent) << 10 | mantissa >> 13
        // A carry out of the mantissa moves to the next exponent (to infinity past 65504), as it should.
        if rest > 0x1000 || (rest == 0x1000 && h & 1 == 1) { h += 1 }
        return UInt16(truncatingIfNeeded: (x >> 16) & 0x8000) | UInt16(h)
    }

    /// A seed from several numbers (splitmix64 over each in turn).
    static func mix(_ values: UInt64...) -> UInt64 {
        var h: UInt64 = 0x6A09_E667_F3BC_C908
        for v in values {
            var sm = SplitMix64(state: h ^ v)
            h = sm.next()
        }
        return h
    }
}

/// splitmix64: seeds the generators.
struct SplitMix64 {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// xoshiro256**: the synthetic weights' generator.
struct Xoshiro256 {
    private var s0, s1, s2, s3: UInt64

    init(seed: UInt64) {
        var sm = SplitMix64(state: seed)
        s0 = sm.next(); s1 = sm.next(); s2 = sm.next(); s3 = sm.next()
    }

    @inline(__always) mutating func next() -> UInt64 {
        let result = ((s1 &* 5) << 7 | (s1 &* 5) >> 57) &* 9
        let t = s1 << 17
        s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3
        s2 ^= t
        s3 = s3 << 45 | s3 >> 19
        return result
    }

    /// Uniform in [0, 1), 24 bits.
    @inline(__always) mutating func unitFloat() -> Float { Float(next() >> 40) * (1 / 16_777_216) }
}
