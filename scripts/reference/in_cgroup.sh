#!/usr/bin/env bash
# Runs a command under a hard memory limit, in a fresh memory cgroup (v2 or v1, whichever has the
# memory controller here). Page cache the command faults in (e.g. an mmapped model) is charged to
# the cgroup, so it is capped too; swap is disabled for the cgroup (v2 memory.swap.max=0,
# v1 memory.memsw.limit_in_bytes=LIMIT). Needs root (or a delegated cgroup).
#
# The child cgroup is created under this shell's own memory cgroup (override the parent folder
# with CGROUP_PARENT=/sys/fs/cgroup/...), a child shell moves itself in and execs CMD; after CMD
# ends, leftover processes in the cgroup are killed and the cgroup is removed. On exit it prints
# one line to stderr:   in_cgroup: limit=BYTES peak=BYTES oom_kill=N rc=RC
# and exits with CMD's status (137 when the OOM killer SIGKILLed it).
#
# Usage: scripts/reference/in_cgroup.sh LIMIT CMD [ARGS...]
#   LIMIT: bytes, or with a binary suffix K/M/G/T (also KiB/MiB/GiB, KB/MB/GB = same): 1200M, 1.5G;
#          or "none" for no limit (still accounted, so peak is reported)
#   e.g. scripts/reference/in_cgroup.sh 1200M llama-bench -m model.gguf -p 16 -n 8
set -uo pipefail

die() { echo "in_cgroup: $*" >&2; exit 125; }
[ $# -ge 2 ] || die "usage: $0 LIMIT CMD [ARGS...]"

to_bytes() {  # 1200M -> 1258291200
    python3 - "$1" <<'PY' 2>/dev/null
import re, sys
m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", sys.argv[1], re.I)
if not m: sys.exit(1)
mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
print(int(float(m.group(1)) * mult))
PY
}
if [ "$1" = none ]; then limit=none; else limit=$(to_bytes "$1") || die "bad LIMIT '$1' (want e.g. 1200M, 2G, 123456789, none)"; fi
shift

# --- find a memory cgroup hierarchy -------------------------------------------------------------
mode="" ; mnt=""
v2mnt=$(awk '$3=="cgroup2"{print $2; exit}' /proc/mounts)
if [ -n "$v2mnt" ] && grep -qw memory "$v2mnt/cgroup.controllers" 2>/dev/null; then
    mode=v2; mnt=$v2mnt
else
    v1mnt=$(awk '$3=="cgroup" && $4 ~ /(^|,)memory(,|$)/ {print $2; exit}' /proc/mounts)
    if [ -n "$v1mnt" ] && [ -e "$v1mnt/memory.limit_in_bytes" ]; then mode=v1; mnt=$v1mnt; fi
fi
[ -n "$mode" ] || die "no cgroup memory controller found (neither cgroup v2 with 'memory' in cgroup.controllers nor a v1 'memory' hierarchy; see 'mount | grep cgroup')"

if [ -n "${CGROUP_PARENT:-}" ]; then
    parent=$CGROUP_PARENT
elif [ "$mode" = v2 ]; then
    parent="$mnt$(awk -F: '$1=="0"{print $3}' /proc/self/cgroup)"
else
    parent="$mnt$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup)"
fi
parent=${parent%/}
cg="$parent/in_cgroup.$$"
mkdir "$cg" 2>/dev/null || {
    # fall back to the hierarchy root (e.g. own cgroup not writable)
    cg="$mnt/in_cgroup.$$"
    mkdir "$cg" 2>/dev/null || die "cannot create a cgroup under $parent or $mnt (need root / a delegated cgroup)"
}

cleanup() {
    if [ -d "$cg" ]; then
        # kill anything CMD left behind in the cgroup (all of it was started by us), then remove it
        for _ in 1 2 3 4 5; do
            pids=$(cat "$cg/cgroup.procs" 2>/dev/null)
            [ -z "$pids" ] && break
            for p in $pids; do kill -9 "$p" 2>/dev/null; done
            sleep 0.2
        done
        rmdir "$cg" 2>/dev/null || echo "in_cgroup: warning: could not remove $cg" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$mode" = v2 ]; then
    if ! grep -qw memory "$parent/cgroup.subtree_control" 2>/dev/null; then
        echo +memory > "$parent/cgroup.subtree_control" 2>/dev/null ||
            die "memory controller not enabled in $parent/cgroup.subtree_control and cannot enable it (cgroup v2 no-internal-process rule?); try CGROUP_PARENT=<an empty delegated cgroup>"
    fi
    if [ "$limit" != none ]; then
        echo "$limit" > "$cg/memory.max" || die "cannot write $cg/memory.max"
        echo 0 > "$cg/memory.swap.max" 2>/dev/null || true  # absent when swap accounting is off
    fi
elif [ "$limit" != none ]; then
    echo "$limit" > "$cg/memory.limit_in_bytes" || die "cannot write $cg/memory.limit_in_bytes"
    echo "$limit" > "$cg/memory.memsw.limit_in_bytes" 2>/dev/null || true  # absent without swap accounting
    echo 0 > "$cg/memory.swappiness" 2>/dev/null || true
    got=$(cat "$cg/memory.limit_in_bytes")
    # the kernel rounds to pages; anything far off means the limit did not take
    [ $(( got - limit )) -le 4096 ] && [ $(( limit - got )) -le 4096 ] || die "limit did not take ($cg/memory.limit_in_bytes = $got, wanted $limit)"
fi

# child shell: join the cgroup, then become CMD
bash -c 'echo $$ > "$1/cgroup.procs" || exit 125; shift; exec "$@"' in_cgroup "$cg" "$@" &
child=$!
wait "$child"
rc=$?

if [ "$mode" = v2 ]; then
    peak=$(cat "$cg/memory.peak" 2>/dev/null || echo "?")
    ooms=$(awk '$1=="oom_kill"{print $2}' "$cg/memory.events" 2>/dev/null)
else
    peak=$(cat "$cg/memory.max_usage_in_bytes" 2>/dev/null || echo "?")
    ooms=$(awk '$1=="oom_kill"{print $2}' "$cg/memory.oom_control" 2>/dev/null)
fi
echo "in_cgroup: limit=$limit peak=$peak oom_kill=${ooms:-?} rc=$rc" >&2
exit "$rc"
