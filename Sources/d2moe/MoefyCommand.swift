import ArgumentParser
import D2MoE
import Foundation

struct Moefy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Split a dense Llama-family GGUF model's feed-forward layers into experts (MoEfication).",
        discussion: """
            Neurons are clustered by co-activation on the calibration text into --experts equal experts; a linear \
            router is fitted to predict each expert's activation norm and picks --top-k of them per token. Expert \
            outputs are summed unweighted, so --top-k equal to --experts reproduces the dense model.
            """)

    @Option(name: .long, help: "The dense source model (GGUF).")
    var model: String

    @Option(name: .long, help: "Experts per layer (must divide the feed-forward size).")
    var experts: Int = 8

    @Option(name: .long, help: "Experts chosen per token.")
    var topK: Int = 8

    @Option(name: .long, help: "Calibration text (UTF-8), e.g. data/calib/c4.utf8.")
    var calib: String

    @Option(name: .long, help: "Calibration tokens to observe.")
    var calibTokens: Int = 8192

    @Option(name: .long, help: "The MoE GGUF file to write.")
    var out: String

    @Flag(name: .long, help: "Print the report as JSON.")
    var json = false

    func run() async throws {
        do {
            guard let text = try? String(contentsOfFile: calib, encoding: .utf8) else {
                fail("cannot read calibration text '\(calib)'")
            }
            var options = MoEfier.Options()
            options.experts = experts
            options.topK = topK
            options.calibrationTokens = calibTokens
            let report = try MoEfier.moefy(source: model, calibrationText: text, output: out, options: options) { line in
                if !json { FileHandle.standardError.write(Data((line + "\n").utf8)) }
            }
            if json {
                printJSON(report)
            } else {
                let mean = report.routerCoverage.reduce(0, +) / Double(max(1, report.routerCoverage.count))
                print(String(format: "wrote %@: %d layers × %d experts of %d neurons, top-%d; %d calibration tokens; mean router coverage %.3f; %.1f s",
                             out, report.layers, report.experts, report.expertIntermediate, report.topK,
                             report.calibrationTokens, mean, report.seconds))
            }
        } catch {
            fail(String(describing: error))
        }
    }
}
