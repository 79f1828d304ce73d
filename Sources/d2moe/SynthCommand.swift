import ArgumentParser
import D2MoE
import Foundation

struct Synth: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a synthetic MoE of a real shape (random weights, real sizes) straight into an MWQ container.",
        discussion: "For throughput and memory measurements at scale; the weights mean nothing. --list shows the shapes.")

    @Option(name: .long, help: "The shape: olmoe-1b-7b, qwen1.5-moe-a2.7b, mixtral-8x7b, deepseek-v2-lite, tiny-moe, … (see --list).")
    var shape: String?

    @Option(name: .long, help: "v1 = {2,3,4} bits, v2 = {5,6,7,8}, mwqA-B (e.g. mwq3-6), rtnN (one N-bit base level), or mfree / copiesA-B (separate copies at 2,3,4 / A…B bits, for --policy matryoshka-free).")
    var scheme: String = "v1"

    @Option(name: .long, help: "Output .mwq file (written atomically).")
    var out: String?

    @Option(name: .long, help: "Random seed (same seed, same file).")
    var seed: UInt64 = 0

    @Option(name: .long, help: "Number of layers instead of the shape's (e.g. Mixtral at reduced depth).")
    var layers: Int?

    @Option(name: .long, help: "Group size along the input dimension: 32, 64 or 128.")
    var group: Int = 128

    @Option(name: .long, help: "Element type of resident matrices: f16, bf16, f32 or q8 (ggml's Q8_0).")
    var resident: String = "f16"

    @Flag(name: .long, help: "List the shapes with their sizes at --scheme and exit.")
    var list = false

    func run() throws {
        guard [32, 64, 128].contains(group) else { throw ValidationError("--group must be 32, 64 or 128") }
        let resident = self.resident == "q8" ? "q8_0" : self.resident
        guard ["f16", "bf16", "f32", "q8_0"].contains(resident) else { throw ValidationError("--resident must be f16, bf16, f32 or q8, got '\(self.resident)'") }
        if let layers, layers < 1 { throw ValidationError("--layers must be ≥ 1") }
        do {
            let scheme = try MWQConverter.Scheme(self.scheme)
            if list {
                print("shapes at \(scheme.name) (bits \(scheme.bits.map(String.init).joined(separator: ", "))), group \(group), resident \(resident):")
                for s in SyntheticModel.shapes {
                    let shape = layers.map { s.withLayers($0) } ?? s
                    let e = try SyntheticModel.expectedSizes(shape: shape, scheme: scheme, group: group, resident: resident)
                    let shared = shape.sharedExpertIntermediate.map { " + shared \($0)" } ?? ""
                    print("  \(shape.name.padding(toLength: 18, withPad: " ", startingAt: 0)) \(shape.modelType), \(shape.layers) layers, hidden \(shape.hidden), heads \(shape.heads)/\(shape.kvHeads), vocab \(shape.vocab), \(shape.experts) experts top-\(shape.topK), FFN \(shape.expertIntermediate)\(shared): file \(formatBytes(e.fileBytes)), experts \(formatBytes(e.expertBytesPerLevel.reduce(0, +))), resident \(formatBytes(e.residentBytes))  (\(shape.summary))")
                }
                return
            }
            guard let name = shape else { throw ValidationError("give --shape NAME (one of \(SyntheticModel.shapes.map(\.name).joined(separator: ", "))) or --list") }
            guard let out else { throw ValidationError("give --out FILE.mwq") }
            var shape = try SyntheticModel.shape(named: name)
            if let layers { shape = shape.withLayers(layers) }
            var lastPercent = -1
            let isTerminal = isatty(2) != 0
            let s = try SyntheticModel.write(shape: shape, scheme: scheme, group: group, resident: resident, seed: seed, to: out) { written, total in
                let percent = total > 0 ? written * 100 / total : 100
                guard isTerminal ? percent != lastPercent : percent / 10 != lastPercent / 10 else { return }
                lastPercent = percent
                let line = "\(isTerminal ? "\r" : "")writing \(out): \(percent)% of \(formatBytes(total))\(isTerminal ? "" : "\n")"
                FileHandle.standardError.write(Data(line.utf8))
            }
            if isTerminal { FileHandle.standardError.write(Data("\n".utf8)) }
            var cumulative = 0
            let levels = s.bits.indices.map { k -> String in
                cumulative += s.expertBytesPerLevel[k]
                return String(format: "%d bits %@ (%.3f bits/weight)", s.bits[k], formatBytes(s.expertBytesPerLevel[k]),
                              Double(cumulative) * 8 / Double(max(1, s.expertWeights)))
            }
            print("\(out): \(shape.name) (\(shape.layers) layers), \(s.scheme), group \(s.group), seed \(seed): \(formatBytes(s.fileBytes)); "
                  + "\(s.expertRecords) expert records, per level: \(levels.joined(separator: ", ")); resident \(formatBytes(s.residentBytes)) \(s.resident); "
                  + String(format: "%.1f s, %.0f MB/s", s.seconds, Double(s.fileBytes) / 1e6 / max(s.seconds, 1e-9)))
        } catch let error as ValidationError {
            throw error
        } catch {
            fail(String(describing: error))
        }
    }
}
