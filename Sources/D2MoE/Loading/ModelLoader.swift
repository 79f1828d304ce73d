import Foundation
import D2MoEFormats
import D2MoETokenizers

/// Opens model files: a GGUF file, or a Hugging Face folder (config.json and safetensors).
public enum ModelLoader {
    /// The model alone (no tokenizer needed), for tools and tests.
    public static func loadModel(path: String, options: LoadOptions = .init()) throws -> TransformerModel {
        try open(path: path, options: options).model
    }

    struct Opened {
        let model: TransformerModel
        let gguf: GGUFFile?
        let folder: String?
    }

    static func open(path: String, options: LoadOptions) throws -> Opened {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ModelError("\(path): no such file or folder")
        }
        if isDirectory.boolValue { return Opened(model: try loadFolder(path, options: options), gguf: nil, folder: path) }
        let file = try GGUFFile(path: path)
        return Opened(model: try loadGGUF(file, options: options), gguf: file, folder: nil)
    }

    static func loadGGUF(_ file: GGUFFile, options: LoadOptions) throws -> TransformerModel {
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
        let config = ConfigReader(architecture.config(fromGGUF: metadata, architecture: name), origin: "\(file.path) (metadata)")
        let heads = try config.int("num_attention_heads")
        let weights = GGUFWeights(file: file, architecture: architecture, heads: heads,
                                  kvHeads: config.optionalInt("num_key_value_heads") ?? heads)
        return try architecture.build(config, weights, options: options)
    }

    static func loadFolder(_ path: String, options: LoadOptions) throws -> TransformerModel {
        let configPath = (path as NSString).appendingPathComponent("config.json")
        guard let data = FileManager.default.contents(atPath: configPath) else {
            throw ModelError("\(path): no config.json")
        }
        guard let json = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw ModelError("\(configPath): not a JSON object")
        }
        let config = ConfigReader(json, origin: configPath)
        let modelType = try config.string("model_type")
        guard let architecture = ModelRegistry.architecture(modelType: modelType) else {
            throw ModelError("\(configPath): model_type '\(modelType)' is not supported (supported: \(ModelRegistry.supportedModelTypes.joined(separator: ", ")))")
        }
        let weights = SafetensorsWeights(folder: try SafetensorsFolder(path: path), origin: path)
        return try architecture.build(config, weights, options: options)
    }
}
