import Foundation

extension Engine {
    /// Loads a model and its tokenizer: a GGUF file carries both; a Hugging Face folder needs
    /// tokenizer.json beside config.json and the safetensors.
    public static func load(path: String, options: LoadOptions = .init()) throws -> Engine {
        let opened = try ModelLoader.open(path: path, options: options)
        let bundle = try TokenizerLoader.load(opened.source)
        let context = options.contextLength ?? min(opened.model.info.contextLength, 4096)
        return Engine(model: opened.model, tokenizer: bundle.tokenizer, contextLength: context, source: path, tokenizerBundle: bundle)
    }

    /// The tokenizer of a GGUF file or Hugging Face folder alone, without loading weights.
    public static func loadTokenizer(path: String) throws -> any Tokenizer {
        try TokenizerLoader.load(path: path).tokenizer
    }

    /// The tokenizer with its chat template and BOS/EOS text.
    public static func loadTokenizerBundle(path: String) throws -> TokenizerBundle {
        try TokenizerLoader.load(path: path)
    }
}
