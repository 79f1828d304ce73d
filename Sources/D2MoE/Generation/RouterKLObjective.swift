import Foundation
import D2MoEKernels

/// What `train-router` minimises per row and level, besides α·bits.
public enum RouterObjective: String, Sendable, Codable, CaseIterable {
    /// The expert's output error against the highest level, relative to its mean output energy
    /// (DESIGN §3.1's per-layer objective).
    case nmse
    /// The measured effect on the model's output: the KL divergence of the next-token
    /// distribution at the row's own position, from the all-highest model's, with the row's layer
    /// alone at that level (every other layer at the highest). See `RouterTraining.klCosts`.
    case kl
}

extension RouterTraining {
    /// `--objective kl`: replaces each row's per-level cost by its effect on the model's output,
    /// the end-to-end loss the per-layer objective stands in for. For every calibration window and
    /// every policy layer l and level k below the highest, the model runs with l alone at k and
    /// every other layer at the highest, and the KL divergence of each position's next-token
    /// distribution from the all-highest model's is kept. A row of a dense block (one token) then
    /// costs its own position's KL at each level: the cost of lowering that layer for that token,
    /// taken as additive over layers (no interaction between lowered layers is modelled) and
    /// charged to the position where the change enters (its effect through attention on later
    /// positions is charged to them). In a sparse block the token's KL is shared among its
    /// experts' rows in proportion to their gate-weighted squared errors at that level (collection
    /// keeps or drops all of a token's rows in a layer together). Rows without a known token keep
    /// their NMSE, weighted per level by the layer's mean KL per unit of mean NMSE. Costs are
    /// finally scaled so that their mean at
    /// the lowest level equals the NMSE objective's, so α keeps its scale. Passes resume at the
    /// lowered layer from the reference pass's residual stream, so a pass costs the layers after
    /// it only. Returns each decoder layer's mean KL per level below the highest.
    static func klCosts(model: TransformerModel, tokens: [Int32], window: Int, windows: Int, samples: inout [RouterSamples],
                        bits: [Int], progress: (String) -> Void) throws -> [Int: [Double]] {
        let kl = try outputKL(model: model, tokens: tokens, window: window, windows: windows, bits: bits, progress: progress)
        return apply(kl: kl, to: &samples, levels: bits.count)
    }

    /// The measurement behind `--objective kl`: decoder layer → [level below highest][token] →
    /// KL divergence (nats) of that token's next-token distribution from the all-highest model's,
    /// with only that layer at that level, over `windows` windows of `window` tokens. `model`
    /// must be loaded at the highest level of a nested file.
    public static func outputKL(model: TransformerModel, tokens: [Int32], window: Int, windows: Int, bits: [Int],
                                progress: (String) -> Void = { _ in }) throws -> [Int: [[Float]]] {
        guard windows >= 1, window >= 1, windows * window <= tokens.count else {
            throw ModelError("\(windows) windows of \(window) tokens need more than the \(tokens.count) calibration tokens")
        }
        let levels = bits.count, vocab = model.info.vocabularySize, hidden = model.info.hiddenSize
        let layers = model.policyLayers
        let n = windows * window
        var kl = [Int: [[Float]]]()  // decoder layer → [level below highest][calibration token]
        for l in layers { kl[l] = Array(repeating: Array(repeating: 0, count: n), count: levels - 1) }
        let cache = model.makeCache(capacity: window)
        var probs = [Float](repeating: 0, count: window * vocab)      // [window, vocab] reference p
        var reference = [Float](repeating: 0, count: window * vocab)  // [window, vocab] its logits
        var logits = [Float](repeating: 0, count: window * vocab)     // [window, vocab]
        var referenceLSE = [Double](repeating: 0, count: window)      // log Σ exp per position
        var residual = Array(repeating: [Float](repeating: 0, count: window * hidden), count: model.layers.count)
        let policy = OneLayerLow()
        let start = Date()
        defer { model.captureResidual = nil; model.resume = nil; model.dropBitPolicy() }
        for w in 0..<windows {
            let batch = (0..<window).map { BatchToken(sequence: 0, position: $0, token: tokens[w * window + $0], wantsLogits: true) }
            model.dropBitPolicy()
            model.captureResidual = { l, x in residual[l].withUnsafeMutableBufferPointer { $0.baseAddress!.update(from: x, count: window * hidden) } }
            cache.clear()
            try reference.withUnsafeMutableBufferPointer { try model.forward(batch, caches: [cache], logits: $0.baseAddress!) }
            model.captureResidual = nil
            for r in 0..<window {
                let lse = logSumExp(reference, row: r, vocab: vocab)
                referenceLSE[r] = lse
                for v in 0..<vocab { probs[r * vocab + v] = Float(Foundation.exp(Double(reference[r * vocab + v]) - lse)) }
            }
            _ = try model.useBitPolicy(policy, bits: bits)
            // In layer order: a pass resumed at layer l rewrites the cache from l on, and layer l's
            // own keys and values come from the unchanged residual, so every layer before the next
            // pass's stays as the reference left it.
            for (p, l) in layers.enumerated() {
                for k in 1..<levels {
                    policy.layer = p; policy.level = k
                    cache.clear()
                    try residual[l].withUnsafeBufferPointer { r in
                        model.resume = (l, r.baseAddress!)
                        defer { model.resume = nil }
                        try logits.withUnsafeMutableBufferPointer { try model.forward(batch, caches: [cache], logits: $0.baseAddress!) }
                    }
                    for r in 0..<window {
                        // Σ p (log p − log q) from the logits' differences, which stay exact
                        // where the two passes agree (small divergences keep their digits).
                        let shift = referenceLSE[r] - logSumExp(logits, row: r, vocab: vocab)
                        var d = 0.0
                        for v in 0..<vocab {
                            d += Double(probs[r * vocab + v]) * (Double(reference[r * vocab + v] - logits[r * vocab + v]) - shift)
                        }
                        kl[l]![k - 1][w * window + r] = Float(max(0, d))
                    }
                }
                let means = kl[l]!.map { row in (0..<window).reduce(0.0) { $0 + Double(row[w * window + $1]) } / Double(window) }
                progress(String(format: "kl: window %d/%d, layer %d: mean KL %@ (%.0f s)", w + 1, windows, l,
                                means.map { String(format: "%.5f", $0) }.joined(separator: " / "), Date().timeIntervalSince(start)))
            }
        }
        return kl
    }

