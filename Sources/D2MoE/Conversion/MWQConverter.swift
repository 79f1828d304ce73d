import Foundation
import D2MoEFormats

/// Writes a model as an MWQ container: routed experts (or, in dense models, each layer's FFN as
/// one expert) quantized to nested bit-widths, everything else resident.
public enum MWQConverter {
    /// A quantization scheme: `v1` = {2,3,4}, `v2` = {5,6,7,8}, `mwqA-B` any contiguous range,
    /// `rtnN` = independent round-to-nearest at N bits (a base level alone); `mfree` = separate
    /// RTN copies at 2, 3 and 4 bits and `copiesA-B` at A…B bits (the matryoshka-free baseline:
    /// each level a whole copy, not a prefix).
    public struct Scheme: Sendable {
        public let name: String
        public let bits: [Int]
        /// False for separate copies.
        public let nested: Bool

        public init(_ name: String) throws {
            self.name = name
            func range(_ rest: Substring) -> [Int]? {
                let parts = rest.split(separator: "-")
                guard parts.count == 2, let lo = Int(parts[0]), let hi = Int(parts[1]), (1...8).contains(lo), hi >= lo, hi <= 16 else { return nil }
                return Array(lo...hi)
            }
            var nested = true
            switch name {
            case "v1": bits = [2, 3, 4]
            case "v2": bits = [5, 6, 7, 8]
            case "mfree": bits = [2, 3, 4]; nested = false
            default:
                if name.hasPrefix("rtn"), let b = Int(name.dropFirst(3)), (1...8).contains(b) {
                    bits = [b]
                } else if name.hasPrefix("mwq"), let r = range(name.dropFirst(3)) {
                    bits = r
                } else if name.hasPrefix("copies"), let r = range(name.dropFirst(6)), r.last! <= 8 {
                    bits = r; nested = false
                } else {
                    throw ModelError("unknown scheme '\(name)' (v1, v2, mwqA-B such as mwq3-6, rtn1 … rtn8, mfree, copiesA-B such as copies2-4)")
                }
            }
            self.nested = nested
        }
    }

    public struct Summary: Sendable {
        public var expertRecords: Int
        public var quantizedWeights: Int
        public var residentBytes: Int
        /// Bytes of all expert records at each level.
        public var expertBytesPerLevel: [Int]
        /// Reconstruction error of all quantized weights at each level: Σ(W − Ŵ_k)² / ΣW².
        public var nmsePerLevel: [Double]
        public var group: Int
        public var seconds: Double
        /// With calibration: routed experts that no calibration token was routed to (quantized
        /// without calibration), and the calibration tokens run.
        public var uncalibratedExperts: Int
        public var calibrationTokens: Int
    }

    /// Records every tensor the architecture asks for, in order; routed experts are only named.
    private final class Recorder: TensorNameRecorder {
        let inner: WeightSource
        var names: [String] = []
        private var seen: Set<String> = []
        var origin: String { inner.origin }
        init(_ inner: WeightSource) { self.inner = inner }
        func shape(of name: String) -> [Int]? { inner.shape(of: name) }
        func record(_ name: String) {
            if seen.insert(name).inserted { names.append(name) }
        }
        func floats(_ name: String) throws -> [Float] {
            record(name)
            return try inner.floats(name)
        }
    }

    /// (layer, expert) of a quantizable FFN/expert matrix name, nil for everything else; `routed`
    /// tells a routed expert from a dense FFN (which is stored as expert 0).
    static func expertKey(_ name: String) -> (layer: Int, expert: Int, routed: Bool)? {
        let parts = name.split(separator: ".").map(String.init)
        guard let li = parts.firstIndex(of: "layers"), li + 1 < parts.count, let layer = Int(parts[li + 1]) else { return nil }
        guard !name.contains("shared_expert"), parts.last == "weight", parts.count >= 2 else { return nil }
        let module = parts[parts.count - 2]
        guard ["gate_proj", "up_proj", "down_proj", "w1", "w2", "w3"].contains(module) else { return nil }
        guard name.contains(".mlp.") || name.contains(".block_sparse_moe.") || name.contains(".feed_forward.") else { return nil }
        if let ei = parts.firstIndex(of: "experts"), ei + 1 < parts.count, let e = Int(parts[ei + 1]) { return (layer, e, true) }
        return (layer, 0, false)
    }

