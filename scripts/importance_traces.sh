#!/bin/bash
# Issue 9 on real routing traces, every policy with and without its prefetch (-nopf), in one run per
# trace: a replayed trace decides the experts, but the prefetch's prediction comes from the synthetic
# model's router, so a prefetching policy reads experts the trace will not choose.
#   scripts/importance_traces.sh [OUTDIR]   (needs about 6 GiB of disk for the two synthetic files)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/d2moe-traces}
mkdir -p "$OUT"
D2MOE=.build/release/d2moe
[ -x $D2MOE ] || swift build -c release
TRACES=../shared/data/routing-traces
POLICIES=evict-lru,evict-lfu,evict-layer,evict-score,smoe@0.2,smoe@0.2-nopf,hobbit,hobbit-nopf
MIX="$OUT/mixtral2-v1.mwq" OLMOE="$OUT/olmoe-v1.mwq"
[ -f "$MIX" ] || $D2MOE synth --shape mixtral-8x7b --layers 2 --scheme v1 --out "$MIX"
[ -f "$OLMOE" ] || $D2MOE synth --shape olmoe-1b-7b --scheme v1 --out "$OLMOE"
# Mixtral-8x7B shape, 2 layers; routing_raw.jsonl is Mixtral's own routing with gate weights.
$D2MOE bench --model "$MIX" --dtype f16 --trace $TRACES/routing_raw.jsonl --budgets 50% -p 0 -n 24 -r 1 \
  --requests 1,3 --policies $POLICIES --csv "$OUT/mixtral-trace.csv"
# OLMoE-1B-7B shape with DeepSeek-V2-Lite's top-6 routing (no gate weights: chosen experts score 1/6).
$D2MOE bench --model "$OLMOE" --dtype f16 --experts-per-token 6 --trace $TRACES/prompt_478_data.csv --budgets 25% \
  -p 0 -n 16 -r 1 --requests 1,3 --policies $POLICIES --csv "$OUT/olmoe-deepseek-trace.csv"
