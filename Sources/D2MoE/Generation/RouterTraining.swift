import Foundation
import D2MoEFormats
import D2MoEKernels

/// Settings of `d2moe train-router` (DESIGN §3.1, the per-layer objective).
public struct RouterTrainingOptions: Sendable {
    /// Weight of the bit cost: loss = Σ_k p_k (NMSE_k + α·b_k).
    public var alpha = 0.02
    /// Training-only capacity shares c_k per level (Σ = 1), nil for none: in each batch level k
    /// takes at most ⌈c_k·T⌉ of the T rows whose argmax it is; the rest, picked at random, are
    /// dropped there as MoE capacity drops tokens: the expert's output is lost for them, so their
    /// cost at that level is the row's output energy instead of its quantization error. The
    /// router learns to keep a level's demand near its capacity.
    public var capacity: [Double]?
    /// Calibration tokens run through the model, in windows of `window`.
    public var tokens = 8192
    public var window = 512
    /// Most rows kept per router (memory bound: rows × hidden floats each); the rest subsampled.
    public var rowsPerRouter = 4096
    public var epochs = 8
    public var batch = 256
    public var learningRate: Float = 0.01
    public var seed: UInt64 = 1
    /// Share of each router's rows held out for the reported held-out loss and for the
    /// calibration logits `--target-bits` is solved on.
    public var heldOut = 0.1
    /// Scale errors by the mean output energy of all routers rather than each router's own
    /// (`--error-scale global`): the cost is then the absolute error added to the residual stream.
    public var globalErrorScale = false
    /// Weight each layer's errors by its measured effect on the output (`--sensitivity`).
    public var sensitivity = false
    /// The per-row cost the routers minimise (`--objective`).
    public var objective = RouterObjective.nmse
    public init() {}
}

/// One router's training data: kept input rows and each row's error at every level.
public struct RouterSamples: Sendable {
    public let layer: Int
    public let expert: Int
    public let hidden: Int
    public let levels: Int
    /// [rows × hidden]: what entered the expert (the normed MoE-layer input).
    public var inputs: [Float] = []
    /// [rows × levels]: ‖E_k(x) − E_K(x)‖² / mean‖E_K(x)‖², the expert's output error at level k
    /// against the highest level, relative to that level's mean output energy.
    public var errors: [Float] = []
    /// [rows]: ‖E_K(x)‖² / mean‖E_K(x)‖², what is lost if the expert's output is dropped for the
    /// row (the cost of a row over capacity).
    public var energy: [Float] = []
    /// [rows]: each row's token index in the calibration stream, or −1 where it is not known
    /// (rows routed to one expert of a sparse block); `--objective kl` matches rows to tokens.
    public var positions: [Int32] = []
    /// [rows]: each row's gate weight in its token's output (1 for a dense block).
    public var gateWeights: [Float] = []
    /// Rows the router saw during collection (kept or not).
    public var seen = 0
    public var rows: Int { errors.count / max(levels, 1) }

    public init(layer: Int, expert: Int, hidden: Int, levels: Int, inputs: [Float] = [], errors: [Float] = [], energy: [Float] = [],
                positions: [Int32]? = nil, seen: Int = 0) {
        self.layer = layer; self.expert = expert; self.hidden = hidden; self.levels = levels
        self.inputs = inputs; self.errors = errors; self.energy = energy; self.seen = seen
        self.positions = positions ?? Array(repeating: -1, count: energy.count)
        self.gateWeights = Array(repeating: 1, count: energy.count)
    }
}

/// What one training epoch did over all routers.
public struct RouterEpoch: Sendable, Codable {
    public var epoch: Int
    public var rowsPerSecond: Double
    /// Mean Σ_k p_k (NMSE_k + α b_k) over the rows used, and its error part.
    public var loss: Double
    public var error: Double
    /// Rows dropped by the capacity limits.
    public var dropped: Int
    /// Share of rows whose argmax is each level (all routers, training rows).
    public var distribution: [Double]
    public var averageBits: Double
}

