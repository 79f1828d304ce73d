#!/usr/bin/env bash
# llama.cpp baseline for expert-streaming under a memory budget: runs llama-bench (mmap on, the
# default) on a MoE GGUF inside a hard memory cgroup (in_cgroup.sh) for each expert budget, so the
# kernel can keep at most that much of the mmapped experts in page cache, and prints one row per
# budget:  budget | cgroup limit | pp t/s | tg t/s | cgroup peak | status  (OOM when killed by the
# cgroup OOM killer). The first row runs with no limit.
#
#   limit = RESIDENT_BYTES + budget + 64 MiB (KV cache / compute buffers / process)
#   budget: absolute (878M, 1.2G, bytes) or a percentage of EXPERT_BYTES (25%)
#
# Usage:
#   scripts/reference/llamacpp_budget.sh BIN_DIR GGUF EXPERT_BYTES RESIDENT_BYTES [BUDGETS...]
#   EXPERT_BYTES / RESIDENT_BYTES: bytes of the *_exps tensors / of all other tensors, e.g. from
#     eval "$(python3 scripts/reference/synth_gguf.py --sizes GGUF)"
#   e.g. scripts/reference/llamacpp_budget.sh /work/llama/build/bin /work/big/olmoe-q4_0.gguf \
#          "$EXPERT_BYTES" "$RESIDENT_BYTES" 25% 50%
# Note: by default llama.cpp's CPU backend *repacks* Q4_0 weights (--repack 1) into an anonymous
# CPU_REPACK buffer at load, i.e. copies ~all of the model out of the mmap; then nothing can be
# streamed and every budget below the model size OOMs. For the mmap-streaming baseline use
#   BENCH_ARGS="-p 16 -n 8 -t 2 -r 1 --repack 0"
# Env: BENCH_ARGS (default "-p 16 -n 8 -t 2 -r 1"), RUN_TIMEOUT seconds per run (default 3600),
#      LIMITED_ONLY=1 to skip the first (unlimited) row,
#      LOG_DIR (default a fresh mktemp dir; per-run stdout/stderr are kept there),
#      DROP_CACHES=global to also do `sync; echo 3 > /proc/sys/vm/drop_caches` before each run
#      (off by default: it is machine-wide; the GGUF's own pages are always evicted with
#      posix_fadvise(DONTNEED) before each run, so every run starts cold and its page cache is
#      charged to its own cgroup rather than to whoever cached the file earlier).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 4 ] || { sed -n '2,28p' "$0" >&2; exit 2; }
bin=$1 gguf=$2 expert_bytes=$3 resident_bytes=$4
shift 4
budgets=("$@")
bench="$bin/llama-bench"
[ -x "$bench" ] || { echo "no llama-bench in $bin" >&2; exit 2; }
[ -r "$gguf" ] || { echo "cannot read $gguf" >&2; exit 2; }
bench_args=${BENCH_ARGS:--p 16 -n 8 -t 2 -r 1}
run_timeout=${RUN_TIMEOUT:-3600}
logdir=${LOG_DIR:-$(mktemp -d /tmp/llamacpp_budget.XXXXXX)}
mkdir -p "$logdir"
kv_bytes=$((64 << 20))

evict() {
    python3 -c 'import os,sys; fd=os.open(sys.argv[1],os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)' "$gguf" 2>/dev/null || true
    if [ "${DROP_CACHES:-}" = global ]; then
        sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    fi
}

budget_bytes() {  # 25% -> share of EXPERT_BYTES; 878M -> bytes
    python3 - "$1" "$expert_bytes" <<'PY'
import re, sys
s, exp = sys.argv[1].strip(), int(sys.argv[2])
if s.endswith("%"):
    print(int(float(s[:-1]) / 100 * exp)); sys.exit()
m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?", s, re.I)
if not m: sys.exit(f"bad budget {s!r}")
print(int(float(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]))
PY
}

mib() { awk -v b="$1" 'BEGIN{ if (b ~ /^[0-9]+$/) printf "%.1fMiB", b/1048576; else print b }'; }

parse_json() {  # prints "PP TG" (avg_ts of the n_prompt>0 / n_gen>0 rows), "- -" if absent
    python3 - "$1" <<'PY'
import json, sys
try:
    txt = open(sys.argv[1]).read()
    rows = json.loads(txt[txt.index("["):txt.rindex("]") + 1])
except Exception:
    print("- -"); sys.exit()
pp = [r["avg_ts"] for r in rows if r.get("n_prompt", 0) > 0 and r.get("n_gen", 0) == 0]
tg = [r["avg_ts"] for r in rows if r.get("n_gen", 0) > 0 and r.get("n_prompt", 0) == 0]
f = lambda v: f"{v[0]:.2f}" if v else "-"
print(f(pp), f(tg))
PY
}

echo "# llama-bench $bench_args, mmap on; $gguf"
echo "# EXPERT_BYTES=$expert_bytes ($(mib "$expert_bytes")) RESIDENT_BYTES=$resident_bytes ($(mib "$resident_bytes")) +KV/compute 64MiB; logs in $logdir"
printf "%-22s %-14s %10s %10s %14s  %s\n" budget limit "pp_t/s" "tg_t/s" peak status
i=0
rows=(none "${budgets[@]}")
[ "${LIMITED_ONLY:-}" = 1 ] && rows=("${budgets[@]}")
for b in "${rows[@]}"; do
    i=$((i + 1))
    if [ "$b" = none ]; then
        limit=none label=none
    else
        bb=$(budget_bytes "$b") || { printf "%-22s %s\n" "$b" "bad budget"; continue; }
        limit=$((resident_bytes + bb + kv_bytes))
        label="$b($(mib "$bb"))"
    fi
    out="$logdir/run$i.json" err="$logdir/run$i.err"
    evict
    # shellcheck disable=SC2086
    "$here/in_cgroup.sh" "$limit" timeout "$run_timeout" "$bench" -m "$gguf" $bench_args -o json >"$out" 2>"$err"
    rc=$?
    line=$(grep '^in_cgroup:' "$err" | tail -1)
    peak=$(sed -n 's/.*peak=\([^ ]*\).*/\1/p' <<<"$line")
    ooms=$(sed -n 's/.*oom_kill=\([^ ]*\).*/\1/p' <<<"$line")
    read -r pp tg <<<"$(parse_json "$out")"
    if [ "${ooms:-0}" != 0 ] && [ "${ooms:-0}" != "?" ]; then status=OOM
    elif [ "$rc" = 124 ]; then status="TIMEOUT(${run_timeout}s)"
    elif [ "$rc" = 137 ]; then status="OOM?(SIGKILL)"
    elif [ "$rc" != 0 ]; then status="FAIL(rc=$rc, see $err)"
    else status=ok
    fi
    [ "$status" = ok ] || { [ "$pp" = - ] && [ "$tg" = - ] && pp=$status tg=$status; }
    printf "%-22s %-14s %10s %10s %14s  %s\n" "$label" "$(mib "$limit")" "$pp" "$tg" "$(mib "${peak:-?}")" "$status"
done
evict
