#!/usr/bin/env python3
"""Golden token ids for both real models from llama.cpp's llama-tokenize (an independent
tokenizer), on ~300 strings covering prose, code, numbers, whitespace, emoji, CJK, Arabic,
accents, combining marks, ZWJ sequences, special-token look-alikes and the empty string.
Writes Tests/D2MoETests/Fixtures/tokenizer-golden.json. llama-tokenize adds BOS as the model
says and parses special tokens (as `d2moe tokenize` does by default).

Usage: tokenizer_golden.py LLAMA_CPP_BIN_DIR MODELS_DIR
"""
import json, os, random, subprocess, sys, tempfile

BASE = [
    "", " ", "  ", "\n", "\n\n\n", "\t", "\t\t x", " \n \t ", "Hello world", "Hello, world!", "hello  world", "HELLO WORLD",
    "The capital of France is Paris.", "I'm sure you'll see they've done what we'd said.", "don't DON'T Don't",
    "It's 3.14159 or 2,718,281 or 1e-9.", "1234567890", "0000", "12345678901234567890", "€100 and $99.99 or ¥3000",
    "def f(x):\n    return x ** 2  # square\n", "for (int i = 0; i < n; i++) { a[i] += b[i]; }", "SELECT * FROM t WHERE id=42;",
    "<html><body class=\"x\">Hi</body></html>", "{\"key\": [1, 2, {\"a\": null}]}", "x=1;y=2\r\nz=3",
    "https://example.com/path?q=1&r=two#frag", "user@example.org", "C:\\Windows\\System32", "a\u00a0b", "tab\tseparated\tvalues",
    "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "I ❤️ Swift", "日本語のテキスト", "中文文本测试", "한국어 문장입니다", "Ελληνικά γράμματα",
    "Русский текст", "مرحبا بالعالم", "שלום עולם", "हिन्दी भाषा", "ภาษาไทย", "café naïve résumé", "Ångström Øre Æsir",
    "e\u0301 o\u0308 n\u0303", "Z\u0351\u036b\u0343a\u0364l\u0367go", "\u200b zero\u200bwidth", "a\u200db", "ﬁ ligature ﬂ",
    "<|im_start|>user\nhi<|im_end|>", "<|endoftext|>", "<start_of_turn>user\nHello<end_of_turn>", "<bos><eos>", "<s> </s> <unk>",
    "[INST] hi [/INST]", "<|im_start|", "<start_of_turn", "<<>>", "<|", "|>", "< start_of_turn >",
    "    indented\n        more", "trailing spaces   ", "   leading", "a\n\nb\n\n\nc", "end.\n", "!!!???...", "---===+++",
    "ALLCAPS lowercase MiXeD", "snake_case camelCase PascalCase kebab-case", "a1b2c3", "v1.2.3-beta+build.5", "😀😀😀",
]
WORDS = ("the of and to in is was for on that with as by at from his her an were which are this be or had not "
         "Paris river castle 1914 government symphony quantum \u00e9t\u00e9 na\u00efve 東京 データ 🙂 don't it's").split()


def strings():
    rnd = random.Random(7)
    out = list(BASE)
    wiki = open(os.path.join(os.path.dirname(__file__), "..", "..", "data", "wikitext-2-raw", "wiki.test.raw"),
                encoding="utf-8").read().split("\n")
    out += [line for line in rnd.sample(wiki, 120) if line.strip()][:110]
    while len(out) < 310:
        n = rnd.randint(1, 12)
        s = ""
        for _ in range(n):
            s += rnd.choice(WORDS) + rnd.choice([" ", " ", " ", "  ", "\n", ", ", ". ", "\t", ""])
        if rnd.random() < 0.3:
            s += str(rnd.randint(0, 10 ** rnd.randint(1, 12)))
        out.append(s)
    return out


def tokenize(binary, model, text):
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", delete=False, suffix=".txt") as f:
        f.write(text)
    try:
        r = subprocess.run([binary, "-m", model, "-f", f.name, "--ids", "--log-disable"], capture_output=True, text=True, check=True)
        return json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        os.unlink(f.name)


def main(bin_dir, models):
    binary = os.path.join(bin_dir, "llama-tokenize")
    files = {"smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf", "gemma3": "gemma-3-270m-q4_k_m.gguf"}
    cases = [{"text": s} for s in strings()]
    for key, name in files.items():
        for c in cases:
            c[key] = tokenize(binary, os.path.join(models, name), c["text"])
    out = os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "D2MoETests", "Fixtures", "tokenizer-golden.json")
    json.dump({"source": "llama-tokenize (llama.cpp 0c1e57098) -f FILE --ids", "cases": cases}, open(out, "w"), ensure_ascii=False)
    print(len(cases), "strings")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
