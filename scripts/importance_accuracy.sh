#!/bin/bash
# Issue 9's accuracy cost: perplexity decoded one token per step and two zero-shot tasks for each α
# and for HOBBIT, on the model scripts/importance_bench.sh builds (run it first).
#   scripts/importance_accuracy.sh [BUDGET] [OUTDIR]   → OUTDIR/accuracy.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-50%}
OUT=${2:-/tmp/d2moe-importance}
M="$OUT/moe8k6-v1.mwq"
WT=../shared/data/wikitext-2-raw/wiki.test.raw
out="$OUT/accuracy.jsonl"
: > "$out"
run() {  # name, options...
  name=$1; shift
  ppl=$(.build/release/d2moe eval ppl --model "$M" --data $WT --ctx 256 --max-chunks 4 --score-batch 1 --json "$@" 2>/dev/null)
  piqa=$(.build/release/d2moe eval zeroshot --model "$M" --task piqa --limit 60 --json "$@" 2>/dev/null)
  arc=$(.build/release/d2moe eval zeroshot --model "$M" --task arc_easy --limit 60 --json "$@" 2>/dev/null)
  echo "{\"name\": \"$name\", \"ppl\": $ppl, \"piqa\": $piqa, \"arc_easy\": $arc}" >> "$out"
  echo "$name done $(date +%T)"
}
run none --memory-budget $B --policy evict-score
for a in 0.1 0.2 0.3 0.4; do run smoe@$a --memory-budget $B --policy smoe --alpha $a; done
run smoe@0.2-scaled --memory-budget $B --policy smoe --alpha 0.2 --substitute-weight scaled
run hobbit --memory-budget $B --policy hobbit
