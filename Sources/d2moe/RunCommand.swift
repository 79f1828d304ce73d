import ArgumentParser
import D2MoE
import Foundation

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Generate text from a prompt, streamed to stdout.")

    @OptionGroup var modelOptions: ModelOptions

    @Option(name: .long, help: "The prompt.")
    var prompt: String

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
        let engine: Engine
        let stream: AsyncStream<GenerationEvent>
        let loadStart = Date()
        do {
            engine = try modelOptions.load()
            stream = try engine.generate(prompt: prompt, parameters: parameters)
        } catch let error as ValidationError {
            throw error
        } catch {
            fail(String(describing: error))
        }
        let loadSeconds = Date().timeIntervalSince(loadStart)
        for await event in stream {
            switch event {
            case .text(let text, _):
                FileHandle.standardOutput.write(Data(text.utf8))
            case .finished(let s):
                print()
                if stats {
                    let line = String(format: "load %.2f s | prompt %d tokens, %.1f tokens/s | generated %d tokens, %.1f tokens/s | finish: %@ | weights %@",
                                      loadSeconds, s.promptTokens, s.promptTokensPerSecond, s.generatedTokens,
                                      s.generationTokensPerSecond, s.finishReason.rawValue, formatBytes(engine.model.weightBytes))
                    FileHandle.standardError.write(Data((line + "\n").utf8))
                }
            case .failed(let message):
                fail(message)
            }
        }
    }
}
