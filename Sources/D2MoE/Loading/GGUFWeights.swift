import D2MoEFormats

/// Weights of a GGUF file under Hugging Face names: the architecture's table maps each name to
/// llama.cpp's, every quant type is dequantized exactly, q/k rows permuted by llama.cpp's
/// converter are restored, and per-expert names slice llama.cpp's stacked expert tensors.
package final class GGUFWeights: WeightSource {
    let file: GGUFFile
    let architecture: GGUFArchitecture.Type
    /// Heads and KV heads, for undoing the q/k permutation.
    let heads: Int
    let kvHeads: Int
    package var origin: String { file.path }

    init(file: GGUFFile, architecture: GGUFArchitecture.Type, heads: Int, kvHeads: Int) {
        self.file = file
        self.architecture = architecture
        self.heads = heads
        self.kvHeads = kvHeads
    }

    /// GGUF tensor and, for a per-expert name, the expert index into its stack.
    private func locate(_ name: String) -> (GGUFTensorInfo, expert: Int?)? {
        if let expert = Self.expertName(name) {
            guard let info = file.tensor(named: "blk.\(expert.layer).ffn_\(expert.kind)_exps.weight") else { return nil }
            return (info, expert.index)
        }
        if let router = Self.routerName(name) {
            return file.tensor(named: "blk.\(router).ffn_gate_inp.weight").map { ($0, nil) }
        }
        guard let gguf = architecture.ggufName(name), let info = file.tensor(named: gguf) else { return nil }
        return (info, nil)
    }

    package func shape(of name: String) -> [Int]? {
        guard let (info, expert) = locate(name) else { return nil }
        let shape = Array(info.dimensions.reversed())  // GGUF lists the contiguous dimension first
        return expert == nil ? shape : Array(shape.dropFirst())
    }

    package func floats(_ name: String) throws -> [Float] {
        guard let (info, expert) = locate(name) else { throw ModelError("\(origin): missing tensor for '\(name)'") }
        if let expert {
            // Expert e's rows are one contiguous run of the stack: only its blocks are dequantized
            // (converters ask for gate, up and down of one expert in turn, so caching a whole stack
            // dequantized each stack once per expert).
            let per = info.elementCount / info.dimensions.last!
            guard expert < info.dimensions.last! else { throw ModelError("\(origin): '\(info.name)' has no expert \(expert)") }
            let elements = (expert * per)..<((expert + 1) * per)
            defer { file.releaseResidentPages(of: info, elements: elements) }
            return try file.dequantize(info, elements: elements)
        }
        // The model keeps its own converted copy: the mapping's pages need not stay resident
        // beside it while the rest loads (a load's peak held the whole file besides the model).
        defer { file.releaseResidentPages(of: info) }
        var values = try file.dequantize(info)
        if architecture.ggufPermutesQK {
            if name.hasSuffix("self_attn.q_proj.weight") { values = Self.unpermute(values, heads: heads, cols: info.dimensions[0]) }
            if name.hasSuffix("self_attn.k_proj.weight") { values = Self.unpermute(values, heads: kvHeads, cols: info.dimensions[0]) }
        }
        // Before, the offset stayed in and the model skipped its own: a .mwq converted from such a
        // file then applied it twice (Gemma 3 perplexity 2·10⁹).
        if architecture.ggufNormOffset != 0, name.hasSuffix("norm.weight") {
            for i in values.indices { values[i] -= architecture.ggufNormOffset }
        }
        return values
    }

    /// A plain 2-D tensor a block of rows at a time (no float32 copy of a whole 50304 × 2048
    /// embedding); nil for what `floats` must rework (q/k rows llama.cpp permuted, norms,
    /// stacked experts).
    package func rowReader(_ name: String) throws -> ((Range<Int>, UnsafeMutablePointer<Float>) throws -> Void)? {
        guard let (info, expert) = locate(name), expert == nil, info.dimensions.count == 2,
              info.type.isDequantizable, info.dimensions[0] % info.type.blockSize == 0 else { return nil }
        if architecture.ggufPermutesQK && (name.hasSuffix("self_attn.q_proj.weight") || name.hasSuffix("self_attn.k_proj.weight")) { return nil }
        if architecture.ggufNormOffset != 0 && name.hasSuffix("norm.weight") { return nil }
        let file = self.file, cols = info.dimensions[0]
        return { rows, out in
            do { try file.dequantizeRows(info, rows, into: out) } catch let e as FormatError { throw ModelError(e.description) }
            file.releaseResidentPages(of: info, elements: (rows.lowerBound * cols)..<(rows.upperBound * cols))
        }
    }

    /// llama.cpp's converter stores row h·d + 2i + s at h·d + s·d/2 + i (interleaved rope pairs);
    /// this restores the Hugging Face (rotate-half) order.
    package static func unpermute(_ w: [Float], heads: Int, cols: Int) -> [Float] {
        reorderRopeRows(w, heads: heads, cols: cols, toInterleaved: false)
    }

    /// The inverse of `unpermute`, for writing llama-style GGUF files.
    package static func permute(_ w: [Float], heads: Int, cols: Int) -> [Float] {
        reorderRopeRows(w, heads: heads, cols: cols, toInterleaved: true)
    }

    private static func reorderRopeRows(_ w: [Float], heads: Int, cols: Int, toInterleaved: Bool) -> [Float] {
        let headDim = w.count / cols / heads, half = headDim / 2
        var out = w
        for h in 0..<heads {
            for i in 0..<half {
                for s in 0..<2 {
                    let interleaved = (h * headDim + 2 * i + s) * cols, halves = (h * headDim + s * half + i) * cols
                    let (src, dst) = toInterleaved ? (halves, interleaved) : (interleaved, halves)
                    out[dst..<(dst + cols)] = w[src..<(src + cols)]
                }
            }
        }
        return out
    }

    /// A per-expert Hugging Face name → (L, E, gate|up|down): Mixtral's
    /// `model.layers.L.block_sparse_moe.experts.E.w1.weight` and the `model.layers.L.mlp.experts.E.gate_proj.weight`
    /// of OLMoE and the Qwen MoE models; llama.cpp stacks both as `blk.L.ffn_{gate,up,down}_exps`.
    static func expertName(_ name: String) -> (layer: Int, index: Int, kind: String)? {
        let p = name.split(separator: ".")
        guard p.count == 8, p[0] == "model", p[1] == "layers", p[3] == "block_sparse_moe" || p[3] == "mlp", p[4] == "experts",
              let layer = Int(p[2]), let index = Int(p[5]) else { return nil }
        let kinds = p[3] == "mlp" ? ["gate_proj": "gate", "up_proj": "up", "down_proj": "down"] : ["w1": "gate", "w3": "up", "w2": "down"]
        return kinds[String(p[6])].map { (layer, index, $0) }
    }

    /// The router's Hugging Face name (`block_sparse_moe.gate` or `mlp.gate`) → its layer (GGUF `ffn_gate_inp`).
    static func routerName(_ name: String) -> Int? {
        let p = name.split(separator: ".")
        guard p.count == 6, p[0] == "model", p[1] == "layers", p[3] == "block_sparse_moe" || p[3] == "mlp", p[4] == "gate" else { return nil }
        return Int(p[2])
    }
}

/// Weights of a Hugging Face folder (one or several safetensors files).
final class SafetensorsWeights: WeightSource {
    let folder: SafetensorsFolder
    let origin: String

    init(folder: SafetensorsFolder, origin: String) {
        self.folder = folder
        self.origin = origin
    }

    func shape(of name: String) -> [Int]? { folder.tensorInfo(named: name)?.shape }

    func floats(_ name: String) throws -> [Float] { try folder.floats(named: name) }
}
