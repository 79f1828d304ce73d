import Foundation
import Testing
import D2MoE
import D2MoEFormats

/// SmolLM2 written as .mwq files and run from them: every FFN is one expert record.
@Suite(.serialized, .enabled(if: TestPaths.exists(TestPaths.smolLM2) && TestPaths.exists(TestPaths.wikitext),
                             "SKIP: SmolLM2 or WikiText-2 absent; run scripts/setup"))
struct MWQModelTests {
    static let directory = FileManager.default.temporaryDirectory.appendingPathComponent("d2moe-mwq-tests")

    /// Converted once per format version.
    static func converted(_ scheme: String) throws -> String {
        let path = directory.appendingPathComponent("smollm2-\(scheme)-format\(MWQFile.version).mwq").path
        if !FileManager.default.fileExists(atPath: path) {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            _ = try MWQConverter.convert(model: TestPaths.smolLM2, to: path, scheme: try MWQConverter.Scheme(scheme))
        }
        return path
    }

    static func perplexity(_ path: String, bits: Int? = nil) throws -> Double {
        let engine = try Engine.load(path: path, options: LoadOptions(contextLength: 512, bits: bits))
        let text = try String(contentsOfFile: TestPaths.wikitext, encoding: .utf8)
        return try Perplexity.evaluate(engine: engine, text: String(text.prefix(40_000)), context: 512, maxChunks: 3).perplexity
    }

    /// 8-bit round-to-nearest experts (resident weights in float16) stay within 1% of the source.
    @Test func eightBitFileMatchesTheSourceModel() throws {
        let reference = try Self.perplexity(TestPaths.smolLM2)
        let mwq = try Self.perplexity(try Self.converted("rtn8"))
        #expect(abs(mwq - reference) / reference < 0.01, "rtn8 \(mwq) vs source \(reference)")
    }

    /// One v1 file serves 4, 3 and 2 bits; fewer bits, higher perplexity.
    @Test func oneFileServesEveryLevel() throws {
        let path = try Self.converted("v1")
        let p4 = try Self.perplexity(path, bits: 4), p3 = try Self.perplexity(path, bits: 3), p2 = try Self.perplexity(path, bits: 2)
        #expect(p4 < p3 && p3 < p2, "4: \(p4), 3: \(p3), 2: \(p2)")
        #expect(p4 < 40, "4-bit perplexity \(p4)")
    }

    @Test func tokenizerAndChatTemplateTravelInTheFile() throws {
        let mwq = try Engine.loadTokenizerBundle(path: try Self.converted("rtn8"))
        let gguf = try Engine.loadTokenizerBundle(path: TestPaths.smolLM2)
        let text = "Hello <|im_start|>world 12345 😀"
        #expect(mwq.tokenizer.encode(text, addSpecial: true, parseSpecial: true) == gguf.tokenizer.encode(text, addSpecial: true, parseSpecial: true))
        #expect(mwq.chatTemplateSource == gguf.chatTemplateSource)
    }

    @Test func bitsOutsideTheFileAndOnOtherFormatsAreClearErrors() throws {
        let wrong = try runCLI(["run", "--model", try Self.converted("v1"), "--bits", "5", "--prompt", "x", "--max-tokens", "1"])
        #expect(wrong.status != 0 && wrong.stderr.contains("--bits 5 is not stored in this file (it holds 2, 3, 4 bits)"))
        let gguf = try runCLI(["run", "--model", TestPaths.smolLM2, "--bits", "4", "--prompt", "x", "--max-tokens", "1"])
        #expect(gguf.status != 0 && gguf.stderr.contains("--bits applies to .mwq files"))
        let scheme = try runCLI(["quantize", "--model", TestPaths.smolLM2, "--out", "/tmp/never.mwq", "--scheme", "v9"])
        #expect(scheme.status != 0 && scheme.stderr.contains("unknown scheme 'v9'"))
        #expect(!FileManager.default.fileExists(atPath: "/tmp/never.mwq"))
    }

    /// The packed kernels give (up to their integer activations) the logits of the same weights
    /// dequantized at load.
    @Test(arguments: [2, 4])
    func packedKernelsMatchDequantizedWeights(bits: Int) throws {
        let path = try Self.converted("v1")
        let packed = try ModelLoader.loadModel(path: path, options: LoadOptions(contextLength: 64, bits: bits))
        var plainOptions = LoadOptions(contextLength: 64, bits: bits)
        plainOptions.dequantizeMWQ = true
        let plain = try ModelLoader.loadModel(path: path, options: plainOptions)
        #expect(packed.weightBytes < plain.weightBytes * 3 / 4, "the FFNs are 60% of the float model and 5 bits of 32 packed")
        let ids: [Int32] = [1, 504, 3575, 282, 4649, 314, 2, 28, 300, 400, 9000, 17, 5, 8, 13, 21]
        func logits(_ m: TransformerModel) throws -> [Float] {
            let batch = ids.enumerated().map { BatchToken(sequence: 0, position: $0.offset, token: $0.element, wantsLogits: true) }
            return try m.forward(batch, caches: [m.makeCache(capacity: 64)]).flatMap { $0 }
        }
        let a = try logits(packed), b = try logits(plain)
        // The kernels round activations to 9-10 bits per group (MWQPreparedInput.range): measured
        // 1.1% (4 bits) and 3.6% (2 bits) of the largest logit, perplexity within 0.1%.
        #expect(relativeError(a, b) < (bits == 4 ? 0.02 : 0.05), "packed vs dequantized: \(relativeError(a, b))")
        let vocab = a.count / ids.count
        let agree = (0..<ids.count).filter { t in
            let pa = a[(t * vocab)..<((t + 1) * vocab)], pb = b[(t * vocab)..<((t + 1) * vocab)]
            return pa.firstIndex(of: pa.max()!)! - t * vocab == pb.firstIndex(of: pb.max()!)! - t * vocab
        }.count
        #expect(agree >= ids.count - 1, "next-token argmax agrees at \(agree) of \(ids.count) positions")
    }

