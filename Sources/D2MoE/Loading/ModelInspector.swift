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
            let model = try ModelLoader.open(path: path, options: LoadOptions()).model
            let folder = try SafetensorsFolder(path: path)
            let tensors = folder.tensorNames.compactMap { folder.tensorInfo(named: $0) }.map {
                Tensor(name: $0.name, shape: $0.shape, type: $0.dtype.rawValue, bytes: $0.byteCount)
            }
            return Report(format: "Hugging Face folder (safetensors)", architecture: model.info.modelType,
                          properties: properties(model.info), tensors: tensors)
        }
        if MWQWeights.looksLikeMWQ(path) {
            let opened = try ModelLoader.open(path: path, options: LoadOptions())
            let h = opened.source.mwq!.header
            var props = [("mwq version", "\(h.version)"),
                         ("quantization", "\(h.quantization.scheme): bits \(h.quantization.bits.map(String.init).joined(separator: "/")), group \(h.quantization.group), scales \(h.quantization.scales), resident \(h.quantization.resident)"),
                         ("expert records", "\(h.experts.count)")]
            props += properties(opened.model.info)
            var tensors = h.resident.map { Tensor(name: $0.name, shape: $0.shape, type: $0.dtype, bytes: $0.bytes) }
            for e in h.experts {
                for m in e.matrices {
                    let bytes = MWQMatrix.baseByteCount(rows: m.rows, cols: m.cols, group: h.quantization.group, baseBits: h.quantization.bits[0])
                        + (h.quantization.bits.count - 1) * MWQMatrix.signByteCount(rows: m.rows, cols: m.cols, group: h.quantization.group)
                    tensors.append(Tensor(name: m.name, shape: [m.rows, m.cols], type: "mwq\(h.quantization.bits.first!)-\(h.quantization.bits.last!)", bytes: bytes))
                }
            }
            return Report(format: "MWQ", architecture: opened.model.info.modelType, properties: props, tensors: tensors)
        }
        let file = try GGUFFile(path: path)
        let model = try ModelLoader.open(path: path, options: LoadOptions()).model
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
