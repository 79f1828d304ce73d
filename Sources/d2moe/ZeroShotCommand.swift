import ArgumentParser
import D2MoE
import Foundation

struct ZeroShotCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "zeroshot",
        abstract: "Zero-shot multiple-choice accuracy (acc, acc_norm) as lm-evaluation-harness scores loglikelihood requests.")

    @OptionGroup var modelOptions: ModelOptions

    @Option(name: .long, help: "The task: piqa, arc_easy, boolq, hellaswag or winogrande (any task of the request format works).")
    var task: String

    @Option(name: .long, help: "The task's request file (.jsonl.gz; default data/zeroshot/<task>.jsonl.gz).")
    var data: String?

    @Option(name: .long, help: "Score only the first N documents.")
    var limit: Int?

    @Flag(name: .long, help: "Print one JSON object instead of progress lines.")
    var json = false

    @Option(name: .long, help: "Write each document's log-likelihoods and predictions to FILE (JSON lines), like lm-eval's --log_samples.")
    var samples: String?

    func run() async throws {
        do {
            if let limit, limit < 1 { throw ValidationError("--limit must be ≥ 1") }
            let path = data ?? "data/zeroshot/\(task).jsonl.gz"
            let loaded = try ZeroShotTask.load(path: path, limit: limit)
            guard loaded.name == task else {
                fail("\(path) holds task '\(loaded.name)', not '\(task)'")
            }
            let engine = try modelOptions.load()
            let every = max(1, loaded.documents.count / 20)
            let result = try ZeroShot.evaluate(engine: engine, task: loaded) { done, total, accuracy in
                if !json && (done % every == 0 || done == total) {
                    FileHandle.standardError.write(Data(String(format: "[%d/%d] acc %.4f\n", done, total, accuracy).utf8))
                }
            }
            if let samples { try writeSamples(result.scores, to: samples) }
            let bits = bitWidthStats(engine)
            if json {
                printJSON(ZeroShotReport(task: result.task, accuracy: result.accuracy, accuracy_norm: result.accuracyNorm,
                                         accuracy_stderr: result.accuracyStderr, accuracy_norm_stderr: result.accuracyNormStderr,
                                         n: result.documents, requests: result.requests, tokens: result.tokens,
                                         seconds: result.seconds, model: modelOptions.model,
                                         bit_policy: bits?.policy ?? (modelOptions.bits != nil ? "uniform" : nil),
                                         average_bits: bits?.averageBits ?? modelOptions.bits.map(Double.init)))
            } else {
                print(String(format: "%@: acc %.4f ± %.4f, acc_norm %.4f (n=%d, %.1f s)", result.task, result.accuracy,
                             result.accuracyStderr, result.accuracyNorm, result.documents, result.seconds))
                if let bits { print(bits.summary(perLayer: false)) }
            }
        } catch let error as ValidationError {
            fail(error.message)
        } catch {
            fail(String(describing: error))
        }
    }
}

private func writeSamples(_ scores: [ZeroShotDocumentScore], to path: String) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    var out = Data()
    for score in scores {
        out.append(try encoder.encode(score))
        out.append(0x0A)
    }
    do { try out.write(to: URL(fileURLWithPath: path), options: .atomic) } catch {
        throw ValidationError("cannot write --samples file '\(path)': \(error.localizedDescription)")
    }
}

struct ZeroShotReport: Encodable {
    var task: String
    var accuracy: Double
    var accuracy_norm: Double
    var accuracy_stderr: Double
    var accuracy_norm_stderr: Double
    var n: Int
    var requests: Int
    var tokens: Int
    var seconds: Double
    var model: String
    /// The bit-width policy and the average bits per expert-token it gave (for `--bits N`: N).
    var bit_policy: String?
    var average_bits: Double?
}