/// The per-layer trainer: no backpropagation through other layers.
public enum RouterTraining {
    /// Runs `model` (loaded at the file's highest level, uniform) over `tokens` and keeps, for
    /// every (layer, expert), a seeded random subset of its input rows with the error of each
    /// level's output against the highest level's.
    public static func collect(model: TransformerModel, tokens: [Int32], levels: Int, options: RouterTrainingOptions,
                               progress: (String) -> Void = { _ in }) throws -> [RouterSamples] {
        let window = min(options.window, tokens.count)
        let windows = min(tokens.count / max(window, 1), max(1, options.tokens / max(window, 1)))
        guard windows >= 1 else { throw ModelError("calibration text has \(tokens.count) tokens, fewer than one window") }
        let experts = max(model.info.expertCount, 1)
        let perToken = model.info.expertCount > 0 ? Double(model.info.expertsPerToken) / Double(experts) : 1
        let keep = min(1, Double(options.rowsPerRouter) / (Double(windows * window) * perToken))
        let observer = Collector(model: model, levels: levels, keep: keep, cap: options.rowsPerRouter, seed: options.seed)
        model.observer = observer
        defer { model.observer = nil }
        let cache = model.makeCache(capacity: window)
        var logits = [Float](repeating: 0, count: model.info.vocabularySize)
        let start = Date()
        for w in 0..<windows {
            cache.clear()
            observer.windowStart = w * window
            let batch = (0..<window).map { BatchToken(sequence: 0, position: $0, token: tokens[w * window + $0], wantsLogits: $0 == window - 1) }
            try logits.withUnsafeMutableBufferPointer { try model.forward(batch, caches: [cache], logits: $0.baseAddress!) }
            if let e = observer.failure { throw e }
            let s = Date().timeIntervalSince(start)
            progress(String(format: "collect window %d/%d: %.0f tokens/s", w + 1, windows, Double((w + 1) * window) / s))
        }
        var out = observer.samples.values.sorted { ($0.layer, $0.expert) < ($1.layer, $1.expert) }
        // Errors relative to each router's own mean output energy at the highest level, or
        // (globalErrorScale) to the mean over all routers, so layers with large outputs weigh more.
        let allRows = out.reduce(0) { $0 + $1.rows }
        let global = observer.energy.values.reduce(0, +) / Double(max(allRows, 1))
        for i in out.indices {
            let n = out[i].rows
            guard n > 0 else { continue }
            let energy = options.globalErrorScale ? global : observer.energy[Collector.key(out[i].layer, out[i].expert)]! / Double(n)
            let scale = Float(1 / max(energy, 1e-30))
            for j in out[i].errors.indices { out[i].errors[j] *= scale }
            for j in out[i].energy.indices { out[i].energy[j] *= scale }
        }
        return out.filter { $0.rows > 0 }
    }

    final class Collector: FeedForwardObserver {
        let model: TransformerModel
        let levels: Int
        let keep: Double
        let cap: Int
        let seed: UInt64
        var samples: [Int: RouterSamples] = [:]
        var energy: [Int: Double] = [:]
        var versions: [Int: [FeedForward]] = [:]
        var failure: Error?
        var windowStart = 0

        static func key(_ layer: Int, _ expert: Int) -> Int { layer * 1_000_000 + expert }

        init(model: TransformerModel, levels: Int, keep: Double, cap: Int, seed: UInt64) {
            self.model = model; self.levels = levels; self.keep = keep; self.cap = cap
            self.seed = seed
        }

        func observe(layer: Int, input: UnsafePointer<Float>, activations: UnsafePointer<Float>, tokens: Int, hidden: Int, intermediate: Int) {
            add(layer: layer, expert: 0, input: input, tokens: tokens, hidden: hidden, batchRows: Array(0..<tokens),
                weights: Array(repeating: 1, count: tokens))
        }

        func observeExpert(layer: Int, expert: Int, input: UnsafePointer<Float>, activations: UnsafePointer<Float>,
                           tokens: Int, hidden: Int, intermediate: Int, rows: [Int], weights: [Float]) {
            add(layer: layer, expert: expert, input: input, tokens: tokens, hidden: hidden, batchRows: rows, weights: weights)
        }