    /// `--resident q4`: attention projections packed at 4 bits in groups of 32 and computed in
    /// place, the embeddings in Q8_0. From this Q4_1 source (already on a 4-bit grid per 32) the
    /// perplexity stays that of the float16-resident file, and the packed and dequantized paths agree.
    @Test func fourBitResidentProjections() throws {
        let path = Self.directory.appendingPathComponent("smollm2-v1-q4-format\(MWQFile.version).mwq").path
        if !FileManager.default.fileExists(atPath: path) {
            _ = try MWQConverter.convert(model: TestPaths.smolLM2, to: path, scheme: try MWQConverter.Scheme("v1"), resident: "q4")
        }
        let file = try MWQFile(path: path)
        #expect(file.residentTensor("model.layers.3.self_attn.k_proj.weight")?.dtype == "mwq4")
        #expect(file.residentTensor("model.embed_tokens.weight")?.dtype == "q8_0")
        let q4 = try Self.perplexity(path, bits: 4), f16 = try Self.perplexity(try Self.converted("v1"), bits: 4)
        #expect(abs(q4 - f16) / f16 < 0.02, "q4-resident \(q4) vs f16-resident \(f16)")
        let packed = try ModelLoader.loadModel(path: path, options: LoadOptions(contextLength: 64, bits: 4))
        var plainOptions = LoadOptions(contextLength: 64, bits: 4)
        plainOptions.dequantizeMWQ = true
        let plain = try ModelLoader.loadModel(path: path, options: plainOptions)
        // Attention reads 884,736 weights a layer at 5 bits instead of float32 (the f16 file loaded
        // as float32); nothing else changes.
        let wide = try ModelLoader.loadModel(path: try Self.converted("v1"), options: LoadOptions(contextLength: 64, bits: 4))
        #expect(wide.decodeBytesPerToken - packed.decodeBytesPerToken == 30 * 884_736 * 27 / 8)
        let ids: [Int32] = [1, 504, 3575, 282, 4649, 314, 2, 28]
        let batch = ids.enumerated().map { BatchToken(sequence: 0, position: $0.offset, token: $0.element, wantsLogits: true) }
        let a = try packed.forward(batch, caches: [packed.makeCache(capacity: 64)]).flatMap { $0 }
        let b = try plain.forward(batch, caches: [plain.makeCache(capacity: 64)]).flatMap { $0 }
        #expect(relativeError(a, b) < 0.03, "packed vs dequantized: \(relativeError(a, b))")
    }

    /// Gemma 3 from its GGUF file through an rtn8 container: the logits of the source model. (Its
    /// GGUF norms carry llama.cpp's + 1; once it was applied twice and perplexity was 2·10⁹.)
    @Test(.enabled(if: TestPaths.exists(TestPaths.gemma3), "SKIP: Gemma 3 absent; run scripts/setup"))
    func gemmaContainerKeepsTheSourceLogits() throws {
        let path = Self.directory.appendingPathComponent("gemma3-rtn8-format\(MWQFile.version).mwq").path
        if !FileManager.default.fileExists(atPath: path) {
            try FileManager.default.createDirectory(at: Self.directory, withIntermediateDirectories: true)
            _ = try MWQConverter.convert(model: TestPaths.gemma3, to: path, scheme: try MWQConverter.Scheme("rtn8"))
        }
        let ids: [Int32] = [2, 818, 5279, 529, 7001, 563, 9079, 236761, 669, 2134, 237, 1401]
        func logits(_ p: String) throws -> [Float] {
            let m = try ModelLoader.loadModel(path: p, options: LoadOptions(contextLength: 64))
            let batch = ids.enumerated().map { BatchToken(sequence: 0, position: $0.offset, token: $0.element, wantsLogits: true) }
            return try m.forward(batch, caches: [m.makeCache(capacity: 64)]).flatMap { $0 }
        }
        let source = try logits(TestPaths.gemma3), mwq = try logits(path)
        #expect(relativeError(mwq, source) < 0.05, "rtn8 container vs GGUF: \(relativeError(mwq, source))")
    }
}
