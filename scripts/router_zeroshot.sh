#!/bin/bash
# Issue 7's zero-shot comparison: each configuration on the five tasks, the first LIMIT documents
# of each, one JSON line per (configuration, task) with the bit policy and average bits the
# engine reports.
#   scripts/router_zeroshot.sh LIMIT OUT.jsonl 'NAME|MODEL|FLAGS' ...
# e.g. scripts/router_zeroshot.sh 100 /tmp/zs.jsonl \
#        'float|models/SmolLM2-135M-Instruct.Q4_1.gguf|' 'mwq3|smol-v1.mwq|--bits 3' \
#        'router3.5|smol-v1-r.mwq|--bit-policy router --target-bits 3.5 --router-levels adjacent'
# Then scripts/router_zeroshot_table.py OUT.jsonl prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=$1; OUT=$2; shift 2
TASKS=${TASKS:-piqa arc_easy boolq hellaswag winogrande}
for spec in "$@"; do
  IFS='|' read -r name model flags <<< "$spec"
  for task in $TASKS; do
    # shellcheck disable=SC2086
    r=$(.build/release/d2moe eval zeroshot --model "$model" --task "$task" --limit "$LIMIT" --json $flags 2>/dev/null)
    echo "{\"name\": \"$name\", \"flags\": \"$flags\", \"result\": $r}" >> "$OUT"
    echo "$name $task $(date +%T)"
  done
done
