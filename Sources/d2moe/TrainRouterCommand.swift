import ArgumentParser
import D2MoE
import Foundation

struct TrainRouter: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train-router",
        abstract: "Fit the bit-width routers of an .mwq file on calibration text (DESIGN §3.1) and store them in the file.",
        discussion: """
            The model runs at its highest level; every (layer, expert) keeps a random subset of its input rows and \
            the error of its output at each level against the highest. Each router (a linear layer over the normed \
            hidden state, softmax over the file's levels) minimises Σ_k p_k (cost_k + α·bits_k) with Adam, where \
            cost_k is the measured KL divergence of the model's output with the row's layer alone at level k \
            (--objective kl) or the expert's relative output error (nmse); --capacity limits each level to a share \
            of every batch during training only. The file is rewritten under a temporary name and renamed into place.
            """)

    @Option(name: .long, help: "The .mwq file (its routers are replaced).")
    var model: String

    @Option(name: .long, help: "Calibration text (UTF-8), e.g. data/calib/c4.utf8.")
    var calib: String

    @Option(name: .long, help: "Weight of the bit cost (per bit, against the output's relative squared error).")
    var alpha: Double = 0.02

    @Option(name: .long, help: "Training-only capacity shares per level, summing to 1 (e.g. 0.3,0.4,0.3); 'none' for no limits.")
    var capacity: String = "none"

    @Option(name: .long, help: "Calibration tokens to run (whole windows of --window; default 4096 with --objective kl, 8192 with nmse).")
    var tokens: Int?

    @Option(name: .long, help: "Tokens per calibration window.")
    var window: Int = 512

    @Option(name: .long, help: "Most training rows kept per router (the rest subsampled; each costs hidden × 4 bytes).")
    var rows: Int = 4096

    @Option(name: .long, help: "Passes over the rows.")
    var epochs: Int = 8

    @Option(name: .long, help: "Adam learning rate.")
    var lr: Float = 0.01

    @Option(name: .long, help: "Random seed (row sampling, order, capacity drops).")
    var seed: UInt64 = 1

    @Option(name: .long, help: "Errors relative to each router's mean output energy (layer) or to the mean over all routers (global: absolute error in the residual stream).")
    var errorScale: String = "layer"

    @Flag(name: .long, help: "Weight each layer's errors by its effect on the output: the KL divergence of the model's next-token distribution with that layer alone at the lowest level (one calibration window), per unit of its NMSE.")
    var sensitivity = false

    @Option(name: .long, help: "The cost per row and level: kl (the default: the model's output KL divergence at the row's token with that layer alone at that level, measured by a pass per layer and lower level per window, shared among a token's experts) or nmse (the expert's relative output error against the highest level; much faster, and measured worse).")
    var objective: String = "kl"

    @Flag(name: .long, help: "Print the summary as one JSON object.")
    var json = false

    func run() throws {
        do {
            var o = RouterTrainingOptions()
            let tokens = self.tokens ?? (objective == "kl" ? 4096 : 8192)
            guard alpha >= 0, tokens >= 1, window >= 2, rows >= 2, epochs >= 1, lr > 0 else {
                throw ValidationError("--alpha ≥ 0, --tokens ≥ 1, --window ≥ 2, --rows ≥ 2, --epochs ≥ 1 and --lr > 0")
            }
            o.alpha = alpha; o.tokens = tokens; o.window = window; o.rowsPerRouter = rows; o.epochs = epochs
            o.learningRate = lr; o.seed = seed
            guard ["layer", "global"].contains(errorScale) else { throw ValidationError("--error-scale must be layer or global, got '\(errorScale)'") }
            o.globalErrorScale = errorScale == "global"
            o.sensitivity = sensitivity
            guard let obj = RouterObjective(rawValue: objective) else { throw ValidationError("--objective must be nmse or kl, got '\(objective)'") }
            o.objective = obj
            if capacity != "none" {
                let c = capacity.split(separator: ",").map { Double($0.trimmingCharacters(in: .whitespaces)) }
                guard c.allSatisfy({ $0 != nil }) else { throw ValidationError("--capacity must be numbers separated by commas, got '\(capacity)'") }
                o.capacity = c.map { $0! }
            }
            guard let text = try? String(contentsOfFile: calib, encoding: .utf8) else { throw ValidationError("cannot read calibration text '\(calib)'") }
            let summary = try RouterTraining.train(model: model, text: text, corpus: calib, options: o) { line in
                FileHandle.standardError.write(Data((line + "\n").utf8))
            }
            if json { printJSON(summary) } else {
                let h = summary.heldOut
                print(String(format: "wrote %d routers into %@ (%d calibration tokens, %d rows; collect %.1f s, fit %.1f s); held-out loss %.5f (error %.5f), average %.3f bits",
                             summary.routers, model, summary.calibrationTokens, summary.rows, summary.collectSeconds, summary.fitSeconds,
                             h.loss, h.error, h.averageBits))
            }
        } catch let e as ValidationError {
            fail(e.message)
        } catch {
            fail(String(describing: error))
        }
    }
}
