import ArgumentParser
import D2MoE
import Foundation

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the token ids of a text.")

    @Option(name: .long, help: "A GGUF file or a Hugging Face folder (tokenizer.json).")
    var model: String

    @Option(name: .long, help: "The text.")
    var text: String?

    @Option(name: .long, help: "Read the text from this file instead.")
    var file: String?

    @Flag(name: .long, help: "Print a JSON array.")
    var json = false

    @Flag(name: .long, help: "Add no BOS/EOS and treat special-token text as plain text.")
    var noSpecial = false

    func run() throws {
        do {
            let input: String
            if let file {
                guard let s = try? String(contentsOfFile: file, encoding: .utf8) else { fail("cannot read '\(file)' as UTF-8 text") }
                input = s
            } else if let text {
                input = text
            } else {
                fail("give --text TEXT or --file FILE")
            }
            let tokenizer = try Engine.loadTokenizer(path: model)
            let ids = tokenizer.encode(input, addSpecial: !noSpecial, parseSpecial: !noSpecial)
            if json {
                print("[" + ids.map(String.init).joined(separator: ", ") + "]")
            } else {
                for id in ids { print("\(id)\t\(String(decoding: tokenizer.tokenBytes(id), as: UTF8.self).debugDescription)") }
            }
        } catch {
            fail(String(describing: error))
        }
    }
}