        /// Whether token `position` of the stream is kept in `layer`: one seeded draw per (layer,
        /// token), so a kept token keeps the rows of all its experts (`--objective kl` shares the
        /// token's cost among them).
        private func keeps(layer: Int, position: Int) -> Bool {
            var r = RouterRNG(seed: seed &+ UInt64(layer) &* 0x1_0000_0001 &+ UInt64(position) &* 0x9E37_79B9)
            return r.nextDouble() < keep
        }

        /// `batchRows[i]`: the window's token of input row i; `weights[i]`: its gate weight.
        private func add(layer: Int, expert: Int, input: UnsafePointer<Float>, tokens: Int, hidden: Int, batchRows: [Int], weights: [Float]) {
            let k = Self.key(layer, expert)
            var s = samples[k] ?? RouterSamples(layer: layer, expert: expert, hidden: hidden, levels: levels)
            s.seen += tokens
            var rows: [Int] = []
            for t in 0..<tokens where s.rows + rows.count < cap && keeps(layer: layer, position: windowStart + batchRows[t]) { rows.append(t) }
            defer { samples[k] = s }
            guard !rows.isEmpty else { return }
            if versions[k] == nil {
                guard let f = model.loadedFFN(layer: layer, expert: expert) else { failure = ModelError("no FFN for layer \(layer) expert \(expert)"); return }
                do { versions[k] = try f.levelCopies(levels) } catch { failure = error; return }
            }
            let fs = versions[k]!, n = rows.count, inter = fs[0].intermediate
            var x = [Float](repeating: 0, count: n * hidden)
            for (i, t) in rows.enumerated() { for j in 0..<hidden { x[i * hidden + j] = input[t * hidden + j] } }
            var ys = [[Float]](repeating: [Float](repeating: 0, count: n * hidden), count: levels)
            var gate = [Float](repeating: 0, count: n * inter), up = gate
            for l in 0..<levels {
                x.withUnsafeBufferPointer { xp in
                    ys[l].withUnsafeMutableBufferPointer { fs[l](xp.baseAddress!, tokens: n, $0.baseAddress!, gateBuffer: &gate, upBuffer: &up) }
                }
            }
            let top = ys[levels - 1]
            var e = 0.0
            for i in 0..<n {
                for l in 0..<levels {
                    var d: Float = 0
                    for j in 0..<hidden { let v = ys[l][i * hidden + j] - top[i * hidden + j]; d += v * v }
                    s.errors.append(d)
                }
                var row: Float = 0
                for j in 0..<hidden { row += top[i * hidden + j] * top[i * hidden + j] }
                s.energy.append(row)
                e += Double(row)
            }
            energy[k, default: 0] += e
            s.inputs += x
            s.positions += rows.map { Int32(windowStart + batchRows[$0]) }
            s.gateWeights += rows.map { weights[$0] }
        }
    }

    /// Fits every router, epochs outermost so each epoch reports over all of them; `report` gets
    /// one line per epoch. Deterministic given `options.seed`.
    public static func fit(_ samples: [RouterSamples], bits: [Int], options: RouterTrainingOptions,
                           report: (RouterEpoch) -> Void = { _ in }) throws -> (routers: [MWQRouter], epochs: [RouterEpoch], heldOut: RouterEpoch) {
        guard let first = samples.first else { throw ModelError("no router has training rows") }
        let levels = first.levels, hidden = first.hidden
        guard bits.count == levels else { throw ModelError("\(bits.count) bit-widths for routers of \(levels) levels") }
        if let c = options.capacity {
            guard c.count == levels, c.allSatisfy({ $0 > 0 }), abs(c.reduce(0, +) - 1) < 1e-6 else {
                throw ModelError("--capacity needs \(levels) positive shares summing to 1, got \(c)")
            }
        }
        var rng = RouterRNG(seed: options.seed ^ 0x5EED)
        var states = samples.map { RouterState(samples: $0, heldOut: options.heldOut, rng: &rng) }
        let cost: (RouterSamples, Int, Int) -> Float = { s, row, k in s.errors[row * levels + k] + Float(options.alpha) * Float(bits[k]) }
        var epochs: [RouterEpoch] = []
        for epoch in 1...max(options.epochs, 1) {
            let start = Date()
            var total = EpochTotals(levels: levels)
            for i in states.indices { states[i].epoch(options: options, levels: levels, hidden: hidden, cost: cost, rng: &rng, totals: &total) }
            let e = total.result(epoch: epoch, bits: bits, seconds: Date().timeIntervalSince(start))
            epochs.append(e)
            report(e)
        }
        var held = EpochTotals(levels: levels)
        for s in states { s.evaluate(rows: s.validation, levels: levels, hidden: hidden, cost: cost, totals: &held) }
        let heldOut = held.result(epoch: 0, bits: bits, seconds: 0)
        return (states.map { $0.folded(levels: levels, hidden: hidden) }, epochs, heldOut)
    }
}

