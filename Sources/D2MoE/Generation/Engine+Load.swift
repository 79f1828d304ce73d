import Foundation

extension Engine {
    /// Loads a model and its tokenizer. GGUF files carry their tokenizer; folders need one too.
    public static func load(path: String, options: LoadOptions = .init()) throws -> Engine {
        let opened = try ModelLoader.open(path: path, options: options)
        guard let gguf = opened.gguf else {
            throw ModelError("\(path): this folder has no tokenizer the engine can read yet (GGUF files carry theirs)")
        }
        let tokenizer = try ModelLoader.tokenizer(gguf)
        let context = options.contextLength ?? min(opened.model.info.contextLength, 4096)
        return Engine(model: opened.model, tokenizer: tokenizer, contextLength: context, source: path)
    }
}

extension Engine {
    /// The tokenizer of a GGUF file alone, without loading its weights.
    public static func loadTokenizer(path: String) throws -> any Tokenizer {
        try ModelLoader.tokenizer(path: path)
    }
}
