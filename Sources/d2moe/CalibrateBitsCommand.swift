import ArgumentParser
import D2MoE
import D2MoEFormats
import Foundation

struct CalibrateBits: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "calibrate-bits",
        abstract: "Choose one bit-width per routed expert by its importance (EdgeMoE's static rule, for --policy edgemoe).",
        discussion: """
            Importance is the sum of an expert's gate weights over the calibration tokens (--data: text run through \
            the model; or --trace: a recorded routing trace, the same one `d2moe bench --trace` replays). Per MoE \
            layer the most important experts get the most bits, keeping the layer's mean at most --average-bits.
            """)

    @OptionGroup var modelOptions: ModelOptions

    @Option(name: .long, help: "Calibration text (UTF-8), e.g. data/calib/c4.utf8.")
    var data: String?

    @Option(name: .long, help: "With --data: calibration tokens to run.")
    var tokens = 2048

    @Option(name: .long, help: "A routing trace to count instead of running text (d2moe or moe-beyond format).")
    var trace: String?

    @Option(name: .long, help: "The mean bit-width per MoE layer (between the file's lowest and highest).")
    var averageBits: Double = 3

    @Option(name: .long, help: "The JSON file to write (for --expert-bits).")
    var out: String

    func run() throws {
        do {
            guard (data == nil) != (trace == nil) else { throw ValidationError("give exactly one of --data FILE and --trace FILE") }
            guard modelOptions.model.hasSuffix(".mwq") else { throw ValidationError("--model must be an .mwq file (its levels are the bit-widths to choose from)") }
            let file = try MWQFile(path: modelOptions.model)
            let importance: ExpertImportance
            let origin: String
            if let trace {
                let layers = Set(file.header.experts.map(\.layer)).count
                let experts = (file.header.experts.map(\.expert).max() ?? -1) + 1
                importance = try ExpertImportance(trace: try RoutingTrace.load(path: trace), moeLayers: layers, experts: experts)
                origin = trace
            } else {
                guard let text = try? String(contentsOfFile: data!, encoding: .utf8) else { throw ValidationError("cannot read calibration text '\(data!)'") }
                let engine = try modelOptions.load()
                importance = try ExpertImportance.measure(engine: engine, text: text, tokens: tokens)
                origin = "\(data!) (\(importance.tokens.first ?? 0) tokens)"
            }
            let table = try ExpertBitTable.allocate(importance: importance.importance, bits: file.header.quantization.bits,
                                                    averageBits: averageBits, origin: origin)
            try table.write(path: out)
            let all = table.bits.joined()
            let counts = Dictionary(grouping: all, by: { $0 }).mapValues(\.count).sorted { $0.key < $1.key }
            print("wrote \(out): \(table.bits.count) MoE layers × \(table.bits.first?.count ?? 0) experts, mean \(String(format: "%.2f", Double(all.reduce(0, +)) / Double(max(all.count, 1)))) bits ("
                  + counts.map { "\($0.value) at \($0.key)" }.joined(separator: ", ") + ") from \(origin)")
        } catch let e as ValidationError {
            fail(e.message)
        } catch {
            fail(String(describing: error))
        }
    }
}
