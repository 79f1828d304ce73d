#!/usr/bin/env python3
"""Golden renderings of real chat templates by the reference Jinja2 implementation, set up the
way Hugging Face transformers renders `tokenizer.apply_chat_template` (ImmutableSandboxedEnvironment
with trim_blocks/lstrip_blocks and loopcontrols, `raise_exception`, a `tojson` filter with
ensure_ascii=False, `strftime_now`), so the Swift Jinja-subset renderer can be checked against it.

Writes, in Tests/D2MoETokenizersTests/Fixtures/chat-templates/:
  * one NAME.jinja per template (the exact template string, no added newline);
  * golden.json: a list of {"template", "variables", "output"} or, when rendering raises,
    {"template", "variables", "error": true, "message", "exception"} ("exception" is the Python
    exception class name; `raise_exception` raises jinja2.exceptions.TemplateError like HF).

Where each template comes from (step 1 re-extracts them whenever the source is present, else the
.jinja file already in the fixture folder is kept as is):
  smollm2.jinja       tokenizer.chat_template of models/SmolLM2-135M-Instruct.Q4_1.gguf (verbatim).
  gemma3.jinja        models/gemma-3-270m-q4_k_m.gguf is the *base* model and has no
                      tokenizer.chat_template, so the Gemma 3 template is taken from Hugging Face
                      transformers, src/transformers/models/gemma3/convert_gemma3_weights.py
                      (`_CHAT_TEMPLATE`, the template shipped with the gemma-3-*-it checkpoints),
                      embedded below as GEMMA3_TEMPLATE (a non-raw Python string, so the '\\n' in
                      its Jinja literals are real newline characters, as in the released GGUFs).
  qwen2.jinja         llama.cpp models/templates/Qwen-Qwen2.5-7B-Instruct.jinja (verbatim copy).
  qwen3.jinja         llama.cpp models/templates/Qwen-Qwen3-0.6B.jinja (verbatim copy).
  mistral-nemo.jinja  llama.cpp models/templates/mistralai-Mistral-Nemo-Instruct-2407.jinja (copy).
  llama3.jinja        llama.cpp models/templates/meta-llama-Llama-3.1-8B-Instruct.jinja (copy).
  mixtral.jinja       llama-cpp-python llama_cpp/llama_chat_format.py MIXTRAL_INSTRUCT_CHAT_TEMPLATE
                      ("Source: huggingface.co/mistralai/Mixtral-8x7B-Instruct-v0.1 ...
                      tokenizer_config.json"); byte-identical to the "mistralai/Mistral-7B-Instruct-v0.2
                      (old pre-v1 without a system prompt)" C++ literal in llama.cpp
                      tests/test-chat-template.cpp. This is the original Mixtral template (no system
                      role: a system message raises).
  olmoe.jinja         NOT found verbatim anywhere under /work/cache/llama.cpp-src: reconstructed as the
                      Tulu template used by allenai instruct models (OLMoE-1B-7B-0924-Instruct,
                      OLMo-2, Tulu 3), embedded below as OLMOE_TEMPLATE.

Usage: chat_template_golden.py   (needs jinja2; gguf only to re-extract the two GGUF templates)
"""
import ast
import datetime
import json
import os
import sys

import jinja2
import jinja2.ext
import jinja2.exceptions
import jinja2.sandbox

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "Tests", "D2MoETokenizersTests", "Fixtures", "chat-templates")
MODELS = os.path.join(ROOT, "models")
LLAMA_CPP_PY = "/work/cache/llama.cpp-src"
TEMPLATES = os.path.join(LLAMA_CPP_PY, "vendor", "llama.cpp", "models", "templates")

# transformers src/transformers/models/gemma3/convert_gemma3_weights.py, `_CHAT_TEMPLATE` (verbatim,
# including the Python escapes: '\n' below become real newlines).
GEMMA3_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

# Tulu template of the allenai instruct models (reconstructed, see header). Raw string: the Jinja
# string literals contain the two characters backslash-n, which Jinja turns into a newline.
OLMOE_TEMPLATE = r"""{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}{% elif message['role'] == 'assistant' %}{% if not loop.last %}{{ '<|assistant|>\n'  + message['content'] + eos_token + '\n' }}{% else %}{{ '<|assistant|>\n'  + message['content'] + eos_token }}{% endif %}{% endif %}{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}{% endfor %}"""


# ---------------------------------------------------------------------------------------------
# Step 1: template files
# ---------------------------------------------------------------------------------------------

