import ArgumentParser
import D2MoE
import Foundation

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure prompt and generation speed (llama-bench's pp/tg tests) and memory.")

    @OptionGroup var modelOptions: ModelOptions

    @Option(name: [.customShort("p"), .long], help: "Prompt tokens processed in one pass (pp test).")
    var promptTokens: Int = 128

    @Option(name: [.customShort("n"), .long], help: "Tokens generated one at a time (tg test).")
    var generateTokens: Int = 128

    @Option(name: [.customShort("r"), .long], help: "Repetitions; the mean and standard deviation are reported.")
    var repetitions: Int = 3

    @Flag(name: .long, help: "Print one JSON object.")
    var json = false

    func run() async throws {
        do {
            let engine = try modelOptions.load()
            let result = try SpeedBenchmark.run(engine: engine, promptTokens: promptTokens, generateTokens: generateTokens,
                                                repetitions: repetitions)
            if json {
                printJSON(result)
            } else {
                print(String(format: "model %@ | weights %@ | threads %d", modelOptions.model, formatBytes(result.weightBytes), result.threads))
                print(String(format: "pp%d: %.1f ± %.1f tokens/s", promptTokens, result.promptTokensPerSecond, result.promptStdDev))
                print(String(format: "tg%d: %.1f ± %.1f tokens/s", generateTokens, result.generationTokensPerSecond, result.generationStdDev))
                print(String(format: "generation reads %.1f MB of weights per token: %.1f GB/s = %.0f%% of the measured read bandwidth (%.1f GB/s)",
                             Double(result.weightBytesPerToken) / 1e6, result.generationGBPerSecond,
                             100 * result.bandwidthFraction, result.readBandwidth / 1e9))
                print("peak resident memory \(formatBytes(result.peakResidentBytes))")
            }
        } catch {
            fail(String(describing: error))
        }
    }
}
