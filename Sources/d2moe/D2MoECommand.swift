import ArgumentParser
import D2MoE
import Foundation

@main
struct D2MoECommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "d2moe",
        abstract: "Run Mixture-of-Experts language models on devices with less memory than the model.",
        subcommands: [Run.self, Inspect.self, Eval.self, Bench.self, Moefy.self, CalibrateBits.self, TrainRouter.self, Quantize.self, Serve.self, Synth.self, Tokenize.self])
}

/// Options every command that loads a model shares.
struct ModelOptions: ParsableArguments {
    @Option(name: .long, help: "A GGUF file, a Hugging Face folder (config.json, *.safetensors) or an .mwq file.")
    var model: String

    @Option(name: .long, help: "Element type of dense weights in memory: f32, f16, bf16 or q8 (ggml's Q8_0, 8.5 bits).")
    var dtype: String = "f32"

    @Option(name: .customLong("ctx"), help: "Context length (default: the model's, at most 4096).")
    var contextLength: Int?

    @Option(name: .long, help: "Experts chosen per token in MoE layers (default: the model's).")
    var expertsPerToken: Int?

    @Option(name: .long, help: "For .mwq files: serve every expert at N bits (one of the file's levels; default the highest).")
    var bits: Int?

    @Flag(name: .long, help: "For .mwq files: dequantize experts to --dtype at load instead of computing on the packed bit-planes.")
    var dequantize = false

    @Option(name: .long, help: "For .mwq files with routed experts: stream them through a pool of at most this many bytes (512MiB, 2GiB, 1.5GB, or 25% of the experts' bytes); everything else stays resident.")
    var memoryBudget: String?

    @Option(name: .long, help: "With --memory-budget: O_DIRECT reads that bypass the page cache (on|off; falls back to buffered reads where the file system refuses).")
    var directIO: String = "on"

    @Option(name: .long, help: "With --memory-budget: reads in flight at once.")
    var ioThreads: Int = 4

    @Option(name: .long, help: "With --memory-budget: which resident piece to drop for room: layer (the paper's rule: the layer just computed first, high levels before low), reuse (the piece whose next use is expected farthest away: the paper's rule weighted by how often each piece's layer steps need it), lru, lfu, score, hobbit.")
    var eviction: String = "layer"

    @Option(name: .long, help: "For .mwq files: the level of each (token, expert): uniform (every expert at --bits), router (the trained bit-width routers of d2moe train-router; see --bits-bias, --target-bits), gate (HOBBIT's rule: by the expert's share of the token's gate scores, see --gate-thresholds) or, with --memory-budget, static (one bit-width per expert from --expert-bits). A dense model's FFNs count as one expert per layer.")
    var bitPolicy: String = "uniform"

    @Option(name: .long, help: "With --bit-policy router: added to each router's logit of level k times (k − mean level): negative toward fewer bits, positive toward more.")
    var bitsBias: Double = 0

    @Option(name: .long, help: "With --bit-policy router: the --bits-bias whose average bits per expert-token on the routers' calibration inputs is this (solved by bisection).")
    var targetBits: Double?

    @Option(name: .long, help: "With --target-bits: the levels the routers choose from: adjacent (the default: only the two levels whose bits bracket the target, so no token drops below the lower one) or all.")
    var routerLevels: String?

    @Option(name: .long, help: "With --bit-policy static or --policy edgemoe: the per-expert bit-widths (JSON written by d2moe calibrate-bits).")
    var expertBits: String?

    @Option(name: .long, help: "With --bit-policy gate: cumulative gate-score shares T1,T2 below which an expert runs at the highest level and one level lower; the rest at the lowest.")
    var gateThresholds: String = "0.6,0.9"

    @Option(name: .long, help: "With --memory-budget: the order missing pieces are read in: hebf (hottest expert's next level first) or id (expert id order, all levels of an expert together).")
    var loadOrder: String = "hebf"

    @Option(name: .long, help: ArgumentHelp("A configuration of DESIGN §3.6 (its settings replace --load-order, --eviction and --prefetch): " + ExpertStreaming.policies.map { "\($0.0): \($0.1)" }.joined(separator: "; ") + "."))
    var policy: String?