/// Sums over one pass for `RouterEpoch`.
struct EpochTotals {
    var rows = 0, dropped = 0
    var loss = 0.0, error = 0.0
    var counts: [Int]
    init(levels: Int) { counts = Array(repeating: 0, count: levels) }

    func result(epoch: Int, bits: [Int], seconds: Double) -> RouterEpoch {
        let n = max(counts.reduce(0, +), 1)
        let distribution = counts.map { Double($0) / Double(n) }
        return RouterEpoch(epoch: epoch, rowsPerSecond: seconds > 0 ? Double(rows) / seconds : 0,
                           loss: loss / Double(max(rows, 1)), error: error / Double(max(rows, 1)), dropped: dropped,
                           distribution: distribution, averageBits: zip(distribution, bits).reduce(0) { $0 + $1.0 * Double($1.1) })
    }
}

/// A 64-bit SplitMix generator: seeded, so training repeats exactly.
public struct RouterRNG: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func nextDouble() -> Double { Double(next() >> 11) / Double(1 << 53) }
}

/// What `RouterTraining.train` did.
public struct RouterTrainingSummary: Sendable, Codable {
    public var routers: Int
    public var calibrationTokens: Int
    public var rows: Int
    public var epochs: [RouterEpoch]
    /// The held-out rows at the end (no capacity limits, as served).
    public var heldOut: RouterEpoch
    public var collectSeconds: Double
    public var fitSeconds: Double
}

extension RouterTraining {
    /// `routers` plus one for every (layer, expert) record without one (no calibration token
    /// reached it): zero weights and the log-share of each level among its layer's routers'
    /// held-out choices as biases, so it follows the layer's prior and the knob still moves it.
    static func withFallbacks(_ routers: [MWQRouter], records: [(Int, Int)], hidden: Int, levels: Int) -> [MWQRouter] {
        var have = Set(routers.map { $0.layer * 1_000_000 + $0.expert })
        var out = routers
        for (layer, expert) in records where !have.contains(layer * 1_000_000 + expert) {
            var counts = [Double](repeating: 1, count: levels)  // add-one: no level impossible
            for r in routers where r.layer == layer {
                for row in 0..<(r.calibrationLogits.count / levels) {
                    var best = 0
                    for k in 1..<levels where r.calibrationLogits[row * levels + k] > r.calibrationLogits[row * levels + best] { best = k }
                    counts[best] += 1
                }
            }
            let n = counts.reduce(0, +)
            out.append(MWQRouter(layer: layer, expert: expert, weight: Array(repeating: 0, count: levels * hidden),
                                 bias: counts.map { Float(Foundation.log($0 / n)) }, calibrationWeight: 0))
            have.insert(layer * 1_000_000 + expert)
        }
        return out.sorted { ($0.layer, $0.expert) < ($1.layer, $1.expert) }
    }

