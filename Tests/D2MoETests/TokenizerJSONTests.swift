import Foundation
import Testing
import D2MoE
import D2MoEFormats

/// tokenizer.json pipelines of real model families (SmolLM2, Qwen2, Llama 3, OLMoE, Gemma,
/// Mistral, Metaspace-style Llama) filled with our GGUF vocabularies, against Hugging Face's
/// `tokenizers` on the same files (scripts/reference/hf_tokenizer_golden.py).
@Suite(.serialized, .enabled(if: TestPaths.exists(TestPaths.smolLM2) && TestPaths.exists(TestPaths.gemma3),
                             "SKIP: real GGUF files absent from models/; run scripts/setup"))
struct TokenizerJSONTests {
    static let directory = TestPaths.fixtures.appendingPathComponent("hf-tokenizers")

    /// tokenizer.json for a pipeline skeleton, built exactly as the golden script builds it.
    static func tokenizerJSON(_ name: String) throws -> Data {
        let fixture = try TestPaths.json(directory.appendingPathComponent("\(name).json"))
        var root = fixture["tokenizer"] as! [String: Any]
        let source = fixture["vocabulary"] as! String == "smollm2" ? TestPaths.smolLM2 : TestPaths.gemma3
        let file = try GGUFFile(path: source)
        let tokens = file.metadata["tokenizer.ggml.tokens"]!.stringArray!
        let types = file.metadata["tokenizer.ggml.token_type"]!.intArray!
        let merges: [[String]]
        if let list = file.metadata["tokenizer.ggml.merges"]?.stringArray {
            merges = list.map { line in
                let i = line.index(after: line.startIndex)
                let space = line[i...].firstIndex(of: " ")!
                return [String(line[..<space]), String(line[line.index(after: space)...])]
            }
        } else {
            merges = scoredMerges(tokens: tokens, types: types, scores: file.metadata["tokenizer.ggml.scores"]!.floatArray!)
        }
        let byteFallback = root.removeValue(forKey: "byte_fallback") as? Bool ?? false
        let ignoreMerges = root.removeValue(forKey: "ignore_merges") as? Bool ?? false
        // Written by hand: a Swift dictionary would merge canonically equivalent vocabulary keys.
        var text = String(decoding: try JSONSerialization.data(withJSONObject: root), as: UTF8.self)
        text.removeLast()
        var seen = Set<[UInt8]>()
        let vocab = tokens.enumerated().filter { seen.insert(Array($0.element.utf8)).inserted }
            .map { "\(quote($0.element)):\($0.offset)" }.joined(separator: ",")
        let added = tokens.indices.filter { types[$0] == 3 || types[$0] == 4 }
            .map { "{\"id\":\($0),\"content\":\(quote(tokens[$0])),\"special\":\(types[$0] == 3),\"normalized\":false}" }
            .joined(separator: ",")
        let mergeText = merges.map { "[\(quote($0[0])),\(quote($0[1]))]" }.joined(separator: ",")
        text += (root.isEmpty ? "" : ",") + "\"added_tokens\":[\(added)],\"model\":{\"type\":\"BPE\",\"byte_fallback\":\(byteFallback),"
            + "\"ignore_merges\":\(ignoreMerges),\"vocab\":{\(vocab)},\"merges\":[\(mergeText)]}}"
        return Data(text.utf8)
    }