    @Flag(name: .long, help: "With --memory-budget: read the next MoE layer's likely experts (its router applied to the current hidden state) while this layer computes; they stay protected until used.")
    var prefetch = false

    @Option(name: .long, help: "With prefetching: withhold a layer's prefetch while its prediction has been right less often than this share of the chosen experts (averaged over recent steps; scored even when withheld); 0 always prefetches.")
    var prefetchMinAccuracy: Double = 0.5

    @Option(name: .long, help: "With --policy smoe: chosen experts scoring below (1+α)·S (S: the (k+1)-th highest gate score) may be substituted when missing; 0 substitutes nothing.")
    var alpha: Double = 0.2

    @Option(name: .long, help: "With --policy smoe: a substitute's weight: own (its gate score as the model weights chosen experts), inherit (the replaced expert's), scaled (the replaced one's × the score ratio).")
    var substituteWeight: String = "own"

    @Option(name: .long, help: "With --policy smoe and --memory-budget: choose α (of 0, 0.1, …, 0.5) as the smallest whose fitted decode latency meets this many milliseconds per token.")
    var latencyTarget: Double?

    @Option(name: .long, help: "With --policy hobbit: a miss whose token's more important experts hold at most this share of its gate weight reads the full level.")
    var t1: Double = 0.6

    @Option(name: .long, help: "With --policy hobbit: at most this share, a low level (--hobbit-low-level); above it the miss is skipped.")
    var t2: Double = 0.9

    @Option(name: .long, help: "With --policy hobbit: the level (1 = the base) a mid-importance miss reads.")
    var hobbitLowLevel: Int = 1

    @Option(name: .long, help: "With --eviction score (--policy smoe): decode steps of gate scores averaged per expert.")
    var scoreWindow: Int = 8

    func load() throws -> Engine { try load(adjust: { _ in }) }

    /// Loads with the expert streaming options changed by `adjust` after the flags and the
    /// --policy preset are applied (the bench's ablation steps).
    func load(adjust: (inout ExpertStreaming) -> Void) throws -> Engine {
        guard let type = ElementType(rawValue: dtype == "q8" ? "q8_0" : dtype) else {
            throw ValidationError("--dtype must be f32, f16, bf16 or q8, got '\(dtype)'")
        }
        if let contextLength, contextLength < 1 { throw ValidationError("--ctx must be ≥ 1") }
        var options = LoadOptions(dtype: type, contextLength: contextLength, expertsPerToken: expertsPerToken, bits: bits)
        options.dequantizeMWQ = dequantize
        options.bitsBias = bitsBias
        options.targetBits = targetBits
        if let routerLevels {
            guard ["all", "adjacent"].contains(routerLevels) else { throw ValidationError("--router-levels must be adjacent or all, got '\(routerLevels)'") }
            guard targetBits != nil else { throw ValidationError("--router-levels needs --target-bits (--bits-bias shifts all levels)") }
        }
        options.adjacentRouterLevels = targetBits != nil && routerLevels != "all"
        if memoryBudget == nil, policy == nil, bitPolicy != "uniform" {
            guard ["gate", "router"].contains(bitPolicy) else {
                throw ValidationError("--bit-policy \(bitPolicy) without --memory-budget: uniform, gate or router")
            }
            options.bitPolicy = bitPolicy
        }
        switch policy {
        case "hold-int4", "hold-int8":
            // Held in memory: every expert resident at the policy's bits, whatever the budget.
            options.bits = policy == "hold-int4" ? 4 : 8
        default:
            options.streaming = try streaming()
            if options.streaming != nil { adjust(&options.streaming!) }
        }
        let engine = try Engine.load(path: model, options: options)
        if let latencyTarget {
            let r = try AlphaTuning.tune(engine: engine, targetMilliseconds: latencyTarget)
            let fit = r.samples.map { String(format: "α %.1f: %.1f ms", $0[0], $0[1]) }.joined(separator: ", ")
            FileHandle.standardError.write(Data(String(format: "latency target %.1f ms/token: measured %@; fit %.2f + %.2f·α ms; α = %.1f%@\n",
                                                       latencyTarget, fit, r.intercept, r.slope, r.alpha,
                                                       r.meetsTarget ? "" : " (no α meets the target: the largest)").utf8))
        }
        return engine
    }
}

