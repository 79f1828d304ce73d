import ArgumentParser
import D2MoE
import Foundation

struct Quantize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a model as an MWQ container (nested bit-width experts; dense FFNs count as one expert per layer).")

    @Option(name: .long, help: "Source: a GGUF file or a Hugging Face folder.")
    var model: String

    @Option(name: .long, help: "Output .mwq file (written atomically).")
    var out: String

    @Option(name: .long, help: "v1 = {2,3,4} bits, v2 = {5,6,7,8}, mwqA-B (e.g. mwq3-6), rtnN (independent round-to-nearest at N bits), or mfree / copiesA-B (separate RTN copies at 2,3,4 / A…B bits, for --policy matryoshka-free).")
    var scheme: String = "v1"

    @Option(name: .long, help: "Group size along the input dimension: 32, 64 or 128.")
    var group: Int = 128

    @Option(name: .long, help: "Element type of resident matrices: f16, bf16, f32, q8 (ggml's Q8_0), or q4: attention and shared-expert projections as 4-bit packed planes, the rest Q8_0.")
    var resident: String = "f16"

    @Option(name: .long, help: "Calibration text: scales fitted to minimise the output error on its activations (a routed expert's on the tokens routed to it).")
    var calib: String?

    @Option(name: .long, help: "Calibration tokens to use.")
    var calibTokens: Int = 4096

    @Flag(name: .long, help: "With --calib: GPTQ-style error compensation through the inverse Hessian (slower).")
    var gptq = false

    @Flag(name: .long, help: "Print each quantized tensor.")
    var verbose = false

    func run() throws {
        guard [32, 64, 128].contains(group) else { throw ValidationError("--group must be 32, 64 or 128") }
        let resident = self.resident == "q8" ? "q8_0" : self.resident
        guard ["f16", "bf16", "f32", "q8_0", "q4"].contains(resident) else { throw ValidationError("--resident must be f16, bf16, f32, q8 or q4, got '\(self.resident)'") }
        do {
            let scheme = try MWQConverter.Scheme(self.scheme)
            let text = try calib.map { path -> String in
                guard let t = try? String(contentsOfFile: path, encoding: .utf8) else { throw ModelError("cannot read '\(path)' as UTF-8 text") }
                return t
            }
            let s = try MWQConverter.convert(model: model, to: out, scheme: scheme, group: group, resident: resident,
                                             calibrationText: text, calibrationTokens: calibTokens, gptq: gptq) { line in
                if verbose || line.hasPrefix("group") || line.hasPrefix("calibration") { FileHandle.standardError.write(Data((line + "\n").utf8)) }
            }
            var total = 0
            let levels = scheme.bits.indices.map { k -> String in
                total += s.expertBytesPerLevel[k]
                return String(format: "%d bits: %@ (%.3f bits/weight), NMSE %.3g", scheme.bits[k], formatBytes(total),
                              Double(total) * 8 / Double(max(1, s.quantizedWeights)), s.nmsePerLevel[k])
            }
            print("\(out): \(s.expertRecords) expert records, \(s.quantizedWeights) quantized weights, group \(s.group), resident \(formatBytes(s.residentBytes))")
            for l in levels { print("  " + l) }
            if text != nil {
                // Experts no calibration token reached keep the uncalibrated search.
                print("  calibrated on \(s.calibrationTokens) tokens; \(s.uncalibratedExperts) routed experts received none (quantized uncalibrated)")
            }
            print(String(format: "  %.1f s", s.seconds))
        } catch {
            fail(String(describing: error))
        }
    }
}