    static func quote(_ s: String) -> String {
        var out = "\""
        for c in s.unicodeScalars {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            default:
                if c.value < 0x20 { out += "\\u" + String(repeating: "0", count: 4 - String(c.value, radix: 16).count) + String(c.value, radix: 16) } else { out.unicodeScalars.append(c) }
            }
        }
        return out + "\""
    }

    /// Every split of a normal token into two normal tokens, best merged score first (ties: lower
    /// merged id, then shorter left part) — the golden script's order.
    static func scoredMerges(tokens: [String], types: [Int64], scores: [Double]) -> [[String]] {
        var normal: [[UInt8]: Int] = [:]
        for (i, t) in tokens.enumerated() where types[i] == 1 { normal[Array(t.utf8)] = i }  // last wins, as in the script's dict
        var found: [(score: Double, id: Int, k: Int, a: String, b: String)] = []
        for (i, t) in tokens.enumerated() where types[i] == 1 && normal[Array(t.utf8)] == i {
            let scalars = Array(t.unicodeScalars)
            for k in 1..<max(1, scalars.count) {
                let a = String(String.UnicodeScalarView(scalars[..<k])), b = String(String.UnicodeScalarView(scalars[k...]))
                if normal[Array(a.utf8)] != nil && normal[Array(b.utf8)] != nil { found.append((-scores[i], i, k, a, b)) }
            }
        }
        found.sort { ($0.score, $0.id, $0.k) < ($1.score, $1.id, $1.k) }
        return found.map { [$0.a, $0.b] }
    }

    @Test(arguments: ["smollm2", "qwen2", "llama3", "olmoe", "gemma3", "mistral", "llama-metaspace"])
    func pipelineMatchesHuggingFaceTokenizers(_ name: String) throws {
        let tokenizer = try HuggingFaceTokenizer(json: try Self.tokenizerJSON(name))
        let golden = try TestPaths.json(Self.directory.appendingPathComponent("golden.json"))
        let cases = golden["cases"] as! [[String: Any]]
        #expect(cases.count >= 300)
        var mismatches = 0
        for c in cases {
            let text = c["text"] as! String
            let expected = (c[name] as! [Int]).map(Int32.init)
            let ids = tokenizer.encode(text, addSpecial: true, parseSpecial: true)
            if ids != expected {
                mismatches += 1
                if mismatches <= 10 { Issue.record("\(name) \(text.debugDescription): \(ids) vs tokenizers \(expected)") }
            }
            let decoded = tokenizer.decode(expected)
            if decoded != c["\(name)-decoded"] as! String, mismatches <= 10 {
                mismatches += 1
                Issue.record("\(name) decode \(text.debugDescription): \(decoded.debugDescription) vs \((c["\(name)-decoded"] as! String).debugDescription)")
            }
        }
        #expect(mismatches == 0)
        print("\(name): \(cases.count - mismatches)/\(cases.count) strings identical to Hugging Face tokenizers")
    }

    /// A Hugging Face folder: tokenizer.json + tokenizer_config.json (EOS, chat template) +
    /// generation_config.json (extra end ids), loaded the way `Engine.load` loads folders.
    @Test func folderTokenizerCarriesTemplateAndEndTokens() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("d2moe-tok-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try Self.tokenizerJSON("smollm2").write(to: dir.appendingPathComponent("tokenizer.json"))
        let gguf = try Engine.loadTokenizerBundle(path: TestPaths.smolLM2)
        let config: [String: Any] = ["eos_token": ["content": "<|im_end|>"], "bos_token": "<|im_start|>",
                                     "chat_template": gguf.chatTemplateSource!]
        try JSONSerialization.data(withJSONObject: config).write(to: dir.appendingPathComponent("tokenizer_config.json"))
        try Data(#"{"eos_token_id": [2, 0]}"#.utf8).write(to: dir.appendingPathComponent("generation_config.json"))
        let folder = try Engine.loadTokenizerBundle(path: dir.path)
        #expect(folder.tokenizer.eosID == 2)
        #expect(folder.tokenizer.eotIDs == [0, 2])
        #expect(folder.eosText == "<|im_end|>")
        let messages = [ChatMessage(role: "system", content: "Be brief."), ChatMessage(role: "user", content: "Hi 👋 there")]
        let a = try folder.chatTemplate().render(messages: messages, bosToken: folder.bosText, eosToken: folder.eosText)
        let b = try gguf.chatTemplate().render(messages: messages, bosToken: gguf.bosText, eosToken: gguf.eosText)
        #expect(a == b)
        #expect(folder.tokenizer.encode(a, addSpecial: false, parseSpecial: true) == gguf.tokenizer.encode(b, addSpecial: false, parseSpecial: true))
        // The CLI reads folders too.
        let viaFolder = try runCLI(["tokenize", "--model", dir.path, "--text", "Hello 123 world", "--json"])
        let viaGGUF = try runCLI(["tokenize", "--model", TestPaths.smolLM2, "--text", "Hello 123 world", "--json"])
        #expect(viaFolder.status == 0 && viaFolder.stdout == viaGGUF.stdout)
    }

    /// `--chat` renders the model's template: the prompt tokens equal the tokens of Jinja2's
    /// rendering of the same conversation (scripts/reference/chat_template_golden.py).
    @Test func chatPromptTokensFollowJinja2Rendering() throws {
        let goldenURL = TestPaths.packageRoot.appendingPathComponent("Tests/D2MoETokenizersTests/Fixtures/chat-templates/golden.json")
        let cases = try JSONSerialization.jsonObject(with: Data(contentsOf: goldenURL)) as! [[String: Any]]
        let engine = try Engine.load(path: TestPaths.smolLM2, options: LoadOptions(contextLength: 256))
        var checked = 0
        for c in cases where c["template"] as? String == "smollm2.jinja" && c["output"] != nil {
            let variables = c["variables"] as! [String: Any]
            guard variables["add_generation_prompt"] as? Bool == true, variables.count == 4 else { continue }
            let messages = (variables["messages"] as! [[String: String]]).map { ChatMessage(role: $0["role"]!, content: $0["content"]!) }
            let expected = engine.tokenizer.encode(c["output"] as! String, addSpecial: false, parseSpecial: true)
            #expect(try engine.chatTokens(messages) == expected)
            checked += 1
        }
        #expect(checked >= 3)
    }

    @Test func chatWithoutATemplateIsAClearError() throws {
        let r = try runCLI(["run", "--model", TestPaths.gemma3, "--chat", "--prompt", "hi", "--max-tokens", "2"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("no chat template"))
    }
}
