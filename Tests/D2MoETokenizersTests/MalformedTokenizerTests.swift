import Foundation
import Testing
import D2MoETokenizers

/// Malformed tokenizer data gives an error that names the problem, never a crash.
struct MalformedTokenizerTests {
    static let vocab = #"{"a": 0, "b": 1, "ab": 2, "<s>": 3}"#

    static func json(model: String, extra: String = "") -> Data {
        Data(#"{"added_tokens": [{"id": 3, "content": "<s>", "special": true}], \#(extra) "model": \#(model)}"#.utf8)
    }

    @Test func aWellFormedMiniatureWorks() throws {
        let t = try HuggingFaceTokenizer(json: Self.json(model: #"{"type": "BPE", "vocab": \#(Self.vocab), "merges": ["a b"]}"#))
        #expect(t.encode("abab<s>", addSpecial: false, parseSpecial: true) == [2, 2, 3])
        #expect(t.encode("<s>", addSpecial: false, parseSpecial: false) == [])  // no pieces cover '<', 's', '>'
        #expect(t.decode([2, 1]) == "abb")
    }

    @Test(arguments: [
        (#"{"type": "BPE", "vocab": {"a": 0}}"#, "no model.merges"),
        (#"{"type": "BPE", "vocab": \#(vocab), "merges": ["a c"]}"#, "missing from the vocabulary"),
        (#"{"type": "BPE", "vocab": \#(vocab), "merges": ["b b"]}"#, "makes a token missing"),
        (#"{"type": "BPE", "vocab": \#(vocab), "merges": ["ab"]}"#, "not two tokens"),
        (#"{"type": "BPE", "vocab": \#(vocab), "merges": [[1, 2]]}"#, "neither"),
        (#"{"type": "BPE", "vocab": {"a": -4}, "merges": []}"#, "no valid id"),
        (#"{"type": "WordPiece", "vocab": \#(vocab)}"#, "not supported"),
        (#"{"type": "BPE", "vocab": {}, "merges": []}"#, "no model.vocab"),
        (#"{"type": "BPE", "vocab": \#(vocab), "merges": [], "byte_fallback": true}"#, "no <0x00>"),
    ])
    func badModelsAreRejected(_ model: String, _ expected: String) {
        #expect { try HuggingFaceTokenizer(json: Self.json(model: model)) } throws: { error in
            "\(error)".contains(expected)
        }
    }

    @Test(arguments: [
        (#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []"#, "unterminated"),
        (#"[1, 2]"#, "not a JSON object"),
        ("", "unexpected end"),
        (#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Whitespace"}}"#, "pre-tokenizer 'Whitespace'"),
        (#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "normalizer": {"type": "BertNormalizer"}}"#, "normalizer 'BertNormalizer'"),
        (#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(unclosed"}}}"#, "does not compile"),
    ])
    func badFilesAreRejected(_ text: String, _ expected: String) {
        #expect { try HuggingFaceTokenizer(json: Data(text.utf8)) } throws: { error in "\(error)".contains(expected) }
    }

    @Test func unknownSpecialTokenNamesAreRejected() {
        #expect { try HuggingFaceTokenizer(json: Self.json(model: #"{"type": "BPE", "vocab": \#(Self.vocab), "merges": []}"#), bosToken: "<bos>") }
            throws: { "\($0)".contains("'<bos>' is not in the vocabulary") }
    }

    @Test func ggufStyleVocabulariesAreValidated() {
        #expect { try ByteLevelBPETokenizer(tokens: ["a"], merges: [], tokenTypes: nil, preTokenizer: "gpt2", bosID: nil, eosID: nil, addBOS: false, addEOS: false) }
            throws: { "\($0)".contains("needs merges") }
        #expect { try ByteLevelBPETokenizer(tokens: ["a", "b"], merges: ["a b"], tokenTypes: nil, preTokenizer: "gpt2", bosID: 7, eosID: nil, addBOS: true, addEOS: false) }
            throws: { "\($0)".contains("BOS id 7 is outside the vocabulary") }
        #expect { try ByteLevelBPETokenizer(tokens: ["a", "b"], merges: ["a b"], tokenTypes: [1], preTokenizer: "gpt2", bosID: nil, eosID: nil, addBOS: false, addEOS: false) }
            throws: { "\($0)".contains("1 token types for 2 tokens") }
        #expect { try ByteLevelBPETokenizer(tokens: ["a", "b"], merges: ["a b"], tokenTypes: nil, preTokenizer: "klingon", bosID: nil, eosID: nil, addBOS: false, addEOS: false) }
            throws: { "\($0)".contains("pre-tokenizer 'klingon'") }
        #expect { try SentencePieceTokenizer(tokens: ["a"], scores: [0, 1], tokenTypes: nil, bosID: nil, eosID: nil, addBOS: false, addEOS: false, addSpacePrefix: true) }
            throws: { "\($0)".contains("2 scores for 1 tokens") }
        #expect { try SentencePieceTokenizer(tokens: ["a"], scores: [0], tokenTypes: nil, bosID: nil, eosID: nil, addBOS: false, addEOS: false, addSpacePrefix: true) }
            throws: { "\($0)".contains("no byte token <0x00>") }
    }
}
