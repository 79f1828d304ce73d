import ArgumentParser
import D2MoE
import Foundation

struct Eval: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Measure model quality.", subcommands: [PerplexityCommand.self, ZeroShotCommand.self])
}

struct PerplexityCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ppl",
        abstract: "Perplexity as llama.cpp's perplexity tool computes it (windows of --ctx tokens, second half scored).")

    @OptionGroup var modelOptions: ModelOptions

    @Option(name: .long, help: "A UTF-8 text file (e.g. WikiText-2's wiki.test.raw).")
    var data: String?

    @Option(name: .customLong("token-ids"), help: "Score these token ids (a JSON array, e.g. from llama-tokenize --ids) instead of tokenizing --data.")
    var tokenIDs: String?

    @Option(name: .long, help: "With --token-ids: the BOS id that starts every window (omit for models without BOS).")
    var bos: Int32?

    @Option(name: .long, help: "Stop after this many windows.")
    var maxChunks: Int?

    @Option(name: .long, help: "Tokens per forward pass in the scored half of each window (1: one token per step, as decoding runs, so expert policies decide per token as they do when generating).")
    var scoreBatch: Int?

    @Flag(name: .long, help: "Print one JSON object instead of progress lines.")
    var json = false

    @Flag(name: .long, help: "With a bit-width policy: also print the bit-widths chosen per layer.")
    var stats = false

    func run() async throws {
        do {
            let context = modelOptions.contextLength ?? 512
            var options = modelOptions
            options.contextLength = context
            let progress: (Int, Int, Double) -> Void = { done, total, ppl in
                if !json { FileHandle.standardError.write(Data(String(format: "[%d/%d] %.4f\n", done, total, ppl).utf8)) }
            }
            let result: PerplexityResult
            var lastEngine: Engine?
            if let tokenIDs {
                guard let data = FileManager.default.contents(atPath: tokenIDs),
                      let ids = (try? JSONSerialization.jsonObject(with: data)) as? [Int] else {
                    fail("cannot read '\(tokenIDs)' as a JSON array of token ids")
                }
                let model = try ModelLoader.loadModel(path: modelOptions.model, options: LoadOptions(expertsPerToken: modelOptions.expertsPerToken))
                result = try Perplexity.evaluate(model: model, tokens: ids.map { Int32($0) }, bos: bos, context: context,
                                                 maxChunks: maxChunks, progress: progress)
            } else {
                guard let data, let text = try? String(contentsOfFile: data, encoding: .utf8) else {
                    fail("give --data FILE (UTF-8 text) or --token-ids FILE")
                }
                let engine = try options.load()
                lastEngine = engine
                result = try Perplexity.evaluate(engine: engine, text: text, context: context, maxChunks: maxChunks,
                                                 scoreBatchSize: scoreBatch, progress: progress)
            }
            let bits = lastEngine.flatMap(bitWidthStats)
            if json {
                printJSON(PerplexityReport(perplexity: result.perplexity, tokens: result.tokens, chunks: result.chunks,
                                           seconds: result.seconds, context: context, model: modelOptions.model,
                                           bitPolicy: bits?.policy ?? (modelOptions.bits != nil ? "uniform" : nil),
                                           averageBits: bits?.averageBits ?? modelOptions.bits.map(Double.init), bitWidths: bits))
            } else {
                print(String(format: "perplexity %.4f over %d tokens (%d windows of %d) in %.1f s",
                             result.perplexity, result.tokens, result.chunks, context, result.seconds))
                if let bits { print(bits.summary(perLayer: stats)) }
            }
        } catch {
            fail(String(describing: error))
        }
    }
}

struct PerplexityReport: Encodable {
    var perplexity: Double
    var tokens: Int
    var chunks: Int
    var seconds: Double
    var context: Int
    var model: String
    /// The bit-width policy and the average bits per expert-token it gave (for `--bits N`: N).
    var bitPolicy: String?
    var averageBits: Double?
    var bitWidths: BitWidthStats?

    enum CodingKeys: String, CodingKey {
        case perplexity, tokens, chunks, seconds, context, model, bitPolicy = "bit_policy", averageBits = "average_bits", bitWidths = "bit_widths"
    }
}

/// The bit-widths the engine's experts ran at so far, nil when one fixed level was served.
func bitWidthStats(_ engine: Engine) -> BitWidthStats? {
    if let routing = engine.model.bitRouting { return routing.stats }
    if let streamed = engine.model.experts as? StreamingExperts { return BitWidthStats(streamed.stats) }
    return nil
}
