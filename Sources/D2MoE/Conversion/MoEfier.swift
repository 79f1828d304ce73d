import Foundation
import D2MoEFormats

/// Turns a dense Llama-family GGUF model into a Mixtral-style MoE ("MoEfication", as LLaMA-MoE was
/// built): each feed-forward layer's neurons are split into equal experts by co-activation on
/// calibration text, and a linear router is fitted to predict how strongly each expert fires.
/// Experts are summed unweighted, so with every expert active the MoE computes the dense model.
/// The output GGUF copies every other tensor byte for byte and stores the experts in float32.
public enum MoEfier {
    public struct Options: Sendable {
        public var experts = 8
        public var topK = 8
        /// Calibration tokens observed (in windows of `window` tokens).
        public var calibrationTokens = 8192
        public var window = 512
        public var iterations = 15
        public var seed: UInt64 = 0
        public init() {}
    }

    public struct Report: Sendable, Codable {
        public var layers: Int
        public var experts: Int
        public var topK: Int
        public var expertIntermediate: Int
        public var calibrationTokens: Int
        /// Per layer: share of the activation norm² that the router's top-k experts hold on the
        /// calibration tokens (1 = the router picks the experts that matter).
        public var routerCoverage: [Double]
        public var seconds: Double
    }

    public static func moefy(source: String, calibrationText: String, output: String, options: Options,
                             progress: ((String) -> Void)? = nil) throws -> Report {
        let start = DispatchTime.now()
        let engine = try Engine.load(path: source, options: LoadOptions(dtype: .f32, contextLength: options.window))
        let model = engine.model
        guard model.info.expertCount == 0 else { throw ModelError("\(source): already an MoE model") }
        guard let gguf = try? GGUFFile(path: source) else { throw ModelError("\(source): moefy needs a GGUF source") }
        let ff = model.layers.first.map { layer -> Int in
            if case .dense(let f) = layer.ffn { return f.intermediate }
            return 0
        } ?? 0
        guard options.experts >= 2, ff % options.experts == 0 else {
            throw ModelError("--experts \(options.experts) must be ≥ 2 and divide the feed-forward size \(ff)")
        }
        guard options.topK >= 1, options.topK <= options.experts else {
            throw ModelError("--top-k \(options.topK) must be in 1...\(options.experts)")
        }

        // 1. Observe every layer's feed-forward inputs and activations on calibration text.
        let tokens = engine.tokenizer.encode(calibrationText, addSpecial: false, parseSpecial: false)
        let windows = min(tokens.count / options.window, max(1, options.calibrationTokens / options.window))
        guard windows >= 1 else {
            throw ModelError("calibration text has \(tokens.count) tokens, fewer than one window of \(options.window)")
        }
        let recorder = ActivationRecorder(layers: model.info.layerCount, capacity: windows * options.window)
        model.observer = recorder
        defer { model.observer = nil }
        let cache = model.makeCache(capacity: options.window)
        var logits = [Float](repeating: 0, count: model.info.vocabularySize)
        for w in 0..<windows {
            cache.clear()
            let batch = (0..<options.window).map {
                BatchToken(sequence: 0, position: $0, token: tokens[w * options.window + $0], wantsLogits: $0 == options.window - 1)
            }
            try logits.withUnsafeMutableBufferPointer { try model.forward(batch, caches: [cache], logits: $0.baseAddress!) }
            progress?("calibration window \(w + 1)/\(windows)")
        }
        let n = recorder.count
        let hidden = model.info.hiddenSize, e = options.experts, per = ff / e

        // 2. Per layer: cluster neurons, fit the router, build the expert stacks.
        var writer = try GGUFWriter(copyingMetadataFrom: gguf)
        let arch = (gguf.metadata["general.architecture"]?.string) ?? "llama"
        writer.set("\(arch).expert_count", .uint(UInt64(e)))
        writer.set("\(arch).expert_used_count", .uint(UInt64(options.topK)))
        writer.set("\(arch).feed_forward_length", .uint(UInt64(per)))
        writer.set("\(arch).expert_feed_forward_length", .uint(UInt64(per)))
        writer.set("d2moe.unit_expert_weights", .bool(true))
        writer.set("d2moe.moefy.calibration_tokens", .uint(UInt64(n)))
        let replaced = Set((0..<model.info.layerCount).flatMap { l in ["gate", "up", "down"].map { "blk.\(l).ffn_\($0).weight" } })
        for info in gguf.tensors where !replaced.contains(info.name) {
            try writer.addTensor(copying: info, from: gguf)
        }
        var coverage: [Double] = []
        for (l, layer) in model.layers.enumerated() {
            guard case .dense(let ffn) = layer.ffn else { continue }
            guard let gateW = ffn.gate.dense, let upW = ffn.up.dense, let downW = ffn.down.dense else {
                throw ModelError("\(source): MoEfication needs float feed-forward weights, not packed MWQ ones")
            }
            let acts = recorder.activations[l], inputs = recorder.inputs[l]
            let clusters = NeuronClustering.cluster(activations: acts, tokens: n, neurons: ff, experts: e,
                                                    iterations: options.iterations, seed: options.seed &+ UInt64(l))
            var targets = [Float](repeating: 0, count: n * e)
            for t in 0..<n {
                for (c, members) in clusters.enumerated() {
                    var ss: Float = 0
                    for j in members { ss += acts[t * ff + j] * acts[t * ff + j] }
                    targets[t * e + c] = ss.squareRoot()
                }
            }
            let router = RouterFitting.fit(inputs: inputs, targets: targets, tokens: n, hidden: hidden, experts: e)
            coverage.append(routerCoverage(router: router, inputs: inputs, targets: targets, tokens: n, hidden: hidden,
                                           experts: e, topK: options.topK))
            var gate = [Float](), up = [Float](), down = [Float]()
            gate.reserveCapacity(ff * hidden); up.reserveCapacity(ff * hidden); down.reserveCapacity(ff * hidden)
            for members in clusters {
                for j in members {
                    for c in 0..<hidden { gate.append(gateW.element(j, c)); up.append(upW.element(j, c)) }
                }
                for r in 0..<hidden { for j in members { down.append(downW.element(r, j)) } }
            }
            // GGUF dimensions list the contiguous one first: [in, out, experts].
            writer.addTensor(name: "blk.\(l).ffn_gate_inp.weight", dimensions: [hidden, e], values: router)
            writer.addTensor(name: "blk.\(l).ffn_gate_exps.weight", dimensions: [hidden, per, e], values: gate)
            writer.addTensor(name: "blk.\(l).ffn_up_exps.weight", dimensions: [hidden, per, e], values: up)
            writer.addTensor(name: "blk.\(l).ffn_down_exps.weight", dimensions: [per, hidden, e], values: down)
            progress?(String(format: "layer %d: router top-%d coverage %.3f", l, options.topK, coverage.last!))
        }
        try writer.write(to: output)
        return Report(layers: model.info.layerCount, experts: e, topK: options.topK, expertIntermediate: per,
                      calibrationTokens: n, routerCoverage: coverage, seconds: seconds(since: start))
    }

