import ArgumentParser
import D2MoE
import D2MoEKernels
import Foundation

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmarks: a model's speed and memory (default), or the product kernels'.",
        subcommands: [ModelBench.self, KernelBench.self], defaultSubcommand: ModelBench.self)
}

struct ModelBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "model", abstract: "Measure prompt and generation speed (llama-bench's pp/tg tests) and memory.")

    @OptionGroup var modelOptions: ModelOptions

    @Option(name: [.customShort("p"), .long], help: "Prompt tokens processed in one pass (pp test).")
    var promptTokens: Int = 128

    @Option(name: [.customShort("n"), .long], help: "Tokens generated one at a time (tg test).")
    var generateTokens: Int = 128

    @Option(name: [.customShort("r"), .long], help: "Repetitions; the mean and standard deviation are reported.")
    var repetitions: Int = 3

    @Option(name: .long, help: "Sequences run together (submitted as one group to the scheduler, or in lockstep with --driver lockstep), or a comma-separated sweep (1,8,32): pp and tg tokens/s count all of them.")
    var requests: String = "1"

    @Option(name: .long, help: "A comma-separated sweep of --memory-budget values (25%,50%); the model is loaded once per budget.")
    var budgets: String?

    @Option(name: .long, help: "A comma-separated sweep of --policy values (d2moe,moqe-dynaio,hold-int4); smoe@A sets α, a -nopf suffix turns the preset's prefetch off (hobbit-nopf).")
    var policies: String?

    @Option(name: .long, help: "The model of separate copies (synth or quantize --scheme mfree) that matryoshka-free rows and the ablation's first step run on; --model is the MWQ file.")
    var copies: String?

    @Flag(name: .long, help: "Add the ablation of the paper's Fig. 14 to the sweep: on-demand separate copies (--copies) → +MWQ → +HEBF → +budget residency → +prefetch, with --bit-policy's bit-widths throughout.")
    var ablation = false

    @Option(name: .long, help: "With a sweep: write every row as CSV.")
    var csv: String?

    @Option(name: .long, help: "With a sweep: write an SVG plot of generation tokens/s against the budget, one line per policy and request count.")
    var svg: String?

    @Option(name: .long, help: "Replay expert selection from a routing trace (d2moe's JSON lines, moe-beyond's CSV or speculative-moe's JSON lines) instead of the model's routers.")
    var trace: String?

    @Option(name: .long, help: "Write the routing of the run as a d2moe trace (JSON lines; see RoutingTrace).")
    var recordTrace: String?

    @Option(name: .long, help: "Feed the tokens of this UTF-8 text (e.g. WikiText-2) instead of random tokens, so experts are routed as for real text.")
    var text: String?

    @Option(name: .long, help: "What runs the requests: scheduler (the server's BatchScheduler, each round's requests submitted together, sampling included) or lockstep (the benchmark's own loop, as llama-bench).")
    var driver: String = "scheduler"

    @Flag(name: .long, help: "With --memory-budget: per-layer expert statistics.")
    var perLayer = false

    @Flag(name: .long, help: "Print one JSON object (a JSON array for a sweep).")
    var json = false

    func run() async throws {
        guard SpeedBenchmark.Driver(rawValue: driver) != nil else { throw ValidationError("--driver must be scheduler or lockstep, got '\(driver)'") }
        let counts = requests.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !counts.isEmpty, counts.allSatisfy({ $0 != nil && $0! >= 1 }) else {
            throw ValidationError("--requests must be positive integers separated by commas, got '\(requests)'")
        }
        let budgetList: [String?] = budgets.map { $0.split(separator: ",").map { String($0) } } ?? [modelOptions.memoryBudget]
        let policyList: [String?] = policies.map { $0.split(separator: ",").map { String($0) } } ?? [modelOptions.policy]
        guard counts.count > 1 || budgetList.count > 1 || policyList.count > 1 || csv != nil || svg != nil || ablation else {
            try single(modelOptions, requests: counts[0]!)
            return
        }
        try sweep(budgets: budgetList, policies: policyList, requests: counts.map { $0! })
    }

    /// The --text file's tokens, nil without it.
    func benchText(_ engine: Engine) throws -> [Int32]? {
        guard let text else { return nil }
        guard let s = try? String(contentsOfFile: text, encoding: .utf8) else { throw ValidationError("cannot read --text '\(text)' as UTF-8") }
        return engine.tokenizer.encode(s, addSpecial: false, parseSpecial: false)
    }

    /// Trace replay and recording.
    func attachHooks(_ engine: Engine, requests: Int) throws {
        if trace != nil && recordTrace != nil { throw ValidationError("--trace and --record-trace cannot be combined") }
        if let trace {
            let t = try RoutingTrace.load(path: trace)
            engine.model.routingHook = TraceReplay(trace: t, sequenceOffset: t.count / max(requests, 1))
            if !json {
                print("replaying \(t.count) tokens × \(t.layerCount) layers (top-\(t.topK)\(t.tokens.joined().contains { $0?.weights != nil } ? ", with gate weights" : "")) from \(trace)")
            }
        }
        if let recordTrace { engine.model.routingHook = try TraceRecorder(path: recordTrace) }
    }

    private func single(_ modelOptions: ModelOptions, requests: Int) throws {
        do {
            let engine = try modelOptions.load()
            try attachHooks(engine, requests: requests)
            let result = try SpeedBenchmark.run(engine: engine, promptTokens: promptTokens, generateTokens: generateTokens,
                                                repetitions: repetitions, requests: requests, text: try benchText(engine),
                                                driver: SpeedBenchmark.Driver(rawValue: driver)!)
            if json {
                printJSON(result)
            } else {
                if requests > 1 {
                    print("\(requests) sequences \(driver == "lockstep" ? "in lockstep" : "submitted together to the batch scheduler"); tokens/s count all of them")
                }
                print(String(format: "model %@ | weights %@ | threads %d", modelOptions.model, formatBytes(result.weightBytes), result.threads))
                print(String(format: "pp%d: %.1f ± %.1f tokens/s", promptTokens, result.promptTokensPerSecond, result.promptStdDev))
                print(String(format: "tg%d: %.1f ± %.1f tokens/s", generateTokens, result.generationTokensPerSecond, result.generationStdDev))
                if result.readBandwidth > 0 {
                    print(String(format: "generation reads %.1f MB of weights per token: %.1f GB/s = %.0f%% of the measured read bandwidth (%.1f GB/s)",
                                 Double(result.weightBytesPerToken) / 1e6, result.generationGBPerSecond,
                                 100 * result.bandwidthFraction, result.readBandwidth / 1e9))
                } else {
                    print(String(format: "generation reads %.1f MB of resident weights per token (no bandwidth probe: experts stream under the memory budget)",
                                 Double(result.weightBytesPerToken) / 1e6))
                }
                print("resident memory after load \(formatBytes(result.startResidentBytes)), peak during the run \(formatBytes(result.runPeakResidentBytes))\(result.peakReset ? "" : " (peak not resettable: includes loading)"), peak overall \(formatBytes(result.peakResidentBytes)) | KV cache \(formatBytes(result.kvCacheBytes))")
                if let experts = result.experts {
                    print(experts.summary(perLayer: perLayer))
                }
            }
        } catch {
            fail(String(describing: error))
        }
    }
}

