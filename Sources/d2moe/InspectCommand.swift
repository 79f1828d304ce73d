import ArgumentParser
import D2MoE
import Foundation

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a model file's architecture, tensors, quant types and sizes.")

    @Option(name: .long, help: "A GGUF file or a Hugging Face folder.")
    var model: String

    @Flag(name: .long, help: "List every tensor.")
    var tensors = false

    func run() throws {
        do {
            let report = try ModelInspector.inspect(path: model)
            print("file:          \(model)")
            print("format:        \(report.format)")
            print("architecture:  \(report.architecture)")
            for (key, value) in report.properties { print("\(key.padding(toLength: 15, withPad: " ", startingAt: 0))\(value)") }
            print("tensors:       \(report.tensors.count), \(formatBytes(report.totalBytes))")
            let byType = Dictionary(grouping: report.tensors, by: { $0.type })
            for (type, list) in byType.sorted(by: { $0.key < $1.key }) {
                print("  \(type.padding(toLength: 6, withPad: " ", startingAt: 0)) \(list.count) tensors, \(formatBytes(list.reduce(0) { $0 + $1.bytes }))")
            }
            if tensors {
                for t in report.tensors {
                    print("  \(t.name)  \(t.shape.map(String.init).joined(separator: "×"))  \(t.type)  \(formatBytes(t.bytes))")
                }
            }
        } catch {
            fail(String(describing: error))
        }
    }
}
