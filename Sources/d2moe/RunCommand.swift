import ArgumentParser
import D2MoE
import Foundation

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate text from a prompt, streamed to stdout.",
        discussion: "Policies (--policy, with --memory-budget for those that stream):\n" + ExpertStreaming.policies.map { "  \($0.0): \($0.1)" }.joined(separator: "\n"))

    @OptionGroup var modelOptions: ModelOptions

    @Option(name: .long, help: "The prompt (with --chat: the user's message; without --prompt, --chat reads turns from stdin).")
    var prompt: String?

    @Flag(name: .long, help: "Apply the model's chat template: --prompt is the user's message.")
    var chat = false

    @Option(name: .long, help: "With --chat: a system message.")
    var system: String?

    @Option(name: .long, help: "Maximum number of tokens to generate.")
    var maxTokens: Int = 128

    @Option(name: .long, help: "Sampling temperature; 0 is greedy.")
    var temperature: Float = 0.8

    @Option(name: .long, help: "Keep the k most likely tokens (0 = all).")
    var topK: Int = 40

    @Option(name: .long, help: "Nucleus sampling threshold.")
    var topP: Float = 0.95

    @Option(name: .long, help: "Drop tokens less likely than min-p × the most likely.")
    var minP: Float = 0.05

    @Option(name: .long, help: "Penalty for tokens among the last 64 (1 = off).")
    var repeatPenalty: Float = 1

    @Option(name: .long, help: "Random seed (same seed, same output).")
    var seed: UInt64 = 0

    @Option(name: .long, help: "Stop before this string (repeatable).")
    var stop: [String] = []

    @Option(name: .long, help: "Write the routing of every MoE layer as a d2moe trace (JSON lines) that bench --trace replays.")
    var recordTrace: String?

    @Flag(name: .long, help: "Print statistics to stderr.")
    var stats = false

    func run() async throws {
        var parameters = GenerationParameters()
        parameters.maxTokens = maxTokens
        parameters.sampling.temperature = temperature
        parameters.sampling.topK = topK
        parameters.sampling.topP = topP
        parameters.sampling.minP = minP
        parameters.sampling.repetitionPenalty = repeatPenalty
        parameters.sampling.seed = seed
        parameters.stopStrings = stop
        if !chat && prompt == nil { throw ValidationError("give --prompt TEXT (or --chat to read turns from stdin)") }
        let engine: Engine
        let loadStart = Date()
        do {
            engine = try modelOptions.load()
            if let recordTrace { engine.model.routingHook = try TraceRecorder(path: recordTrace) }
            if chat { _ = try engine.chatTokens([ChatMessage(role: "user", content: "")]) }  // fail now if there is no usable template
        } catch let error as ValidationError {
            throw error
        } catch {
            fail(String(describing: error))
        }
        let loadSeconds = Date().timeIntervalSince(loadStart)
        guard chat else {
            await stream(engine, { try engine.generate(prompt: prompt!, parameters: parameters) }, loadSeconds: loadSeconds)
            return
        }
        var messages = system.map { [ChatMessage(role: "system", content: $0)] } ?? []
        if let prompt {
            messages.append(ChatMessage(role: "user", content: prompt))
            await stream(engine, { try engine.generate(messages: messages, parameters: parameters) }, loadSeconds: loadSeconds)
            return
        }
        // Interactive: one user turn per line; the whole conversation is re-rendered each turn.
        while let line = readLine() {
            guard !line.trimmingCharacters(in: .whitespaces).isEmpty else { continue }
            messages.append(ChatMessage(role: "user", content: line))
            let reply = await stream(engine, { try engine.generate(messages: messages, parameters: parameters) }, loadSeconds: loadSeconds)
            messages.append(ChatMessage(role: "assistant", content: reply))
        }
    }

    /// Streams one generation to stdout and returns its text.
    @discardableResult
    func stream(_ engine: Engine, _ start: () throws -> AsyncStream<GenerationEvent>, loadSeconds: Double) async -> String {
        let stream: AsyncStream<GenerationEvent>
        do { stream = try start() } catch { fail(String(describing: error)) }
        var reply = ""
        for await event in stream {
            switch event {
            case .text(let text, _):
                reply += text
                FileHandle.standardOutput.write(Data(text.utf8))
            case .finished(let s):
                FileHandle.standardOutput.write(Data("\n".utf8))
                if stats {
                    let line = String(format: "load %.2f s | prompt %d tokens, %.1f tokens/s | generated %d tokens, %.1f tokens/s | finish: %@ | weights %@",
                                      loadSeconds, s.promptTokens, s.promptTokensPerSecond, s.generatedTokens,
                                      s.generationTokensPerSecond, s.finishReason.rawValue, formatBytes(engine.model.weightBytes))
                    FileHandle.standardError.write(Data((line + "\n").utf8))
                    if let bits = bitWidthStats(engine) { FileHandle.standardError.write(Data((bits.summary() + "\n").utf8)) }
                    if let streamed = engine.model.experts as? StreamingExperts {
                        let peak = "peak resident memory \(formatBytes(ProcessMemory.peakResidentBytes))"
                        FileHandle.standardError.write(Data((streamed.stats.summary() + "\n" + peak + "\n").utf8))
                    }
                }
            case .failed(let message):
                fail(message)
            }
        }
        return reply
    }
}
