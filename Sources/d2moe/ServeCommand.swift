import ArgumentParser
import D2MoE
import D2MoEServer
import Foundation

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve the model over an OpenAI-compatible HTTP API (continuous batching; SIGINT/SIGTERM shut down gracefully).",
        discussion: "Endpoints: POST /v1/completions, POST /v1/chat/completions (\"stream\": true for server-sent events), GET /v1/models, GET /health, GET /metrics (Prometheus).")

    @OptionGroup var modelOptions: ModelOptions

    @Option(name: .long, help: "Address to listen on (loopback by default).")
    var host = "127.0.0.1"

    @Option(name: .long, help: "Port (0 picks a free one; the chosen port is printed).")
    var port = 8080

    @Option(name: .long, help: "Sequences decoded together in one batch.")
    var maxBatch = 8

    @Option(name: .long, help: "Requests waiting for a slot; beyond it requests get 429.")
    var maxQueue = 64

    @Option(name: .long, help: "Bytes all KV caches may hold together (512MiB, 2GiB; default: --max-batch full-context caches).")
    var kvBudget: String?

    @Option(name: .long, help: "Prompt tokens processed per batch step (long prompts are spread over steps).")
    var prefillChunk = 128

    @Option(name: .long, help: "Require 'Authorization: Bearer KEY' on /v1/ requests.")
    var apiKey: String?

    @Option(name: .long, help: "The model name /v1/models reports (default: the file name without its extension).")
    var modelName: String?

    @Option(name: .long, help: "Largest request body accepted, in bytes.")
    var maxBody = 1 << 20

    @Option(name: .long, help: "Seconds running requests may take to finish after SIGINT/SIGTERM before they are cancelled.")
    var shutdownGrace = 30.0

    func run() async throws {
        guard maxBatch >= 1, maxQueue >= 0, prefillChunk >= 1, maxBody >= 1 else {
            throw ValidationError("--max-batch, --prefill-chunk and --max-body must be ≥ 1 and --max-queue ≥ 0")
        }
        guard (0...65535).contains(port) else { throw ValidationError("--port must be in 0...65535") }
        var limits = SchedulerLimits()
        limits.maxBatch = maxBatch
        limits.maxQueue = maxQueue
        limits.prefillChunk = prefillChunk
        if let kvBudget {
            guard case .bytes(let b)? = try? MemoryBudget(parsing: kvBudget) else {
                throw ValidationError("--kv-budget must be a size such as 512MiB or 2GiB, got '\(kvBudget)'")
            }
            limits.kvCacheBytes = b
        }
        let engine: Engine
        do { engine = try modelOptions.load() } catch let e as ValidationError { throw e } catch { fail(String(describing: error)) }
        var config = ServerConfiguration(modelName: modelName ?? URL(fileURLWithPath: modelOptions.model).deletingPathExtension().lastPathComponent)
        config.host = host
        config.port = port
        config.apiKey = apiKey
        config.maxBodyBytes = maxBody
        config.shutdownGraceSeconds = shutdownGrace
        let server = OpenAIServer(scheduler: BatchScheduler(engine: engine, limits: limits), configuration: config)
        let banner = "d2moe: serving \(config.modelName) on http://\(host):PORT (max batch \(limits.maxBatch))\n"
        try await server.run { port in
            FileHandle.standardOutput.write(Data(banner.replacingOccurrences(of: "PORT", with: String(port)).utf8))
        }
        print("d2moe: stopped")
    }
}
