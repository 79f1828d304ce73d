import Foundation
import D2MoEFormats
import D2MoETokenizers

/// A model's tokenizer with what chat needs: its template and the text of BOS/EOS.
public struct TokenizerBundle: Sendable {
    public let tokenizer: any Tokenizer
    /// The template's source, when the model has one (`tokenizer.chat_template`,
    /// tokenizer_config.json or chat_template.jinja).
    public let chatTemplateSource: String?
    public let bosText: String
    public let eosText: String

    /// The parsed template; throws when the model has none or it does not parse.
    public func chatTemplate() throws -> ChatTemplate {
        guard let chatTemplateSource else { throw ModelError("this model has no chat template (it is probably a base model, not an instruct one)") }
        return try ChatTemplate(chatTemplateSource)
    }
}

enum TokenizerLoader {
    static func load(path: String) throws -> TokenizerBundle {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ModelError("\(path): no such file or folder")
        }
        return isDirectory.boolValue ? try folder(path) : try gguf(try GGUFFile(path: path))
    }

    static func gguf(_ file: GGUFFile) throws -> TokenizerBundle {
        let tokenizer = try GGUFMetadata.tokenizer(file)
        let tokens = file.metadata["tokenizer.ggml.tokens"]?.stringArray ?? []
        func text(_ id: Int32?) -> String { id.map { Int($0) < tokens.count ? tokens[Int($0)] : "" } ?? "" }
        return TokenizerBundle(tokenizer: tokenizer, chatTemplateSource: file.metadata["tokenizer.chat_template"]?.string,
                               bosText: text(tokenizer.bosID), eosText: text(tokenizer.eosID))
    }

    /// tokenizer.json, with BOS/EOS, add_bos_token and the chat template from
    /// tokenizer_config.json and end-of-generation ids from generation_config.json.
    static func folder(_ path: String) throws -> TokenizerBundle {
        func url(_ name: String) -> URL { URL(fileURLWithPath: path).appendingPathComponent(name) }
        guard let data = FileManager.default.contents(atPath: url("tokenizer.json").path) else {
            throw ModelError("\(path): no tokenizer.json")
        }
        func document(_ name: String) throws -> JSONDocument? {
            guard let d = FileManager.default.contents(atPath: url(name).path) else { return nil }
            do { return try JSONDocument.parse(Array(d)) } catch { throw ModelError("\(url(name).path): \(error)") }
        }
        let config = try document("tokenizer_config.json")
        /// Special tokens are written as a string or as {"content": …}.
        func tokenName(_ key: String) -> String? { config?[key]?.string ?? config?[key]?["content"]?.string }
        var endIDs: [Int32] = []
        if let eos = try document("generation_config.json")?["eos_token_id"] {
            endIDs = (eos.array ?? [eos]).compactMap { $0.int.map { Int32($0) } }
        }
        var template = try? String(contentsOf: url("chat_template.jinja"), encoding: .utf8)
        if template == nil, let t = config?["chat_template"] {
            // Either one string or a list of {"name", "template"}; "default" is the chat one.
            template = t.string ?? t.array?.first { $0["name"]?.string == "default" }?["template"]?.string
        }
        do {
            let bos = tokenName("bos_token"), eos = tokenName("eos_token")
            let tokenizer = try HuggingFaceTokenizer(json: data, bosToken: bos, eosToken: eos, extraEndIDs: endIDs,
                                                     addBOS: config?["add_bos_token"]?.bool)
            return TokenizerBundle(tokenizer: tokenizer, chatTemplateSource: template, bosText: bos ?? "", eosText: eos ?? "")
        } catch let e as TokenizerError {
            throw ModelError("\(url("tokenizer.json").path): \(e.description)")
        }
    }
}
