import Foundation
import D2MoEFormats
import D2MoEKernels

/// One router being fitted: a linear layer over standardised inputs (so one learning rate suits
/// every layer, whatever its activation scale), Adam, and the capacity limits of training.
struct RouterState {
    let samples: RouterSamples
    var train: [Int]
    let validation: [Int]
    /// Per input feature, from the training rows; folded into the weights at the end.
    var mean: [Float]
    var invStd: [Float]
    var w: [Float], b: [Float]
    private var mw: [Float], vw: [Float], mb: [Float], vb: [Float]
    private var step = 0

    init(samples: RouterSamples, heldOut: Double, rng: inout RouterRNG) {
        self.samples = samples
        var order = Array(0..<samples.rows)
        order.shuffle(using: &rng)
        // Hold out at least one row when there are two or more, never all of them.
        let held = samples.rows < 2 ? 0 : min(samples.rows - 1, max(1, Int(Double(samples.rows) * heldOut)))
        validation = Array(order.prefix(held))
        train = Array(order.dropFirst(held))
        let h = samples.hidden, k = samples.levels
        var mean = [Double](repeating: 0, count: h), square = [Double](repeating: 0, count: h)
        for r in train {
            for j in 0..<h { let v = Double(samples.inputs[r * h + j]); mean[j] += v; square[j] += v * v }
        }
        let n = Double(max(train.count, 1))
        let std = (0..<h).map { j in (max(square[j] / n - (mean[j] / n) * (mean[j] / n), 0)).squareRoot() }
        let floor = max(std.reduce(0, +) / Double(h) * 1e-3, 1e-8)
        self.mean = mean.map { Float($0 / n) }
        invStd = std.map { Float(1 / max($0, floor)) }
        // Zero weights: every level equally likely at the start, the same for every seed.
        w = Array(repeating: 0, count: k * h); b = Array(repeating: 0, count: k)
        mw = w; vw = w; mb = b; vb = b
    }

    /// Standardised row r into `x`.
    func standardised(_ r: Int, into x: UnsafeMutablePointer<Float>) {
        let h = samples.hidden
        samples.inputs.withUnsafeBufferPointer { s in
            for j in 0..<h { x[j] = (s[r * h + j] - mean[j]) * invStd[j] }
        }
    }

    /// Softmax of the logits of standardised x into p; returns the argmax.
    func probabilities(_ x: UnsafePointer<Float>, _ p: inout [Float]) -> Int {
        let k = samples.levels, h = samples.hidden
        w.withUnsafeBufferPointer { wp in for l in 0..<k { p[l] = Kernels.dot(wp.baseAddress! + l * h, x, n: h) + b[l] } }
        var best = 0
        for l in 1..<k where p[l] > p[best] { best = l }
        let m = p[best]
        var sum: Float = 0
        for l in 0..<k { p[l] = Foundation.exp(p[l] - m); sum += p[l] }
        for l in 0..<k { p[l] /= sum }
        return best
    }

