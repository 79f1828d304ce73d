#!/usr/bin/env python3
"""Golden ids for tokenizer.json pipelines from Hugging Face's `tokenizers` package (an
independent implementation). tokenizer.json files of the real models are not obtainable here,
so each pipeline is the one a real model family ships (SmolLM2, Qwen2, Llama 3, OLMoE/GPT-NeoX,
Gemma, Mistral/Llama 2 old and new style) filled with a vocabulary from our two GGUF files:
byte-level ones with SmolLM2's vocab and merges, SentencePiece-style ones with Gemma 3's vocab
and merges derived from its scores. The Swift test fills the same skeletons the same way.

Writes Tests/D2MoETests/Fixtures/hf-tokenizers/{NAME}.json (skeleton without vocab/merges) and
golden.json (ids with add_special_tokens=True, and decode with skip_special_tokens=True) on the
strings of tokenizer-golden.json.

Usage: hf_tokenizer_golden.py MODELS_DIR   (needs: pip install tokenizers gguf numpy)
"""
import json, os, sys
import gguf
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "..", "Tests", "D2MoETests", "Fixtures")
QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
BYTE_LEVEL_NO_REGEX = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
SPM_DECODER = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}]}
def bos(name, i):
    return {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": name, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {name: {"id": name, "ids": [i], "tokens": [name]}}}

PIPELINES = {
    "smollm2": ("smollm2", {"normalizer": None, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, BYTE_LEVEL]}, "post_processor": None, "decoder": BYTE_LEVEL}),
    "qwen2": ("smollm2", {"normalizer": {"type": "NFC"}, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2}, "behavior": "Isolated", "invert": False}, BYTE_LEVEL_NO_REGEX]},
        "post_processor": None, "decoder": BYTE_LEVEL}),
    "llama3": ("smollm2", {"normalizer": None, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3}, "behavior": "Isolated", "invert": False}, BYTE_LEVEL_NO_REGEX]},
        "post_processor": bos("<|endoftext|>", 0), "decoder": BYTE_LEVEL, "ignore_merges": True}),
    "olmoe": ("smollm2", {"normalizer": {"type": "NFC"}, "pre_tokenizer": BYTE_LEVEL, "post_processor": None,
        "decoder": BYTE_LEVEL}),
    "gemma3": ("gemma3", {"normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}, "pre_tokenizer": None,
        "post_processor": bos("<bos>", 2), "decoder": SPM_DECODER, "byte_fallback": True}),
    "mistral": ("gemma3", {"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}, "pre_tokenizer": None, "post_processor": bos("<bos>", 2),
        "decoder": {"type": "Sequence", "decoders": SPM_DECODER["decoders"] + [{"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "byte_fallback": True}),
    "llama-metaspace": ("gemma3", {"normalizer": None, "pre_tokenizer": {"type": "Metaspace", "replacement": "▁",
        "prepend_scheme": "first", "split": False}, "post_processor": bos("<bos>", 2),
        "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}, "byte_fallback": True}),
}


def read_vocab(path):
    r = gguf.GGUFReader(path)
    def arr(k):
        f = r.fields[k]
        return [f.parts[i] for i in f.data]
    tokens = [bytes(x).decode("utf-8") for x in arr("tokenizer.ggml.tokens")]
    types = [int(x[0]) for x in arr("tokenizer.ggml.token_type")]
    merges = [bytes(x).decode("utf-8") for x in arr("tokenizer.ggml.merges")] if "tokenizer.ggml.merges" in r.fields else None
    scores = [float(x[0]) for x in arr("tokenizer.ggml.scores")] if "tokenizer.ggml.scores" in r.fields else None
    return tokens, types, merges, scores


def scored_merges(tokens, types, scores):
    """Every split of a normal token into two normal tokens, best merged score first
    (ties: lower merged id, then shorter left part) — the order the Swift test uses."""
    normal = {t: i for i, t in enumerate(tokens) if types[i] == 1}
    found = []
    for t, i in normal.items():
        for k in range(1, len(t)):
            a, b = t[:k], t[k:]
            if a in normal and b in normal:
                found.append((-scores[i], i, k, a, b))
    found.sort()
    return [[a, b] for (_, _, _, a, b) in found]


def build(skeleton, tokens, types, merges):
    t = dict(skeleton)
    extra = {k: t.pop(k) for k in ("byte_fallback", "ignore_merges") if k in t}
    vocab = {}
    for i, tok in enumerate(tokens):  # every token, as real files list added ones too; first id wins
        vocab.setdefault(tok, i)
    added = [{"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": types[i] == 3} for i, tok in enumerate(tokens) if types[i] in (3, 4)]
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
             "fuse_unk": False, "byte_fallback": extra.get("byte_fallback", False), "ignore_merges": extra.get("ignore_merges", False),
             "vocab": vocab, "merges": merges}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, **t, "model": model}


def main(models):
    sources = {"smollm2": os.path.join(models, "SmolLM2-135M-Instruct.Q4_1.gguf"),
               "gemma3": os.path.join(models, "gemma-3-270m-q4_k_m.gguf")}
    vocabs = {}
    for name, path in sources.items():
        tokens, types, merges, scores = read_vocab(path)
        if merges is None:
            merges = scored_merges(tokens, types, scores)
        else:
            merges = [m.split(" ", 1) for m in merges]
        vocabs[name] = (tokens, types, merges)
    texts = [c["text"] for c in json.load(open(os.path.join(FIX, "tokenizer-golden.json")))["cases"]]
    out = {"source": "tokenizers (Hugging Face) %s" % __import__("tokenizers").__version__, "cases": [{"text": t} for t in texts]}
    for name, (source, skeleton) in PIPELINES.items():
        json.dump({"vocabulary": source, "merges": "gguf" if source == "smollm2" else "scores", "tokenizer": skeleton},
                  open(os.path.join(FIX, "hf-tokenizers", name + ".json"), "w"), indent=1, ensure_ascii=False)
        tok = Tokenizer.from_str(json.dumps(build(skeleton, *vocabs[source])))
        for case in out["cases"]:
            ids = tok.encode(case["text"], add_special_tokens=True).ids
            case[name] = ids
            case[name + "-decoded"] = tok.decode(ids, skip_special_tokens=True)
        print(name, "done", file=sys.stderr)
    json.dump(out, open(os.path.join(FIX, "hf-tokenizers", "golden.json"), "w"), ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv[1])