def gguf_meta(path):
    """(chat_template or None, bos token text, eos token text) of a GGUF file."""
    import gguf
    r = gguf.GGUFReader(path)

    def field(key):
        f = r.fields.get(key)
        return None if f is None else f.parts[f.data[0]]

    tmpl = field("tokenizer.chat_template")
    toks = r.fields["tokenizer.ggml.tokens"]

    def tok(i):
        return bytes(toks.parts[toks.data[i]]).decode("utf-8")

    bos = tok(int(field("tokenizer.ggml.bos_token_id")[0]))
    eos = tok(int(field("tokenizer.ggml.eos_token_id")[0]))
    return (None if tmpl is None else bytes(tmpl).decode("utf-8")), bos, eos


def mixtral_from_llama_cpp_python():
    src_path = os.path.join(LLAMA_CPP_PY, "llama_cpp", "llama_chat_format.py")
    tree = ast.parse(open(src_path, encoding="utf-8").read())
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "MIXTRAL_INSTRUCT_CHAT_TEMPLATE"):
            return ast.literal_eval(node.value)
    raise RuntimeError("MIXTRAL_INSTRUCT_CHAT_TEMPLATE not found in " + src_path)


def mixtral_from_test_chat_template_cpp():
    """The same string as a C++ literal in llama.cpp's tests (cross-check only)."""
    path = os.path.join(LLAMA_CPP_PY, "vendor", "llama.cpp", "tests", "test-chat-template.cpp")
    lines = open(path, encoding="utf-8").read().splitlines()
    for i, line in enumerate(lines):
        if "Old pre-v1 without a system prompt" in line:
            lit = lines[i + 1].split("/* .template_str= */", 1)[1].strip().rstrip(",")
            # A plain C string literal with only \" \\ \n style escapes: Python reads it the same.
            return ast.literal_eval(lit)
    return None


def write(name, text):
    with open(os.path.join(OUT, name), "w", encoding="utf-8", newline="") as f:
        f.write(text)


def read(name):
    with open(os.path.join(OUT, name), encoding="utf-8", newline="") as f:
        return f.read()