    /// Turns measured KL (decoder layer → [level below highest][calibration token]) into the rows'
    /// costs as `klCosts` describes.
    public static func apply(kl: [Int: [[Float]]], to samples: inout [RouterSamples], levels: Int) -> [Int: [Double]] {
        var meanKL = [Int: [Double]]()
        for (l, rows) in kl { meanKL[l] = rows.map { r in r.reduce(0.0) { $0 + Double($1) } / Double(max(r.count, 1)) } }
        // Each layer's mean NMSE per level over its rows, for rows without a position and for drops.
        var meanNMSE = [Int: [Double]](), counts = [Int: Int]()
        var nmseLowest = 0.0
        for s in samples {
            var m = meanNMSE[s.layer] ?? Array(repeating: 0, count: levels)
            for row in 0..<s.rows { for k in 0..<levels { m[k] += Double(s.errors[row * levels + k]) } }
            meanNMSE[s.layer] = m
            counts[s.layer, default: 0] += s.rows
            for row in 0..<s.rows { nmseLowest += Double(s.errors[row * levels]) }
        }
        for (l, m) in meanNMSE { meanNMSE[l] = m.map { $0 / Double(max(counts[l] ?? 1, 1)) } }
        // A token's KL in a layer is shared among its kept rows there (its experts) in proportion
        // to their gate-weighted squared errors at that level; a dense block's one row takes it all.
        func key(_ layer: Int, _ pos: Int) -> Int { layer << 32 | pos }
        var shared = [Int: (total: [Double], rows: Int)]()
        for s in samples {
            for row in 0..<s.rows {
                let pos = row < s.positions.count ? Int(s.positions[row]) : -1
                guard pos >= 0 else { continue }
                let w = row < s.gateWeights.count ? Double(s.gateWeights[row]) : 1
                var entry = shared[key(s.layer, pos)] ?? (Array(repeating: 0, count: levels), 0)
                for k in 0..<levels { entry.total[k] += w * w * Double(s.errors[row * levels + k]) }
                entry.rows += 1
                shared[key(s.layer, pos)] = entry
            }
        }
        var costLowest = 0.0
        for i in samples.indices {
            let l = samples[i].layer
            guard let layerKL = kl[l], let mk = meanKL[l], let mn = meanNMSE[l] else { continue }
            let ratio = (0..<(levels - 1)).map { mk[$0] / max(mn[$0], 1e-12) }
            for row in 0..<samples[i].rows {
                let pos = row < samples[i].positions.count ? Int(samples[i].positions[row]) : -1
                let w = row < samples[i].gateWeights.count ? Double(samples[i].gateWeights[row]) : 1
                for k in 0..<(levels - 1) {
                    let j = row * levels + k
                    if pos >= 0 && pos < layerKL[k].count, let entry = shared[key(l, pos)] {
                        let mine = w * w * Double(samples[i].errors[j])
                        let share = entry.total[k] > 0 ? mine / entry.total[k] : 1 / Double(entry.rows)
                        samples[i].errors[j] = Float(Double(layerKL[k][pos]) * share)
                    } else {
                        samples[i].errors[j] = Float(Double(samples[i].errors[j]) * ratio[k])
                    }
                }
                samples[i].errors[row * levels + levels - 1] = 0
                samples[i].energy[row] = Float(Double(samples[i].energy[row]) * ratio[0])
                costLowest += Double(samples[i].errors[row * levels])
            }
        }
        let scale = Float(nmseLowest / max(costLowest, 1e-30))
        for i in samples.indices {
            for j in samples[i].errors.indices { samples[i].errors[j] *= scale }
            for j in samples[i].energy.indices { samples[i].energy[j] *= scale }
        }
        return meanKL
    }

    private static func logSumExp(_ x: [Float], row: Int, vocab: Int) -> Double {
        x.withUnsafeBufferPointer { Perplexity.logSumExp($0.baseAddress! + row * vocab, vocab) }
    }
}
