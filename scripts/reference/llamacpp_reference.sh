#!/usr/bin/env bash
# Records llama.cpp's reference numbers for SmolLM2-135M on WikiText-2 (perplexity tool, ctx 512)
# on the exact float weights of the Q4_1 file, into Tests/D2MoETests/Fixtures/llamacpp-reference.json.
# llama.cpp is not part of this project: build its tools as DESIGN §3.6 describes and pass the
# folder holding llama-quantize and llama-perplexity.
#   scripts/reference/llamacpp_reference.sh /path/to/llama.cpp/build/bin [CHUNKS]
set -euo pipefail
bin=${1:?usage: $0 LLAMA_CPP_BIN_DIR [CHUNKS]}
chunks=${2:-20}
root=$(cd "$(dirname "$0")/../.." && pwd)
model="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
text="$root/data/wikitext-2-raw/wiki.test.raw"
f32=$(mktemp -d)/smollm2-f32.gguf
"$bin/llama-quantize" --allow-requantize "$model" "$f32" F32 >/dev/null 2>&1
log=$(mktemp)
"$bin/llama-perplexity" -m "$f32" -f "$text" -c 512 -t 2 --chunks "$chunks" >"$log" 2>&1
ppl=$(grep -o 'Final estimate: PPL = [0-9.]*' "$log" | grep -o '[0-9.]*$')
running=$(grep -o '\[[0-9]*\][0-9.]*' "$log" | sed 's/\[[0-9]*\]//' | paste -sd, -)
python3 - "$root/Tests/D2MoETests/Fixtures/llamacpp-reference.json" "$chunks" "$ppl" "$running" <<'PY'
import json, sys, datetime
path, chunks, ppl, running = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
data = {"tool": "llama-perplexity (llama.cpp 0c1e57098, from llama-cpp-python 0.3.36)",
        "command": f"llama-perplexity -m smollm2-f32.gguf -f wiki.test.raw -c 512 -t 2 --chunks {chunks}",
        "weights": "SmolLM2-135M-Instruct.Q4_1.gguf converted with llama-quantize --allow-requantize ... F32",
        "date": datetime.date.today().isoformat(),
        "perplexity_chunks": {"chunks": chunks, "perplexity": ppl,
                              "running": [float(x) for x in running.split(",") if x]}}
json.dump(data, open(path, "w"), indent=1)
print(f"llama.cpp perplexity over {chunks} chunks: {ppl}")
PY