def extract_templates():
    os.makedirs(OUT, exist_ok=True)
    tokens = {}
    # GGUF-embedded templates and special-token texts.
    for name, fname in [("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
                        ("gemma3", "gemma-3-270m-q4_k_m.gguf")]:
        path = os.path.join(MODELS, fname)
        if not os.path.exists(path):
            print(f"note: {path} missing, keeping existing {name}.jinja / default tokens", file=sys.stderr)
            continue
        tmpl, bos, eos = gguf_meta(path)
        tokens[name] = (bos, eos)
        if name == "gemma3":
            if tmpl is not None:
                print("note: gemma3 GGUF now has a chat_template; using it", file=sys.stderr)
            write("gemma3.jinja", tmpl if tmpl is not None else GEMMA3_TEMPLATE)
        else:
            if tmpl is None:
                raise RuntimeError(f"{path} has no tokenizer.chat_template")
            write(f"{name}.jinja", tmpl)
    # llama.cpp's HF-downloaded templates (byte copies).
    for name, fname in [("qwen2", "Qwen-Qwen2.5-7B-Instruct.jinja"),
                        ("qwen3", "Qwen-Qwen3-0.6B.jinja"),
                        ("mistral-nemo", "mistralai-Mistral-Nemo-Instruct-2407.jinja"),
                        ("llama3", "meta-llama-Llama-3.1-8B-Instruct.jinja")]:
        path = os.path.join(TEMPLATES, fname)
        if os.path.exists(path):
            with open(path, encoding="utf-8", newline="") as f:
                write(f"{name}.jinja", f.read())
        else:
            print(f"note: {path} missing, keeping existing {name}.jinja", file=sys.stderr)
    # Mixtral.
    if os.path.isdir(LLAMA_CPP_PY):
        m = mixtral_from_llama_cpp_python()
        c = mixtral_from_test_chat_template_cpp()
        if c is not None and c != m:
            print("warning: Mixtral template differs between llama-cpp-python and test-chat-template.cpp",
                  file=sys.stderr)
        write("mixtral.jinja", m)
    # OLMoE (reconstructed).
    write("olmoe.jinja", OLMOE_TEMPLATE)
    return tokens


# ---------------------------------------------------------------------------------------------
# Step 2: rendering like transformers' apply_chat_template
# ---------------------------------------------------------------------------------------------

FIXED_NOW = datetime.datetime(2026, 1, 2, 0, 0, 0)


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(fmt):
    return FIXED_NOW.strftime(fmt)


def make_env():
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


# bos/eos per template (smollm2/gemma3 are overridden by the GGUF token texts when available).
SPECIAL = {
    "smollm2": ("<|im_start|>", "<|im_end|>"),
    "gemma3": ("<bos>", "<eos>"),
    "qwen2": ("", "<|im_end|>"),
    "qwen3": ("", "<|im_end|>"),
    "mixtral": ("<s>", "</s>"),
    "mistral-nemo": ("<s>", "</s>"),
    "olmoe": ("<|endoftext|>", "<|endoftext|>"),
    "llama3": ("<|begin_of_text|>", "<|eot_id|>"),
}


def U(c):
    return {"role": "user", "content": c}


def A(c):
    return {"role": "assistant", "content": c}


def S(c):
    return {"role": "system", "content": c}


WS = "  \n  Hello,\n\tworld!  \n\n"
UNICODE = "こんにちは世界 你好 안녕하세요 🌍👋🏽 café naïve — Ünïcödé “quotes” العربية"
TRICKY = "He said \"hi\" and it's {{ not jinja }} {% if x %}y{% endif %} {# no comment #} <|im_end|> back\\slash \\n"

# (messages, add_generation_prompt, extra variables)
COMMON_CASES = [
    ([U("Hello!")], True, {}),
    ([U("Hello!")], False, {}),
    ([S("You are a helpful assistant."), U("What is 2+2?")], True, {}),
    ([U("Hi there"), A("Hello! How can I help you today?"), U("Tell me a joke.")], True, {}),
    ([S("Be brief."), U("Hi"), A("Hello."), U("Bye"), A("Goodbye.")], False, {}),
    ([U(WS), A("\n  answer with spaces  \n"), U(" trailing ")], True, {}),
    ([U(UNICODE), A("🙂 好的！ «ok» ✓")], False, {}),
    ([S(TRICKY), U(TRICKY)], True, {}),
    ([U("")], True, {}),
    ([U("first"), U("second in a row")], True, {}),  # non-alternating: raises in strict templates
]

QWEN3_CASES = [
    ([U("What is 1+1?"), A("<think>\nreasoning\n</think>\n\nanswer")], False, {}),
    ([U("What is 1+1?"), A("<think>\nreasoning\n</think>\n\nanswer"), U("And 2+2?")], True, {}),
    ([U("What is 1+1?")], True, {"enable_thinking": False}),
    ([U("What is 1+1?")], True, {"enable_thinking": True}),
    ([S("sys"), U("q1"), A("<think>\nr1\n</think>\n\na1"), U("q2"), A("<think>\n\nr2\n\n</think>\n\n\na2")], False, {}),
    ([U("q"), {"role": "assistant", "content": "a", "reasoning_content": "separate reasoning"}], False, {}),
]

MIXTRAL_CASES = [
    ([U("hi"), {"role": "tool", "content": "x"}], False, {}),  # reaches 'Only user and assistant roles'
]

LLAMA3_CASES = [
    ([U("What day is it?")], True, {"date_string": "02 Jan 2026"}),
]


def cases_for(name):
    cases = list(COMMON_CASES)
    if name == "qwen3":
        cases += QWEN3_CASES
    if name == "llama3":
        cases += LLAMA3_CASES
    if name == "mixtral":
        cases += MIXTRAL_CASES
    return cases


def main():
    tokens = extract_templates()
    special = dict(SPECIAL)
    special.update(tokens)
    env = make_env()
    golden = []
    names = sorted(f for f in os.listdir(OUT) if f.endswith(".jinja"))
    for fname in names:
        name = fname[:-len(".jinja")]
        template = env.from_string(read(fname))
        bos, eos = special.get(name, ("<s>", "</s>"))
        for messages, agp, extra in cases_for(name):
            variables = {"messages": messages, "add_generation_prompt": agp,
                         "bos_token": bos, "eos_token": eos}
            variables.update(extra)
            snapshot = json.loads(json.dumps(variables))  # templates cannot mutate it, but be safe
            entry = {"template": fname, "variables": snapshot}
            try:
                entry["output"] = template.render(**variables)
            except Exception as e:  # recorded, whatever it is
                entry["error"] = True
                entry["message"] = str(e)
                entry["exception"] = type(e).__name__
            golden.append(entry)
    path = os.path.join(OUT, "golden.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
        f.write("\n")

    # Summary.
    print(f"wrote {path}: {len(golden)} cases")
    for fname in names:
        rows = [g for g in golden if g["template"] == fname]
        errs = [g for g in rows if g.get("error")]
        print(f"  {fname:20s} {len(rows):3d} cases, {len(errs)} errors"
              + "".join(f"\n      error: {g.get('exception')}: {g['message']}" for g in errs))
    if len(golden) < 60:
        sys.exit("fewer than 60 cases")


if __name__ == "__main__":
    main()
