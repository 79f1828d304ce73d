#!/usr/bin/env bash
# The serving load test of issue 8: d2moe serve at --max-batch 1, 8 and 32, each driven by
# scripts/loadtest.py (64 clients, 256 streamed requests of mixed prompt lengths, loopback).
#   scripts/serve_load.sh [MODEL] [BATCHES] [CLIENTS] [REQUESTS] [MAX_TOKENS]
# (LENGTHS=4,12 for short prompts only; JSON=1 for JSON lines; SERVE_ARGS="--prefill-chunk 512" adds serve options)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
BATCHES=${2:-1,8,32}
CLIENTS=${3:-64}
REQUESTS=${4:-256}
MAX_TOKENS=${5:-32}
BIN=.build/release/d2moe
[ -x "$BIN" ] || swift build -c release --product d2moe
PORT=18431
for B in ${BATCHES//,/ }; do
  LOG=$(mktemp)
  "$BIN" serve --model "$MODEL" --port $PORT --ctx 1024 --max-batch "$B" --max-queue 64 ${SERVE_ARGS:-} >"$LOG" 2>&1 &
  PID=$!
  for _ in $(seq 1 100); do grep -q "serving" "$LOG" && break; sleep 0.2; done
  printf 'max-batch %-3s ' "$B"
  python3 scripts/loadtest.py --url http://127.0.0.1:$PORT --clients "$CLIENTS" --requests "$REQUESTS" \
    --max-tokens "$MAX_TOKENS" --pid $PID ${LENGTHS:+--lengths $LENGTHS} ${JSON:+--json} || true
  kill -TERM $PID; wait $PID || true
  rm -f "$LOG"
done
