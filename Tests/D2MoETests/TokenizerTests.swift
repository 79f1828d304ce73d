import Foundation
import Testing
import D2MoE

/// Both real tokenizers (byte-level BPE for SmolLM2, SentencePiece BPE for Gemma 3) against
/// llama.cpp's llama-tokenize (scripts/reference/tokenizer_golden.py).
@Suite(.serialized, .enabled(if: TestPaths.exists(TestPaths.smolLM2) && TestPaths.exists(TestPaths.gemma3),
                             "SKIP: real GGUF files absent from models/; run scripts/setup"))
struct TokenizerTests {
    static let models = ["smollm2": TestPaths.smolLM2, "gemma3": TestPaths.gemma3]

    @Test(arguments: ["smollm2", "gemma3"])
    func goldenStringsMatchLlamaCpp(_ key: String) throws {
        let tokenizer = try Engine.loadTokenizer(path: Self.models[key]!)
        let golden = try TestPaths.json(TestPaths.fixtures.appendingPathComponent("tokenizer-golden.json"))
        let cases = golden["cases"] as! [[String: Any]]
        #expect(cases.count >= 300)
        var mismatches = 0
        for c in cases {
            let text = c["text"] as! String
            let expected = (c[key] as! [Int]).map(Int32.init)
            let ids = tokenizer.encode(text, addSpecial: true, parseSpecial: true)
            if ids != expected {
                mismatches += 1
                Issue.record("\(key) \(text.debugDescription): \(ids) vs llama.cpp \(expected)")
            }
        }
        print("\(key): \(cases.count - mismatches)/\(cases.count) golden strings identical to llama-tokenize")
    }

    @Test(arguments: ["smollm2", "gemma3"])
    func decodeInvertsEncodeAndStreamingNeverSplitsACharacter(_ key: String) throws {
        let tokenizer = try Engine.loadTokenizer(path: Self.models[key]!)
        for text in ["café naïve 😀 👨‍👩‍👧‍👦 日本語 हिन्दी मे्", "a\u{0301} tabs\tand  spaces\n", "🏳️‍🌈🏳️‍🌈"] {
            let ids = tokenizer.encode(text, addSpecial: false, parseSpecial: false)
            #expect(tokenizer.decode(ids) == text)
            var decoder = StreamingDecoder(tokenizer: tokenizer)
            var streamed = ""
            for id in ids {
                let piece = decoder.append(id)
                #expect(!piece.unicodeScalars.contains("\u{FFFD}"), "half a character emitted")
                streamed += piece
            }
            streamed += decoder.flush()
            #expect(streamed == text)
        }
    }

    @Test func gemmaWikiTextTokenizesExactlyAsLlamaCpp() throws {
        try #require(TestPaths.exists(TestPaths.wikitext), "data/wikitext-2-raw/wiki.test.raw absent; run scripts/setup")
        let reference = try TestPaths.json(TestPaths.fixtures.appendingPathComponent("gemma3-llamacpp-reference.json"))
        let tokenizer = try Engine.loadTokenizer(path: TestPaths.gemma3)
        let ids = tokenizer.encode(try String(contentsOfFile: TestPaths.wikitext, encoding: .utf8), addSpecial: true, parseSpecial: true)
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for id in ids { withUnsafeBytes(of: id.littleEndian) { for b in $0 { hash = (hash ^ UInt64(b)) &* 0x100_0000_01b3 } } }
        #expect(ids.count == reference["wikitext_count"] as! Int)
        #expect(String(hash, radix: 16).leftPadded(16) == reference["wikitext_fnv1a64_int32le"] as! String)
        #expect(Array(ids.prefix(3072)) == (reference["ids"] as! [Int]).map(Int32.init))
    }

    @Test func malformedTokenizerDataIsNamed() {
        #expect { try ByteLevelBPETokenizer(tokens: ["a", "b"], merges: [], tokenTypes: nil, preTokenizer: "gpt2",
                                            bosID: nil, eosID: nil, addBOS: false, addEOS: false) } throws: {
            String(describing: $0).contains("needs merges")
        }
        #expect { try ByteLevelBPETokenizer(tokens: ["a", "b"], merges: ["a b"], tokenTypes: nil, preTokenizer: "gpt2",
                                            bosID: 7, eosID: nil, addBOS: true, addEOS: false) } throws: {
            String(describing: $0).contains("BOS id 7 is outside the vocabulary")
        }
        #expect { try ByteLevelBPETokenizer(tokens: ["a", "b"], merges: ["a b"], tokenTypes: nil, preTokenizer: "klingon",
                                            bosID: nil, eosID: nil, addBOS: false, addEOS: false) } throws: {
            String(describing: $0).contains("pre-tokenizer 'klingon'")
        }
        #expect { try SentencePieceTokenizer(tokens: ["a", "b"], scores: [0], tokenTypes: nil, bosID: nil, eosID: nil,
                                             addBOS: false, addEOS: false, addSpacePrefix: false) } throws: {
            String(describing: $0).contains("1 scores for 2 tokens")
        }
    }
}
