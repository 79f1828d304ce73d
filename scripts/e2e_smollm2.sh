#!/bin/bash
# SmolLM2-135M end to end next to llama.cpp, interleaved rounds on one machine (README, "End to end").
# usage: scripts/e2e_smollm2.sh LLAMA_BIN_DIR ROUNDS D2MOE_BINARY...   (each binary labelled by its path)
# Needs models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/setup) and, made once:
#   llama-quantize --allow-requantize models/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/smol-q4_0.gguf Q4_0
#   d2moe quantize --model models/SmolLM2-135M-Instruct.Q4_1.gguf --out /tmp/smol-v1-q4.mwq --scheme v1 --resident q4
#   d2moe quantize --model models/SmolLM2-135M-Instruct.Q4_1.gguf --out /tmp/smol-v1-q8.mwq --scheme v1 --resident q8
set -euo pipefail
L=$1; R=$2; shift 2
cd "$(dirname "$0")/.."
for r in $(seq "$R"); do
  for m in models/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/smol-q4_0.gguf; do
    "$L/llama-bench" -m "$m" -t 2 -p 128 -n 128 -r 3 2>&1 | grep -E "pp128|tg128" | awk -F'|' -v m="$(basename "$m")" -v r="$r" '{print r, "llama", m, $7, $8}'
  done
  for f in q4 q8; do
    for b in "$@"; do
      "$b" bench --model /tmp/smol-v1-$f.mwq --dtype q8 --bits 4 -p 128 -n 128 -r 3 2>&1 | grep -E "pp128|tg128" | sed "s|^|$r $b $f |"
    done
  done
done