    /// `d2moe train-router`: loads the `.mwq` file at its highest level, runs `text` through it,
    /// fits a router per (layer, expert) and writes them into the file (atomically).
    public static func train(model path: String, text: String, corpus: String, options: RouterTrainingOptions,
                             progress: (String) -> Void = { _ in }) throws -> RouterTrainingSummary {
        let file = try MWQFile(path: path)
        let bits = file.header.quantization.bits
        guard file.header.quantization.isNested else {
            throw ModelError("\(path): the routers choose among nested levels, and this file holds separate copies")
        }
        guard bits.count >= 2 else { throw ModelError("\(path): one level (\(bits) bits) leaves nothing to choose") }
        let engine = try Engine.load(path: path, options: LoadOptions(contextLength: options.window))
        let ids = engine.tokenizer.encode(text, addSpecial: false, parseSpecial: false)
        guard !(options.sensitivity && options.objective == .kl) else {
            throw ModelError("--sensitivity weights the NMSE objective by layer; --objective kl measures each token's effect instead: use one")
        }
        let start = Date()
        var samples = try collect(model: engine.model, tokens: ids, levels: bits.count, options: options, progress: progress)
        if options.objective == .kl {
            let window = min(options.window, ids.count)
            let windows = min(ids.count / window, max(1, options.tokens / window))
            let kl = try klCosts(model: engine.model, tokens: ids, window: window, windows: windows, samples: &samples, bits: bits, progress: progress)
            progress("mean KL per layer at the lowest level: " + kl.keys.sorted().map { String(format: "%d:%.4f", $0, kl[$0]![0]) }.joined(separator: " "))
        }
        if options.sensitivity {
            let w = try sensitivity(model: engine.model, tokens: ids, window: options.window, samples: samples, bits: bits, progress: progress)
            progress("layer weights: " + w.keys.sorted().map { String(format: "%d:%.2f", $0, w[$0]!) }.joined(separator: " "))
            for i in samples.indices {
                let f = w[samples[i].layer] ?? 1
                for j in samples[i].errors.indices { samples[i].errors[j] *= f }
                for j in samples[i].energy.indices { samples[i].energy[j] *= f }
            }
        }
        let collected = Date()
        let rows = samples.reduce(0) { $0 + $1.rows }
        progress("collected \(rows) rows for \(samples.count) routers in \(String(format: "%.1f", collected.timeIntervalSince(start))) s")
        let fitted = try fit(samples, bits: bits, options: options) { e in
            progress(String(format: "epoch %d: %.0f rows/s, loss %.5f (error %.5f), dropped %d, bits %@, average %.3f",
                            e.epoch, e.rowsPerSecond, e.loss, e.error, e.dropped,
                            zip(bits, e.distribution).map { String(format: "%d:%.1f%%", $0, $1 * 100) }.joined(separator: " "), e.averageBits))
        }
        let routers = withFallbacks(fitted.routers, records: file.header.experts.map { ($0.layer, $0.expert) },
                                    hidden: engine.model.info.hiddenSize, levels: bits.count)
        if routers.count > fitted.routers.count {
            progress("\(routers.count - fitted.routers.count) experts saw no calibration token: their routers choose their layer's most common level")
        }
        let tokensRun = min(ids.count / options.window, max(1, options.tokens / options.window)) * options.window
        var info: [String: JSONValue] = [
            "objective": .string(options.objective == .kl
                ? "kl: sum_k p_k (KL of the output with this layer alone at level k, at the row's position + alpha * bits_k)"
                : "per-layer: sum_k p_k (NMSE_k vs highest level + alpha * bits_k)"),
            "corpus": .string(corpus), "tokens": .int(tokensRun), "alpha": .double(options.alpha), "epochs": .int(options.epochs),
            "seed": .int(Int(truncatingIfNeeded: options.seed)), "rows_per_router": .int(options.rowsPerRouter),
            "error_scale": .string(options.globalErrorScale ? "global" : "layer"), "sensitivity": .bool(options.sensitivity),
        ]
        if let c = options.capacity { info["capacity"] = .array(c.map { .double($0) }) }
        let set = MWQRouterSet(hidden: engine.model.info.hiddenSize, levels: bits.count, routers: routers, training: .object(info))
        do { try MWQFile.writeRouters(set, into: path) } catch let e as FormatError { throw ModelError(e.description) }
        return RouterTrainingSummary(routers: routers.count, calibrationTokens: tokensRun, rows: rows, epochs: fitted.epochs,
                                     heldOut: fitted.heldOut, collectSeconds: collected.timeIntervalSince(start),
                                     fitSeconds: Date().timeIntervalSince(collected))
    }
}
