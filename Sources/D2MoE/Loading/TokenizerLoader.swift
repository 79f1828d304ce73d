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
        if isDirectory.boolValue { return try folder(path) }
        if MWQWeights.looksLikeMWQ(path) { return try mwq(try MWQFile(path: path)) }
        return try gguf(try GGUFFile(path: path))
    }

    static func load(_ source: ModelLoader.Source) throws -> TokenizerBundle {
        if let gguf = source.gguf { return try Self.gguf(gguf) }
        if let mwq = source.mwq { return try Self.mwq(mwq) }
        return try folder(source.folder!)
    }

    static func gguf(_ file: GGUFFile) throws -> TokenizerBundle {
        try gguf(metadata: file.metadata, origin: file.path)
    }

    static func gguf(metadata: [String: GGUFValue], origin: String) throws -> TokenizerBundle {
        let tokenizer = try GGUFMetadata.tokenizer(metadata: metadata, origin: origin)
        let tokens = metadata["tokenizer.ggml.tokens"]?.stringArray ?? []
        func text(_ id: Int32?) -> String { id.map { Int($0) < tokens.count ? tokens[Int($0)] : "" } ?? "" }
        return TokenizerBundle(tokenizer: tokenizer, chatTemplateSource: metadata["tokenizer.chat_template"]?.string,
                               bosText: text(tokenizer.bosID), eosText: text(tokenizer.eosID))
    }

    /// The tokenizer an MWQ header carries: GGUF metadata keys or Hugging Face files.
    static func mwq(_ file: MWQFile) throws -> TokenizerBundle {
        let t = file.header.tokenizer
        switch t["kind"] {
        case .string("gguf")?:
            return try gguf(metadata: GGUFMetadata.metadata(fromTokenizerJSON: t["metadata"] ?? .null), origin: file.path)
        case .string("huggingface")?:
            return try folder(file.path) { name in
                if case .string(let text)? = t["files"]?[name] { return Data(text.utf8) }
                return nil
            }
        default:
            throw ModelError("\(file.path): the header has no tokenizer of a known kind")
        }
    }

    /// The tokenizer files of a Hugging Face folder as text, for embedding in an MWQ header.
    static func folderFilesJSON(_ path: String) -> JSONValue {
        var files: [String: JSONValue] = [:]
        for name in ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"] {
            if let text = try? String(contentsOfFile: (path as NSString).appendingPathComponent(name), encoding: .utf8) {
                files[name] = .string(text)
            }
        }
        return .object(["kind": .string("huggingface"), "files": .object(files)])
    }

    /// tokenizer.json, with BOS/EOS, add_bos_token and the chat template from
    /// tokenizer_config.json and end-of-generation ids from generation_config.json.
    static func folder(_ path: String) throws -> TokenizerBundle {
        try folder(path) { FileManager.default.contents(atPath: URL(fileURLWithPath: path).appendingPathComponent($0).path) }
    }

    static func folder(_ path: String, read: (String) -> Data?) throws -> TokenizerBundle {
        func url(_ name: String) -> URL { URL(fileURLWithPath: path).appendingPathComponent(name) }
        guard let data = read("tokenizer.json") else {
            throw ModelError("\(path): no tokenizer.json")
        }
        func document(_ name: String) throws -> JSONDocument? {
            guard let d = read(name) else { return nil }
            do { return try JSONDocument.parse(Array(d)) } catch { throw ModelError("\(url(name).path): \(error)") }
        }
        let config = try document("tokenizer_config.json")
        /// Special tokens are written as a string or as {"content": …}.
        func tokenName(_ key: String) -> String? { config?[key]?.string ?? config?[key]?["content"]?.string }
        var endIDs: [Int32] = []
        if let eos = try document("generation_config.json")?["eos_token_id"] {
            endIDs = (eos.array ?? [eos]).compactMap { $0.int.map { Int32($0) } }
        }
        var template = read("chat_template.jinja").map { String(decoding: $0, as: UTF8.self) }
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