extension ModelOptions {
    /// The expert streaming options, nil without --memory-budget.
    func streaming() throws -> ExpertStreaming? {
        guard let memoryBudget else { return nil }
        var s = ExpertStreaming(budget: try MemoryBudget(parsing: memoryBudget))
        switch directIO {
        case "on", "true", "yes": s.directIO = true
        case "off", "false", "no": s.directIO = false
        default: throw ValidationError("--direct-io must be on or off, got '\(directIO)'")
        }
        guard (1...64).contains(ioThreads) else { throw ValidationError("--io-threads must be in 1...64") }
        s.ioThreads = ioThreads
        guard EvictionPolicies.names.contains(eviction) else {
            throw ValidationError("--eviction must be one of \(EvictionPolicies.names.joined(separator: ", ")), got '\(eviction)'")
        }
        s.eviction = eviction
        guard ["uniform", "gate", "static", "router"].contains(bitPolicy) else { throw ValidationError("--bit-policy must be uniform, gate, static or router, got '\(bitPolicy)'") }
        s.bitPolicy = bitPolicy
        if let expertBits {
            do { s.expertBits = try ExpertBitTable.load(path: expertBits) } catch { throw ValidationError(String(describing: error)) }
        }
        let thresholds = gateThresholds.split(separator: ",").map { Double($0.trimmingCharacters(in: .whitespaces)) }
        guard !thresholds.isEmpty, thresholds.allSatisfy({ $0 != nil && $0! > 0 && $0! <= 1 }) else {
            throw ValidationError("--gate-thresholds must be numbers in (0, 1] separated by commas, got '\(gateThresholds)'")
        }
        s.gateThresholds = thresholds.map { $0! }
        guard let order = LoadOrder(rawValue: loadOrder) else { throw ValidationError("--load-order must be hebf or id, got '\(loadOrder)'") }
        s.order = order
        s.prefetch = prefetch
        guard (0...1).contains(prefetchMinAccuracy) else { throw ValidationError("--prefetch-min-accuracy must be in [0, 1], got \(prefetchMinAccuracy)") }
        s.prefetchMinAccuracy = prefetchMinAccuracy
        if let policy {
            do { try s.apply(policy: policy) } catch { throw ValidationError(String(describing: error)) }
        }
        guard (0...1).contains(alpha) else { throw ValidationError("--alpha must be in [0, 1], got \(alpha)") }
        s.alpha = alpha
        guard let weight = SubstituteWeight(rawValue: substituteWeight) else {
            throw ValidationError("--substitute-weight must be own, inherit or scaled, got '\(substituteWeight)'")
        }
        s.substituteWeight = weight
        guard 0 <= t1, t1 <= t2, t2 <= 1 else { throw ValidationError("--t1 and --t2 need 0 ≤ T1 ≤ T2 ≤ 1, got \(t1), \(t2)") }
        s.hobbitThresholds = (t1, t2)
        s.hobbitLowLevel = hobbitLowLevel
        guard scoreWindow >= 1 else { throw ValidationError("--score-window must be ≥ 1, got \(scoreWindow)") }
        s.scoreWindow = scoreWindow
        if latencyTarget != nil, s.missPolicy != "smoe" { throw ValidationError("--latency-target chooses SMoE's α: give --policy smoe") }
        return s
    }
}

/// Prints an error the way every command does and exits non-zero.
func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("error: \(message)\n".utf8))
    exit(1)
}

func printJSON<T: Encodable>(_ value: T) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    let data = (try? encoder.encode(value)) ?? Data("{}".utf8)
    print(String(decoding: data, as: UTF8.self))
}

func formatBytes(_ n: Int) -> String {
    let units = ["B", "KiB", "MiB", "GiB"]
    var v = Double(n)
    var u = 0
    while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
    return String(format: "%.1f %@", v, units[u])
}