struct KernelBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kernels",
        abstract: "Weight bytes per second of the MWQ and dense product kernels against the measured read bandwidth.")

    @Option(name: .long, parsing: .upToNextOption, help: "Batch sizes (tokens per product; long MWQ products take the int16 GEMM route, as prompts do).")
    var tokens: [Int] = [1, 8]

    @Option(name: .long, help: "MWQ group size.")
    var group: Int = 128

    @Option(name: .long, help: "Seconds per case.")
    var seconds: Double = 0.5

    @Option(name: .long, help: "Matrix shape ROWSxCOLS, e.g. 49152x576 for SmolLM2's output head (COLS a multiple of the group).")
    var shape: String = "2048x2048"

    @Option(name: .long, help: "Compute threads (default: the shared pool's).")
    var threads: Int?

    @Flag(name: .long, help: "Print one JSON object.")
    var json = false

    func run() async throws {
        let dims = shape.lowercased().split(separator: "x").compactMap { Int($0) }
        guard dims.count == 2, dims[0] > 0, dims[1] > 0, dims[1] % group == 0, dims[1] % 32 == 0 else {
            throw ValidationError("--shape must be ROWSxCOLS with COLS a multiple of the group (\(group)) and of 32; got '\(shape)'")
        }
        let result = KernelBenchmark.run(tokens: tokens, group: group, rows: dims[0], cols: dims[1], seconds: seconds,
                                         pool: threads.map { ComputePool(threadCount: $0) } ?? .shared)
        if json { printJSON(result); return }
        print(String(format: "threads %d | %@ | measured read bandwidth %.1f GB/s", result.threads, "\(dims[0])x\(dims[1])", result.readBandwidth / 1e9))
        print("kernel               bits/w  tokens    GB/s  of bandwidth  GMAC/s")
        for c in result.cases {
            let name = c.kernel.hasPrefix("mwq") ? "\(c.kernel) b1=\(c.baseBits!) L\(c.level!)" : c.kernel
            print(name.padding(toLength: 20, withPad: " ", startingAt: 0)
                  + String(format: " %6.3f %7d %7.2f %12.0f%% %7.1f", c.bitsPerWeight, c.tokens, c.gbPerSecond, 100 * c.bandwidthFraction, c.gigaMACsPerSecond))
        }
    }
}
