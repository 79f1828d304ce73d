import ArgumentParser
import D2MoE
import Foundation

struct Eval: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Measure model quality.", subcommands: [PerplexityCommand.self])
}

struct PerplexityCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ppl",
        abstract: "Perplexity as llama.cpp's perplexity tool computes it (windows of --ctx tokens, second half scored).")

    @OptionGroup var modelOptions: ModelOptions

    @Option(name: .long, help: "A UTF-8 text file (e.g. WikiText-2's wiki.test.raw).")
    var data: String

    @Option(name: .long, help: "Stop after this many windows.")
    var maxChunks: Int?

    @Flag(name: .long, help: "Print one JSON object instead of progress lines.")
    var json = false

    func run() async throws {
        do {
            guard let text = try? String(contentsOfFile: data, encoding: .utf8) else {
                fail("cannot read '\(data)' as UTF-8 text")
            }
            let context = modelOptions.contextLength ?? 512
            var options = modelOptions
            options.contextLength = context
            let engine = try options.load()
            let result = try Perplexity.evaluate(engine: engine, text: text, context: context, maxChunks: maxChunks) { done, total, ppl in
                if !json { FileHandle.standardError.write(Data(String(format: "[%d/%d] %.4f\n", done, total, ppl).utf8)) }
            }
            if json {
                printJSON(PerplexityReport(perplexity: result.perplexity, tokens: result.tokens, chunks: result.chunks,
                                           seconds: result.seconds, context: context, model: modelOptions.model))
            } else {
                print(String(format: "perplexity %.4f over %d tokens (%d windows of %d) in %.1f s",
                             result.perplexity, result.tokens, result.chunks, context, result.seconds))
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
}