    /// One pass over the training rows in seeded random batches.
    mutating func epoch(options: RouterTrainingOptions, levels k: Int, hidden h: Int, cost: (RouterSamples, Int, Int) -> Float,
                        rng: inout RouterRNG, totals: inout EpochTotals) {
        train.shuffle(using: &rng)
        var x = [Float](repeating: 0, count: options.batch * h)
        var probs = [[Float]](repeating: [Float](repeating: 0, count: k), count: options.batch)
        var argmax = [Int](repeating: 0, count: options.batch)
        var gw = [Float](repeating: 0, count: k * h), gb = [Float](repeating: 0, count: k)
        var at = 0
        while at < train.count {
            let rows = Array(train[at..<min(at + options.batch, train.count)])
            at += rows.count
            x.withUnsafeMutableBufferPointer { xp in
                for (i, r) in rows.enumerated() {
                    standardised(r, into: xp.baseAddress! + i * h)
                    argmax[i] = probabilities(xp.baseAddress! + i * h, &probs[i])
                    totals.counts[argmax[i]] += 1
                }
            }
            // Capacity (training only): level l takes at most ⌈c_l·T⌉ of the rows choosing it; the
            // others are dropped there (their cost at l becomes their output energy).
            var keep = [Bool](repeating: true, count: rows.count)
            if let c = options.capacity {
                for l in 0..<k {
                    var choosing = rows.indices.filter { argmax[$0] == l }
                    let limit = Int((c[l] * Double(rows.count)).rounded(.up))
                    guard choosing.count > limit else { continue }
                    choosing.shuffle(using: &rng)
                    for i in choosing[limit...] { keep[i] = false }
                }
            }
            totals.dropped += keep.filter { !$0 }.count
            let n = Float(rows.count)
            for i in gw.indices { gw[i] = 0 }
            for i in gb.indices { gb[i] = 0 }
            x.withUnsafeBufferPointer { xp in
                gw.withUnsafeMutableBufferPointer { g in
                    var c = [Float](repeating: 0, count: k)
                    for (i, r) in rows.enumerated() {
                        let p = probs[i]
                        var mean: Float = 0, err: Float = 0
                        for l in 0..<k {
                            c[l] = cost(samples, r, l)
                            if !keep[i], l == argmax[i] { c[l] = samples.energy[r] }
                            mean += p[l] * c[l]; err += p[l] * samples.errors[r * k + l]
                        }
                        totals.loss += Double(mean); totals.error += Double(err); totals.rows += 1
                        // d/dz_l Σ p c = p_l (c_l − Σ p c).
                        for l in 0..<k {
                            let d = p[l] * (c[l] - mean) / n
                            gb[l] += d
                            Kernels.axpy(d, xp.baseAddress! + i * h, g.baseAddress! + l * h, n: h)
                        }
                    }
                }
            }
            adam(gw, gb, lr: options.learningRate)
        }
    }

    private mutating func adam(_ gw: [Float], _ gb: [Float], lr: Float) {
        step += 1
        let b1: Float = 0.9, b2: Float = 0.999, eps: Float = 1e-8
        let c1 = 1 - Foundation.pow(b1, Float(step)), c2 = 1 - Foundation.pow(b2, Float(step))
        func update(_ p: inout [Float], _ m: inout [Float], _ v: inout [Float], _ g: [Float]) {
            for i in p.indices {
                m[i] = b1 * m[i] + (1 - b1) * g[i]
                v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i]
                p[i] -= lr * (m[i] / c1) / ((v[i] / c2).squareRoot() + eps)
            }
        }
        update(&w, &mw, &vw, gw)
        update(&b, &mb, &vb, gb)
    }

    /// The loss and argmax distribution on `rows`, without capacity limits (as served).
    func evaluate(rows: [Int], levels k: Int, hidden h: Int, cost: (RouterSamples, Int, Int) -> Float, totals: inout EpochTotals) {
        var x = [Float](repeating: 0, count: h), p = [Float](repeating: 0, count: k)
        for r in rows {
            let a = x.withUnsafeMutableBufferPointer { xp in
                standardised(r, into: xp.baseAddress!)
                return probabilities(xp.baseAddress!, &p)
            }
            totals.counts[a] += 1
            for l in 0..<k { totals.loss += Double(p[l] * cost(samples, r, l)); totals.error += Double(p[l] * samples.errors[r * k + l]) }
            totals.rows += 1
        }
    }

    /// The router on raw inputs (standardisation folded in), with its logits on the held-out rows.
    func folded(levels k: Int, hidden h: Int) -> MWQRouter {
        var weight = [Float](repeating: 0, count: k * h), bias = b
        for l in 0..<k {
            for j in 0..<h {
                weight[l * h + j] = w[l * h + j] * invStd[j]
                bias[l] -= weight[l * h + j] * mean[j]
            }
        }
        var logits: [Float] = []
        samples.inputs.withUnsafeBufferPointer { s in
            weight.withUnsafeBufferPointer { wp in
                for r in validation {
                    for l in 0..<k { logits.append(Kernels.dot(wp.baseAddress! + l * h, s.baseAddress! + r * h, n: h) + bias[l]) }
                }
            }
        }
        return MWQRouter(layer: samples.layer, expert: samples.expert, weight: weight, bias: bias, calibrationLogits: logits,
                         calibrationWeight: Double(samples.seen) / Double(max(validation.count, 1)))
    }
}
