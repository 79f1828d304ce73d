import Foundation
import D2MoEFormats
import D2MoETokenizers

/// Opens model files: a GGUF file, a Hugging Face folder (config.json and safetensors), or an
/// MWQ container (`.mwq`).
public enum ModelLoader {
    /// The model alone (no tokenizer needed), for tools and tests.
    public static func loadModel(path: String, options: LoadOptions = .init()) throws -> TransformerModel {
        try open(path: path, options: options).model
    }

    /// What a model is built from, before building it.
    struct Source {
        let architecture: Architecture.Type
        /// config.json keys.
        let config: [String: Any]
        let weights: WeightSource
        let gguf: GGUFFile?
        let folder: String?
        let mwq: MWQFile?
        var origin: String { weights.origin }
        var modelType: String { (config["model_type"] as? String) ?? architecture.modelTypes[0] }
    }

    struct Opened {
        let model: TransformerModel
        let source: Source
        var gguf: GGUFFile? { source.gguf }
    }

    static func open(path: String, options: LoadOptions) throws -> Opened {
        let source = try Self.source(path: path, options: options)
        if source.mwq == nil, options.bits != nil {
            throw ModelError("\(path): --bits applies to .mwq files (make one with d2moe quantize)")
        }
        let config = ConfigReader(source.config, origin: "\(source.origin) (config)")
        guard let streaming = options.streaming else {
            let model = try source.architecture.build(config, source.weights, options: options)
            if let policy = options.bitPolicy, policy != "uniform" { try useBitPolicy(policy, model: model, source: source, options: options) }
            return Opened(model: model, source: source)
        }
        guard let file = source.mwq, let weights = source.weights as? MWQWeights else {
            throw ModelError("\(path): --memory-budget streams experts from .mwq files (make one with d2moe quantize)")
        }
        guard !options.dequantizeMWQ else { throw ModelError("--memory-budget computes on packed experts; drop --dequantize") }
        weights.streamsRoutedExperts = true
        let model = try source.architecture.build(config, weights, options: options)
        model.experts = try StreamingExperts.make(for: model, file: file, config: config, options: options, streaming: streaming)
        // The build copied the resident tensors; only the pool's bytes should count from here on.
        file.file.releaseResidentPages()
        return Opened(model: model, source: source)
    }

    /// Per-token bit-widths for the experts held in memory, which were loaded at the highest level.
    private static func useBitPolicy(_ name: String, model: TransformerModel, source: Source, options: LoadOptions) throws {
        guard let file = source.mwq else { throw ModelError("\(source.origin): --bit-policy applies to .mwq files") }
        let q = file.header.quantization
        guard q.isNested else { throw ModelError("\(file.path): per-token bit-widths on resident experts need nested levels (this file holds separate copies)") }
        guard options.bits == nil else { throw ModelError("--bits forces one bit-width; drop it to use --bit-policy \(name)") }
        guard !options.dequantizeMWQ else { throw ModelError("--bit-policy \(name) computes on packed experts; drop --dequantize") }
        let policy: BitWidthPolicy
        switch name {
        case "router":
            policy = try RouterBits.make(file: file, decoderLayers: model.policyLayers, experts: max(model.info.expertCount, 1), options: options)
        case "gate":
            policy = GateScoreBits()
        default:
            throw ModelError("bit-width policy '\(name)' without --memory-budget: uniform, gate or router")
        }
        _ = try model.useBitPolicy(policy, bits: q.bits)
    }

    static func source(path: String, options: LoadOptions) throws -> Source {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ModelError("\(path): no such file or folder")
        }
        if isDirectory.boolValue { return try folderSource(path) }
        if MWQWeights.looksLikeMWQ(path) { return try mwqSource(path, options: options) }
        return try ggufSource(try GGUFFile(path: path))
    }

    static func ggufSource(_ file: GGUFFile) throws -> Source {
        let metadata = GGUFMetadata.dictionary(file)
        guard let name = metadata["general.architecture"] as? String else {
            throw ModelError("\(file.path): metadata has no general.architecture")
        }
        // llama.cpp stores Mixtral-style models as the llama architecture with experts.
        let experts = (metadata["\(name).expert_count"] as? Int) ?? 0
        let architecture: GGUFArchitecture.Type
        if name == "llama" && experts > 0 {
            architecture = Mixtral.self
        } else if let a = ModelRegistry.architecture(gguf: name) {
            architecture = a
        } else {
            throw ModelError("\(file.path): GGUF architecture '\(name)' is not supported")
        }
        var config = architecture.config(fromGGUF: metadata, architecture: name)
        if config["model_type"] == nil { config["model_type"] = architecture.modelTypes[0] }
        let reader = ConfigReader(config, origin: "\(file.path) (metadata)")
        let heads = try reader.int("num_attention_heads")
        let weights = GGUFWeights(file: file, architecture: architecture, heads: heads,
                                  kvHeads: reader.optionalInt("num_key_value_heads") ?? heads)
        return Source(architecture: architecture, config: config, weights: weights, gguf: file, folder: nil, mwq: nil)
    }

    static func folderSource(_ path: String) throws -> Source {
        let configPath = (path as NSString).appendingPathComponent("config.json")
        guard let data = FileManager.default.contents(atPath: configPath) else {
            throw ModelError("\(path): no config.json")
        }
        guard let json = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw ModelError("\(configPath): not a JSON object")
        }
        let modelType = try ConfigReader(json, origin: configPath).string("model_type")
        guard let architecture = ModelRegistry.architecture(modelType: modelType) else {
            throw ModelError("\(configPath): model_type '\(modelType)' is not supported (supported: \(ModelRegistry.supportedModelTypes.joined(separator: ", ")))")
        }
        let weights = SafetensorsWeights(folder: try SafetensorsFolder(path: path), origin: path)
        return Source(architecture: architecture, config: json, weights: weights, gguf: nil, folder: path, mwq: nil)
    }

    static func mwqSource(_ path: String, options: LoadOptions) throws -> Source {
        let file = try MWQFile(path: path)
        let bits = file.header.quantization.bits
        let level: Int
        if let b = options.bits {
            guard let i = bits.firstIndex(of: b) else {
                throw ModelError("\(path): --bits \(b) is not stored in this file (it holds \(bits.map(String.init).joined(separator: ", ")) bits)")
            }
            level = i + 1
        } else {
            level = bits.count
        }
        guard let architecture = ModelRegistry.architecture(modelType: file.header.modelType) else {
            throw ModelError("\(path): model_type '\(file.header.modelType)' is not supported")
        }
        guard let config = file.header.config.plain as? [String: Any] else { throw ModelError("\(path): the header's config is not an object") }
        return Source(architecture: architecture, config: config, weights: MWQWeights(file: file, level: level, packedKernels: !options.dequantizeMWQ),
                      gguf: nil, folder: nil, mwq: file)
    }
}
