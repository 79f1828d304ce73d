import Foundation
import D2MoEFormats

/// What `d2moe inspect` prints: the file's format, architecture, key sizes and tensor table.
public enum ModelInspector {
    public struct Tensor: Sendable {
        public var name: String
        /// Outermost first (PyTorch order).
        public var shape: [Int]
        public var type: String
        public var bytes: Int
    }

    public struct Report: Sendable {
        public var format: String
        public var architecture: String
        /// Ordered (name, value) pairs.
        public var properties: [(String, String)]
        public var tensors: [Tensor]
        public var totalBytes: Int { tensors.reduce(0) { $0 + $1.bytes } }
    }

    public static func inspect(path: String) throws -> Report {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ModelError("\(path): no such file or folder")
        }
        if isDirectory.boolValue {
            let model = try ModelLoader.loadFolder(path, options: LoadOptions())
            let folder = try SafetensorsFolder(path: path)
            let tensors = folder.tensorNames.compactMap { folder.tensorInfo(named: $0) }.map {
                Tensor(name: $0.name, shape: $0.shape, type: $0.dtype.rawValue, bytes: $0.byteCount)
            }
            return Report(format: "Hugging Face folder (safetensors)", architecture: model.info.modelType,
                          properties: properties(model.info), tensors: tensors)
        }
        let file = try GGUFFile(path: path)
        let model = try ModelLoader.loadGGUF(file, options: LoadOptions())
        var props = [("gguf version", "\(file.version)")]
        if let name = file.metadata["general.name"]?.string { props.append(("name", name)) }
        props += properties(model.info)
        if let t = file.metadata["tokenizer.ggml.model"]?.string {
            props.append(("tokenizer", "\(t), \(file.metadata["tokenizer.ggml.tokens"]?.stringArray?.count ?? 0) tokens"))
        }
        let tensors = file.tensors.map {
            Tensor(name: $0.name, shape: $0.dimensions.reversed(), type: $0.type.name, bytes: $0.byteCount)
        }
        return Report(format: "GGUF", architecture: model.info.modelType, properties: props, tensors: tensors)
    }

    static func properties(_ i: ModelInfo) -> [(String, String)] {
        var p = [("layers", "\(i.layerCount)"), ("hidden", "\(i.hiddenSize)"),
                 ("heads", "\(i.headCount) (kv \(i.kvHeadCount), head dim \(i.headDim))"),
                 ("vocabulary", "\(i.vocabularySize)"), ("context", "\(i.contextLength)")]
        if i.expertCount > 0 {
            p.append(("experts", "\(i.expertCount), top-\(i.expertsPerToken), in \(i.moeLayerCount) layers"))
        }
        return p
    }
}
