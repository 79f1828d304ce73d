import Foundation
import D2MoETokenizers

/// The result of `Perplexity.evaluate`.
public struct PerplexityResult: Sendable, Codable {
    public var perplexity: Double
    /// Tokens scored.
    public var tokens: Int
    public var chunks: Int
    public var seconds: Double
    /// Perplexity after each chunk (llama.cpp prints the same running estimate).
    public var runningPerplexity: [Double]
}

/// Perplexity computed the way llama.cpp's perplexity tool does: the text is tokenized once
/// (BOS added if the model wants it), cut into non-overlapping windows of `context` tokens whose
/// first token is replaced by BOS, and only the second half of each window is scored, so every
/// scored token has at least context/2 tokens before it.
public enum Perplexity {
    /// `scoreBatchSize`: tokens per forward pass in the scored second half of each window (1
    /// scores it the way decoding runs, one token per step; default `batchSize`).
    public static func evaluate(engine: Engine, text: String, context: Int = 512, maxChunks: Int? = nil,
                                batchSize: Int = 512, scoreBatchSize: Int? = nil,
                                progress: ((Int, Int, Double) -> Void)? = nil) throws -> PerplexityResult {
        let tokenizer = engine.tokenizer
        let tokens = tokenizer.encode(text, addSpecial: true, parseSpecial: false)
        return try evaluate(model: engine.model, tokens: tokens, bos: tokenizer.addsBOS ? tokenizer.bosID : nil,
                            context: context, maxChunks: maxChunks, batchSize: batchSize, scoreBatchSize: scoreBatchSize, progress: progress)
    }

    /// The same on an already tokenized text.
    public static func evaluate(model: TransformerModel, tokens: [Int32], bos: Int32?, context: Int, maxChunks: Int? = nil,
                                batchSize: Int = 512, scoreBatchSize: Int? = nil,
                                progress: ((Int, Int, Double) -> Void)? = nil) throws -> PerplexityResult {
        guard context >= 8 else { throw GenerationError.invalidParameter("context must be ≥ 8, got \(context)") }
        let scoreBatch = scoreBatchSize ?? batchSize
        guard batchSize >= 1, scoreBatch >= 1 else { throw GenerationError.invalidParameter("batch sizes must be ≥ 1") }
        let available = tokens.count / context
        guard available >= 1 else {
            throw GenerationError.invalidParameter("the text has \(tokens.count) tokens, fewer than one window of \(context)")
        }
        let chunks = min(available, maxChunks ?? available)
        let vocab = model.info.vocabularySize
        let first = context / 2
        let cache = model.makeCache(capacity: context)
        var logits = [Float](repeating: 0, count: batchSize * vocab)
        var nll = 0.0
        var count = 0
        var running: [Double] = []
        let start = DispatchTime.now()
        for chunk in 0..<chunks {
            cache.clear()
            var window = Array(tokens[(chunk * context)..<((chunk + 1) * context)])
            if let bos { window[0] = bos }
            var position = 0
            while position < context {
                // The unscored first half in big batches, the scored half in `scoreBatch` ones.
                let end = scoreBatchSize == nil ? min(context, position + batchSize)
                    : position < first ? min(first, position + batchSize) : min(context, position + scoreBatch)
                // Logits are needed for positions first ..< context-1 (each predicts the next token).
                let batch = (position..<end).map {
                    BatchToken(sequence: 0, position: $0, token: window[$0], wantsLogits: $0 >= first && $0 < context - 1)
                }
                try logits.withUnsafeMutableBufferPointer { try model.forward(batch, caches: [cache], logits: $0.baseAddress!) }
                var row = 0
                for bt in batch where bt.wantsLogits {
                    nll += logits.withUnsafeBufferPointer { negativeLogLikelihood($0.baseAddress! + row * vocab, vocab, window[bt.position + 1]) }
                    count += 1
                    row += 1
                }
                position = end
            }
            running.append(Foundation.exp(nll / Double(count)))
            progress?(chunk + 1, chunks, running.last!)
        }
        return PerplexityResult(perplexity: Foundation.exp(nll / Double(count)), tokens: count, chunks: chunks,
                                seconds: seconds(since: start), runningPerplexity: running)
    }

    /// −log softmax(logits)[target], accumulated in double.
    static func negativeLogLikelihood(_ logits: UnsafePointer<Float>, _ n: Int, _ target: Int32) -> Double {
        logSumExp(logits, n) - Double(logits[Int(target)])
    }

    /// log Σ exp(logits[i]) over n logits, shifted by their maximum and accumulated in double.
    static func logSumExp(_ logits: UnsafePointer<Float>, _ n: Int) -> Double {
        var maxLogit = -Float.infinity
        for i in 0..<n { maxLogit = max(maxLogit, logits[i]) }
        var sum = 0.0
        for i in 0..<n { sum += Foundation.exp(Double(logits[i] - maxLogit)) }
        return Foundation.log(sum) + Double(maxLogit)
    }
}
