#!/usr/bin/env bash
# d2moe and llama.cpp on the same weights under the same memory rule, interleaved.
#
# GGUF: an OLMoE GGUF (e.g. synth_gguf.py's); MWQ: the same model converted by
# `d2moe quantize --model GGUF --out MWQ --scheme v1`. For each round and each budget (a share of
# each engine's own expert bytes), one after the other, each in a fresh memory cgroup
# (in_cgroup.sh) whose limit is that engine's resident part + its budget + 64 MiB:
#   - llama.cpp: llama-bench -p P -n N -t 2 -r 1 --repack 0 (mmap) through llamacpp_budget.sh, its
#     resident part being the GGUF's non-expert tensors;
#   - d2moe: `d2moe bench --policy d2moe --direct-io on --requests 1 -p P -n N -r 1`, its resident
#     part being its RSS after load (startResidentBytes of a short probe run outside the cgroup).
#
# Usage: scripts/reference/same_weights_budget.sh LLAMA_BIN_DIR GGUF MWQ ROUNDS BUDGETS...
#   e.g. scripts/reference/same_weights_budget.sh vendor/llama.cpp/build/bin olmoe.gguf olmoe-v1.mwq 2 25% 50%
# Env: PROMPT (16) and GEN (8) tokens; D2MOE (default .build/release/d2moe); D2MOE_ARGS (default
#   "--dtype f16 --bit-policy gate").
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 5 ] || { sed -n '2,17p' "$0" >&2; exit 2; }
bin=$1 gguf=$2 mwq=$3 rounds=$4
shift 4
d2moe=${D2MOE:-$here/../../.build/release/d2moe}
prompt=${PROMPT:-16} gen=${GEN:-8}
read -r -a d2args <<<"${D2MOE_ARGS:---dtype f16 --bit-policy gate}"
eval "$(python3 "$here/synth_gguf.py" --sizes "$gguf")"

bench() {  # budget, then extra arguments
    "$d2moe" bench --model "$mwq" "${d2args[@]}" --direct-io on --policy d2moe --requests 1 -r 1 --memory-budget "$@" --json
}
field() { python3 -c 'import json,sys; j=json.loads(sys.stdin.read()); print(eval(sys.argv[1]))' "$1"; }

for round in $(seq 1 "$rounds"); do
    for b in "$@"; do
        LIMITED_ONLY=1 BENCH_ARGS="-p $prompt -n $gen -t 2 -r 1 --repack 0" \
            "$here/llamacpp_budget.sh" "$bin" "$gguf" "$EXPERT_BYTES" "$RESIDENT_BYTES" "$b" | grep -v '^#\|^budget' \
            | sed "s/^/round $round llama.cpp  /"
        probe=$(bench "$b" -p 1 -n 1 2>/dev/null) || { echo "round $round d2moe $b: probe failed"; continue; }
        limit=$(field 'j["startResidentBytes"] + j["experts"]["budgetBytes"] + (64 << 20)' <<<"$probe")
        budget=$(field 'j["experts"]["budgetBytes"]' <<<"$probe")
        out=$("$here/in_cgroup.sh" "$limit" "$d2moe" bench --model "$mwq" "${d2args[@]}" --direct-io on --policy d2moe \
              --requests 1 -r 1 -p "$prompt" -n "$gen" --memory-budget "$b" --json 2>/tmp/same_weights_d2moe.err)
        rc=$?
        cg=$(grep '^in_cgroup:' /tmp/same_weights_d2moe.err | tail -1)
        speeds=$(field '"%.2f %.2f" % (j["promptTokensPerSecond"], j["generationTokensPerSecond"])' <<<"$out" 2>/dev/null || echo "- -")
        printf "round %s d2moe      %-22s %-14s %10s %10s  rc=%s %s\n" "$round" "$b($((budget >> 20))MiB)" "$((limit >> 20))MiB" \
            ${speeds} "$rc" "$cg"
    done
done
