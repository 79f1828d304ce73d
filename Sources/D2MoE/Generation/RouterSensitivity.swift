import Foundation
import D2MoEKernels

/// Puts one policy layer at `level` (1 = the lowest) and every other at the highest
/// (sensitivity and `--objective kl` runs).
final class OneLayerLow: BitWidthPolicy, @unchecked Sendable {
    var layer = -1
    var level = 1
    var name: String { "one-layer-low" }
    func levels(layer: Int, input: UnsafePointer<Float>, hidden: Int, routes: ExpertRoutes, nExperts: Int, levelCount: Int,
                into levels: inout [Int]) {
        for i in levels.indices { levels[i] = layer == self.layer ? level : levelCount }
    }
}

extension RouterTraining {
    /// Per-layer weights that turn each layer's output NMSE into its effect on the model's output
    /// (`--sensitivity`): layer l alone at the lowest level, the KL divergence of the final
    /// next-token distributions from the all-highest model over one calibration window, divided
    /// by the layer's mean lowest-level NMSE; normalised to mean 1. The per-layer objective alone
    /// treats a relative error equally in every layer, though errors in some layers spread much
    /// further. Returns decoder layer → weight.
    static func sensitivity(model: TransformerModel, tokens: [Int32], window: Int, samples: [RouterSamples], bits: [Int],
                            progress: (String) -> Void) throws -> [Int: Float] {
        let n = min(window, tokens.count)
        let batch = (0..<n).map { BatchToken(sequence: 0, position: $0, token: tokens[$0], wantsLogits: $0 % 4 == 3) }
        let rows = batch.filter(\.wantsLogits).count, vocab = model.info.vocabularySize
        let cache = model.makeCache(capacity: n)
        func run() throws -> [Float] {
            cache.clear()
            var logits = [Float](repeating: 0, count: rows * vocab)
            try logits.withUnsafeMutableBufferPointer { try model.forward(batch, caches: [cache], logits: $0.baseAddress!) }
            // Log-probabilities per row.
            for r in 0..<rows {
                let lse = Float(logits.withUnsafeBufferPointer { Perplexity.logSumExp($0.baseAddress! + r * vocab, vocab) })
                for v in 0..<vocab { logits[r * vocab + v] -= lse }
            }
            return logits
        }
        let reference = try run()
        let policy = OneLayerLow()
        _ = try model.useBitPolicy(policy, bits: bits)
        defer { model.dropBitPolicy() }
        let layers = model.policyLayers
        var kl = [Int: Double]()
        for (p, decoder) in layers.enumerated() {
            policy.layer = p
            let q = try run()
            var d = 0.0
            for i in 0..<(rows * vocab) where reference[i] > -30 { d += Foundation.exp(Double(reference[i])) * Double(reference[i] - q[i]) }
            kl[decoder] = d / Double(rows)
            progress(String(format: "sensitivity: layer %d alone at %d bits, KL %.4f", decoder, bits[0], kl[decoder]!))
        }
        var weights = [Int: Float]()
        for l in Set(samples.map(\.layer)) {
            let s = samples.filter { $0.layer == l }
            let total = s.reduce(0.0) { acc, x in acc + (0..<x.rows).reduce(0.0) { $0 + Double(x.errors[$1 * x.levels]) } }
            let count = s.reduce(0) { $0 + $1.rows }
            let nmse = total / Double(max(count, 1))
            weights[l] = Float((kl[l] ?? 0) / max(nmse, 1e-12))
        }
        let mean = weights.values.reduce(0, +) / Float(max(weights.count, 1))
        return weights.mapValues { $0 / max(mean, 1e-30) }
    }
}

extension TransformerModel {
    /// Back to every expert at its loaded level.
    func dropBitPolicy() {
        mixedDense = nil
        bitRouting = nil
        (experts as? ResidentExperts)?.mixed = nil
    }
}