    /// `calibrationText` (tokenized by the model's tokenizer) or `calibrationIDs` (for models
    /// without one) turn on calibration: `calibrationTokens` of it are run in windows of
    /// `calibrationWindow`, and every FFN's scales (each routed expert's, from the tokens routed
    /// to it) weight their errors by what the matrix sees; `gptq` adds error compensation.
    public static func convert(model path: String, to out: String, scheme: Scheme, group requested: Int = 128,
                               resident: String = "f16", calibrationText: String? = nil, calibrationIDs: [Int32]? = nil,
                               calibrationTokens: Int = 4096, calibrationWindow: Int = 512,
                               gptq: Bool = false, progress: (String) -> Void = { _ in }) throws -> Summary {
        let start = Date()
        let source = try ModelLoader.source(path: path, options: LoadOptions())
        guard source.mwq == nil else { throw ModelError("\(path) is already an MWQ file") }
        let recorder = Recorder(source.weights)
        // Float16 is enough to list the names; the experts are not built at all.
        _ = try source.architecture.build(ConfigReader(source.config, origin: source.origin), recorder, options: LoadOptions(dtype: .f16))
        let names = recorder.names
        // The group must divide every quantized matrix's columns: fall back to 64 or 32 if needed.
        let expertNames = names.filter { expertKey($0) != nil }
        let columns = expertNames.compactMap { source.weights.shape(of: $0)?.last }
        guard let group = [requested, 64, 32].filter({ $0 <= requested }).first(where: { g in columns.allSatisfy { $0 % g == 0 } }) else {
            throw ModelError("\(path): expert matrix widths \(Set(columns).sorted()) are not multiples of 32")
        }
        if group != requested { progress("group \(requested) does not divide widths \(Set(columns).sorted()); using group \(group)") }
        let tokenizer: JSONValue = source.gguf.map { .object(["kind": .string("gguf"), "metadata": GGUFMetadata.tokenizerJSON($0)]) }
            ?? TokenizerLoader.folderFilesJSON(source.folder!)
        // Records wait beside the output: same file system, and not a RAM-backed /tmp.
        let outputFolder = (out as NSString).deletingLastPathComponent.isEmpty ? "." : (out as NSString).deletingLastPathComponent
        var writer = try MWQWriter(modelType: source.modelType, config: try jsonValue(source.config), tokenizer: tokenizer,
                               quantization: .init(scheme: scheme.name, bits: scheme.bits, group: group, scales: "minmax", resident: resident,
                                                   nested: scheme.nested),
                               spillDirectory: outputFolder)
        var summary = Summary(expertRecords: 0, quantizedWeights: 0, residentBytes: 0,
                              expertBytesPerLevel: Array(repeating: 0, count: scheme.bits.count),
                              nmsePerLevel: Array(repeating: 0, count: scheme.bits.count), group: group, seconds: 0,
                              uncalibratedExperts: 0, calibrationTokens: 0)
        var weightSquares = 0.0
        let calibrated = calibrationText != nil || calibrationIDs != nil
        if gptq && !calibrated { throw ModelError("GPTQ compensation needs calibration text (--calib)") }
        var calibration: MWQCalibration?
        if calibrated {
            let model: TransformerModel, ids: [Int32]
            if let calibrationIDs {
                model = try ModelLoader.loadModel(path: path, options: LoadOptions(contextLength: calibrationWindow))
                ids = calibrationIDs
            } else {
                let engine = try Engine.load(path: path, options: LoadOptions(contextLength: calibrationWindow))
                model = engine.model
                ids = engine.tokenizer.encode(calibrationText!, addSpecial: false, parseSpecial: false)
            }
            calibration = try MWQCalibration.collect(model: model, tokens: ids, count: calibrationTokens, window: calibrationWindow,
                                                     gram: gptq, progress: progress)
            summary.calibrationTokens = calibration!.tokens
            writer.header.quantization.scales = gptq ? "calibrated+gptq" : "calibrated"
        }
        var uncalibrated = Set<String>()
        // A record goes to the writer as soon as its last matrix is quantized, so the quantized
        // matrices are not held a second time until the end (16.5 GB peak for OLMoE-1B-7B before).
        var records: [String: [(name: String, copies: [MWQMatrix])]] = [:]
        var matricesPerRecord: [String: Int] = [:]
        for name in names { if let key = expertKey(name), source.weights.shape(of: name)?.count == 2 { matricesPerRecord["\(key.layer).\(key.expert)", default: 0] += 1 } }
        for name in names {
            let shape = source.weights.shape(of: name) ?? []
            let values = try source.weights.floats(name)
            if let key = expertKey(name), shape.count == 2 {
                let id = "\(key.layer).\(key.expert)"
                // Inputs of gate/up are the FFN input; of down, the activations.
                let isDown = name.hasSuffix("down_proj.weight") || name.hasSuffix("w2.weight")
                var seen: MWQCalibration.Columns?
                if let calibration {
                    let ffn = calibration.ffns[MWQCalibration.Key(layer: key.layer, expert: key.routed ? key.expert : nil)]
                    // A dense FFN sees every token; only a routed expert can be left without any.
                    if ffn == nil && !key.routed { throw ModelError("calibration did not reach \(name)") }
                    seen = ffn.map { isDown ? $0.activations : $0.input }
                    if let seen, seen.squares.count != shape[1] {
                        throw ModelError("calibration saw \(seen.squares.count) inputs of \(name), which has \(shape[1]) columns")
                    }
                    if seen == nil { uncalibrated.insert(id) }
                }
                // Nested: one matrix with every level; separate copies: one base-only matrix per bit-width.
                let plan: [(base: Int, signs: Int)] = scheme.nested ? [(scheme.bits[0], scheme.bits.count - 1)] : scheme.bits.map { ($0, 0) }
                let copies = try values.withUnsafeBufferPointer { v in
                    try plan.map { p -> MWQMatrix in
                        if gptq, let seen {
                            return try MWQMatrix.quantizeGPTQ(v, rows: shape[0], cols: shape[1], group: group, baseBits: p.base,
                                                              signLevels: p.signs, hessian: seen.gram)
                        }
                        return try MWQMatrix.quantize(v, rows: shape[0], cols: shape[1], group: group, baseBits: p.base,
                                                      signLevels: p.signs, importance: seen?.squares)
                    }
                }
                records[id, default: []].append((name, copies))
                if let matrices = records[id], matrices.count == matricesPerRecord[id] {
                    if scheme.nested {
                        try writer.addExpert(layer: key.layer, expert: key.expert, matrices: matrices.map { ($0.name, $0.copies[0]) })
                    } else {
                        try writer.addExpertCopies(layer: key.layer, expert: key.expert, matrices: matrices)
                    }
                    records[id] = nil
                    summary.expertRecords += 1
                }
                summary.quantizedWeights += values.count
                for k in scheme.bits.indices {
                    let (m, level) = scheme.nested ? (copies[0], k) : (copies[k], 0)
                    summary.expertBytesPerLevel[k] += m.storedByteCount(level)
                    // Squared error summed here, divided by ΣW² at the end.
                    summary.nmsePerLevel[k] += zip(m.dequantize(level: level + 1), values).reduce(0) { $0 + Double(($1.0 - $1.1) * ($1.0 - $1.1)) }
                }
                weightSquares += values.reduce(0) { $0 + Double($1 * $1) }
                progress("quantized \(name) \(shape)")
            } else {
                // "q4": projections (attention, shared experts) as 4-bit packed base planes, which
                // the MWQ kernels read in place; embeddings, the output head and routers as Q8_0.
                // Groups of 32, as ggml's Q4_0/Q4_1 blocks: 5 bits per weight like Q4_1, and a Q4_1
                // source's grid is met again (SmolLM2: perplexity 31.90 against 31.93 with these
                // matrices in Q8_0; groups of 64 gave 35.56).
                if resident == "q4", shape.count == 2, name.hasSuffix("_proj.weight"), shape[1] % 32 == 0 {
                    let m = try values.withUnsafeBufferPointer {
                        try MWQMatrix.quantize($0, rows: shape[0], cols: shape[1], group: 32, baseBits: 4, signLevels: 0)
                    }
                    writer.addResident(name, matrix: m)
                    summary.residentBytes += m.storedByteCount(0)
                    continue
                }
                // Matrices in the resident type (Q8_0 needs rows a multiple of 32 long, else float16);
                // vectors (norms, biases) stay float32.
                var type = shape.count >= 2 ? ElementType(rawValue: resident == "q4" ? "q8_0" : resident) ?? .f16 : .f32
                if !type.holds(cols: shape.last ?? 1) { type = .f16 }
                try writer.addResident(name, shape: shape, values: values, dtype: type.rawValue)
                summary.residentBytes += values.count / (shape.last ?? 1) * type.rowBytes(cols: shape.last ?? 1)
            }
        }
        summary.nmsePerLevel = summary.nmsePerLevel.map { $0 / max(weightSquares, .leastNormalMagnitude) }
        summary.uncalibratedExperts = uncalibrated.count
        try writer.write(to: out)
        summary.seconds = Date().timeIntervalSince(start)
        return summary
    }

    static func jsonValue(_ any: Any) throws -> JSONValue {
        switch any {
        case is NSNull: return .null
        case let s as String: return .string(s)
        case let a as [Any]: return .array(try a.map(jsonValue))
        case let o as [String: Any]: return .object(try o.mapValues(jsonValue))
        case let n as NSNumber:
            // Native numbers bridge here too. The stored type decides: JSONSerialization's 0 and 1
            // also cast to Bool, which turned config.json's `mlp_only_layers: [1]` into [true].
            switch String(cString: n.objCType) {
            case "c", "B": return .bool(n.boolValue)
            case "f", "d": return .double(n.doubleValue)
            default: return .int(n.intValue)
            }
        default: throw ModelError("config value \(any) cannot be stored in an MWQ header")
        }
    }
}