    /// Mean over tokens of the activation energy in the router's top-k experts ÷ the total.
    static func routerCoverage(router: [Float], inputs: [Float], targets: [Float], tokens: Int, hidden: Int,
                               experts: Int, topK: Int) -> Double {
        var total = 0.0
        for t in 0..<tokens {
            var scores = [(Float, Int)]()
            for c in 0..<experts {
                var s: Float = 0
                for i in 0..<hidden { s += router[c * hidden + i] * inputs[t * hidden + i] }
                scores.append((s, c))
            }
            scores.sort { $0.0 > $1.0 }
            let all = (0..<experts).reduce(0.0) { $0 + Double(targets[t * experts + $1] * targets[t * experts + $1]) }
            let kept = scores.prefix(topK).reduce(0.0) { $0 + Double(targets[t * experts + $1.1] * targets[t * experts + $1.1]) }
            total += all > 0 ? kept / all : 1
        }
        return total / Double(tokens)
    }
}

/// Keeps each dense layer's feed-forward inputs and activations during calibration.
final class ActivationRecorder: FeedForwardObserver {
    private(set) var inputs: [[Float]]
    private(set) var activations: [[Float]]
    private var rows: [Int]
    let capacity: Int

    init(layers: Int, capacity: Int) {
        inputs = Array(repeating: [], count: layers)
        activations = Array(repeating: [], count: layers)
        rows = Array(repeating: 0, count: layers)
        self.capacity = capacity
    }

    /// Tokens recorded (the same for every layer).
    var count: Int { rows.min() ?? 0 }

    func observe(layer: Int, input: UnsafePointer<Float>, activations a: UnsafePointer<Float>, tokens: Int,
                 hidden: Int, intermediate: Int) {
        let n = min(tokens, capacity - rows[layer])
        guard n > 0 else { return }
        inputs[layer].append(contentsOf: UnsafeBufferPointer(start: input, count: n * hidden))
        activations[layer].append(contentsOf: UnsafeBufferPointer(start: a, count: n * intermediate))
        rows[layer] += n
    }
}
