#!/bin/bash
# Issue 9's comparison: eviction rules, SMoE substitution and HOBBIT's fallback at one budget, in
# one run, on SmolLM2 MoEfied into 8 experts at top-6, decoding real text (WikiText-2).
#   scripts/importance_bench.sh [BUDGET] [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET=${1:-50%}
OUT=${2:-/tmp/d2moe-importance}
mkdir -p "$OUT"
D2MOE=.build/release/d2moe
[ -x $D2MOE ] || swift build -c release
MOE="$OUT/moe8k6.gguf" MWQ="$OUT/moe8k6-v1.mwq"
[ -f "$MOE" ] || $D2MOE moefy --model models/SmolLM2-135M-Instruct.Q4_1.gguf --experts 8 --top-k 6 --calib data/calib/c4.utf8 --out "$MOE"
[ -f "$MWQ" ] || $D2MOE quantize --model "$MOE" --out "$MWQ" --scheme v1 --group 64
head -c 200000 ../shared/data/wikitext-2-raw/wiki.test.raw > "$OUT/wt-200k.txt"
$D2MOE bench --model "$MWQ" --memory-budget "$BUDGET" --text "$OUT/wt-200k.txt" -p 0 -n 64 -r 2 --requests 1,3 \
  --policies evict-lru,evict-lfu,evict-layer,evict-score,smoe@0,smoe@0.1,smoe@0.2,smoe@0.3,smoe@0.4,hobbit,d2moe \
  --csv "$OUT/importance-$BUDGET.csv"
