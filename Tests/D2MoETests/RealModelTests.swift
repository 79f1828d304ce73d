import Foundation
import Testing
import D2MoE

/// The real SmolLM2-135M file (fetched by scripts/setup) against independent references:
/// a NumPy forward pass over the `gguf` package's dequantized tensors, and llama.cpp's
/// perplexity tool on the same weights (scripts/reference/).
@Suite(.serialized, .enabled(if: TestPaths.exists(TestPaths.smolLM2), "SKIP: models/SmolLM2-135M-Instruct.Q4_1.gguf absent; run scripts/setup"))
struct SmolLM2Tests {
    static let engine: Engine? = try? Engine.load(path: TestPaths.smolLM2, options: LoadOptions(contextLength: 512))

    func engine() throws -> Engine { try #require(Self.engine) }

    func greedy(_ prompt: String, maxTokens: Int) async throws -> String {
        var parameters = GenerationParameters()
        parameters.sampling = .greedy
        parameters.maxTokens = maxTokens
        var text = ""
        for await event in try engine().generate(prompt: prompt, parameters: parameters) {
            if case .text(let piece, _) = event { text += piece }
            if case .failed(let message) = event { Issue.record("generation failed: \(message)") }
        }
        return text
    }

    @Test func greedyContinuationOfTheCapitalOfFranceIsParis() async throws {
        let text = try await greedy("The capital of France is", maxTokens: 8)
        #expect(text.contains("Paris"), "continuation was \(text.debugDescription)")
    }

    @Test func logitsAgreeWithTheNumPyReference() throws {
        let reference = try TestPaths.json(TestPaths.fixtures.appendingPathComponent("smollm2-reference.json"))
        let ids = (reference["input_ids"] as! [Int]).map(Int32.init)
        let argmax = reference["argmax"] as! [Int]
        let nll = (reference["nll"] as! [Any]).map { ($0 as! NSNumber).doubleValue }
        let model = try engine().model
        let cache = model.makeCache(capacity: ids.count)
        let batch = ids.enumerated().map { BatchToken(sequence: 0, position: $0.offset, token: $0.element, wantsLogits: true) }
        let logits = try model.forward(batch, caches: [cache])
        var agree = 0
        var worstNLL = 0.0
        for p in 0..<argmax.count {
            let row = logits[p]
            let mine = row.indices.max { row[$0] < row[$1] }!
            if mine == argmax[p] { agree += 1 }
            if p + 1 < ids.count {
                let m = row.max()!
                let lse = log(row.reduce(0.0) { $0 + exp(Double($1 - m)) }) + Double(m)
                worstNLL = max(worstNLL, abs((lse - Double(row[Int(ids[p + 1])])) - nll[p]))
            }
        }
        let agreement = Double(agree) / Double(argmax.count)
        print("SmolLM2 vs NumPy reference: argmax agreement \(agree)/\(argmax.count), largest next-token NLL difference \(worstNLL)")
        #expect(argmax.count >= 256)
        #expect(agreement >= 0.99, "argmax agreement \(agreement)")
        #expect(worstNLL < 2e-3, "largest next-token log-likelihood difference \(worstNLL)")
    }

    @Test func perplexityIsWithinHalfAPercentOfLlamaCpp() throws {
        let reference = try TestPaths.json(TestPaths.fixtures.appendingPathComponent("llamacpp-reference.json"))
        let quick = reference["perplexity_chunks"] as! [String: Any]
        let chunks = quick["chunks"] as! Int
        let expected = (quick["perplexity"] as! NSNumber).doubleValue
        try #require(TestPaths.exists(TestPaths.wikitext), "data/wikitext-2-raw/wiki.test.raw absent; run scripts/setup")
        let text = try String(contentsOfFile: TestPaths.wikitext, encoding: .utf8)
        let result = try Perplexity.evaluate(engine: engine(), text: text, context: 512, maxChunks: chunks)
        print("SmolLM2 WikiText-2 perplexity over \(chunks) windows: d2moe \(result.perplexity), llama.cpp \(expected)")
        #expect(result.chunks == chunks)
        #expect(abs(result.perplexity / expected - 1) < 0.005, "d2moe \(result.perplexity) vs llama.cpp \(expected)")
    }

    @Test func moefiedModelWithEveryExpertActiveEqualsTheDenseModel() throws {
        let calib = TestPaths.dataDirectory.appendingPathComponent("calib/c4.utf8").path
        try #require(TestPaths.exists(calib), "data/calib/c4.utf8 absent; run scripts/setup")
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("moe-\(UUID().uuidString).gguf").path
        defer { try? FileManager.default.removeItem(atPath: out) }
        var options = MoEfier.Options()
        options.experts = 4
        options.topK = 4
        options.calibrationTokens = 1024
        options.iterations = 5
        let report = try MoEfier.moefy(source: TestPaths.smolLM2, calibrationText: try String(contentsOfFile: calib, encoding: .utf8),
                                       output: out, options: options)
        #expect(report.expertIntermediate == 384)
        let moe = try ModelLoader.loadModel(path: out)
        #expect(moe.info.expertCount == 4 && moe.info.moeLayerCount == 30)
        let dense = try engine().model
        let ids = try engine().tokenizer.encode("The tower is 324 metres tall, about the same height as an 81-storey building.",
                                                addSpecial: true, parseSpecial: false)
        let batch = ids.enumerated().map { BatchToken(sequence: 0, position: $0.offset, token: $0.element, wantsLogits: true) }
        let a = try dense.forward(batch, caches: [dense.makeCache(capacity: 64)])
        let b = try moe.forward(batch, caches: [moe.makeCache(capacity: 64)])
        let worst = zip(a, b).map { relativeError($1, $0) }.max()!
        #expect(worst < 1e-4, "MoE vs dense logits: relative error \(worst)")
        // With fewer experts than exist, the output must actually change.
        let sparse = try ModelLoader.loadModel(path: out, options: LoadOptions(expertsPerToken: 2))
        let c = try sparse.forward(batch, caches: [sparse.makeCache(capacity: 64)])
        #expect(zip(a, c).map { relativeError($1, $0) }.max()! > 1e-2)
    }

    @Test func wikiTextTokenizesExactlyAsLlamaCpp() throws {
        try #require(TestPaths.exists(TestPaths.wikitext), "data/wikitext-2-raw/wiki.test.raw absent; run scripts/setup")
        let reference = try TestPaths.json(TestPaths.fixtures.appendingPathComponent("smollm2-wikitext-ids.json"))
        let text = try String(contentsOfFile: TestPaths.wikitext, encoding: .utf8)
        let ids = try engine().tokenizer.encode(text, addSpecial: true, parseSpecial: false)
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for id in ids {
            withUnsafeBytes(of: id.littleEndian) { for b in $0 { hash = (hash ^ UInt64(b)) &* 0x100_0000_01b3 } }
        }
        #expect(Array(ids.prefix(1000)) == (reference["first"] as! [Int]).map(Int32.init))
        #expect(ids.count == reference["count"] as! Int)
        #expect(String(hash, radix: 16).leftPadded(16) == reference["fnv1a64_int32le"] as! String)
        #expect(try engine().tokenizer.decode(ids) == text)
    }

    @Test func promptLongerThanTheContextIsRejected() throws {
        let long = String(repeating: "word ", count: 600)
        #expect(throws: GenerationError.self) { _ = try engine().generate(prompt: long) }
    }
}

/// The command line: exit codes and messages on good and bad input.
@Suite(.serialized) struct CommandLineTests {
    @Test(.enabled(if: TestPaths.exists(TestPaths.smolLM2), "SKIP: SmolLM2 absent; run scripts/setup"))
    func runStreamsParis() throws {
        let r = try runCLI(["run", "--model", TestPaths.smolLM2, "--prompt", "The capital of France is",
                            "--temperature", "0", "--max-tokens", "8", "--stats"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout.contains("Paris"))
        #expect(r.stderr.contains("tokens/s"))
    }

    @Test func missingModelFileFailsWithAMessage() throws {
        let r = try runCLI(["run", "--model", "/nonexistent/model.gguf", "--prompt", "hi"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("/nonexistent/model.gguf"))
    }

    @Test(.enabled(if: TestPaths.exists(TestPaths.smolLM2), "SKIP: SmolLM2 absent; run scripts/setup"))
    func truncatedGGUFFailsWithAMessage() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: TestPaths.smolLM2)).prefix(3_000_000)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("truncated-\(UUID().uuidString).gguf")
        try data.write(to: path)
        defer { try? FileManager.default.removeItem(at: path) }
        for command in [["run", "--model", path.path, "--prompt", "hi"], ["inspect", "--model", path.path]] {
            let r = try runCLI(command)
            #expect(r.status != 0)
            #expect(r.stderr.contains(path.lastPathComponent), "stderr: \(r.stderr)")
        }
    }

    @Test(.enabled(if: TestPaths.exists(TestPaths.smolLM2), "SKIP: SmolLM2 absent; run scripts/setup"))
    func promptLongerThanTheContextFailsWithAMessage() throws {
        let r = try runCLI(["run", "--model", TestPaths.smolLM2, "--ctx", "16", "--prompt", String(repeating: "word ", count: 40)])
        #expect(r.status != 0)
        #expect(r.stderr.contains("longer than the context"))
    }
}

extension String {
    func leftPadded(_ n: Int) -> String { String(repeating: "0", count: max(0, n - count)) + self }
}

/// The real Gemma-3-270M file (Q4_K_M: Q4_K, Q5_0, Q6_K, Q8_0) against llama.cpp's perplexity
/// tool on the same weights, at a context of 1024 so that its 512-token sliding windows mask.
/// Token ids come from llama-tokenize (the SentencePiece tokenizer is the next issue's).
@Suite(.enabled(if: TestPaths.exists(TestPaths.gemma3), "SKIP: models/gemma-3-270m-q4_k_m.gguf absent; run scripts/setup"))
struct Gemma3Tests {
    @Test func perplexityMatchesLlamaCppWindowByWindow() throws {
        let reference = try TestPaths.json(TestPaths.fixtures.appendingPathComponent("gemma3-llamacpp-reference.json"))
        let ids = (reference["ids"] as! [Int]).map(Int32.init)
        let expected = (reference["running_perplexity"] as! [Any]).map { ($0 as! NSNumber).doubleValue }
        let model = try ModelLoader.loadModel(path: TestPaths.gemma3)
        #expect(model.info.modelType == "gemma3_text")
        let result = try Perplexity.evaluate(model: model, tokens: ids, bos: Int32(reference["bos"] as! Int),
                                             context: reference["context"] as! Int)
        print("Gemma 3 perplexity by window: d2moe \(result.runningPerplexity), llama.cpp \(expected.prefix(result.chunks))")
        #expect(result.chunks == 3)
        for (mine, theirs) in zip(result.runningPerplexity, expected) {
            // llama.cpp prints four decimals.
            #expect(abs(mine / theirs - 1) < 5e-4, "d2moe \(mine) vs llama.cpp \(theirs)")
        }
    }
}
