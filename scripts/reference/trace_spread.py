#!/usr/bin/env python3
"""How concentrated a recorded routing is: per MoE layer of a d2moe trace (`--record-trace`), the
distinct experts chosen, the share of all choices that went to the K (top_k) and 16 most chosen
experts, and the entropy of the choice distribution (bits; log2(E) when uniform).

Usage: python3 scripts/reference/trace_spread.py TRACE.jsonl [TRACE.jsonl ...]
"""
import collections
import json
import math
import sys


def spread(path):
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    header, records = lines[0], lines[1:]
    experts, k = header["experts"], header["top_k"]
    chosen = collections.defaultdict(collections.Counter)
    tokens = collections.Counter()
    for r in records:
        chosen[r["layer"]].update(r["experts"])
        tokens[r["layer"]] += 1
    print(f"{path}: {tokens[min(tokens)]} tokens per layer, {experts} experts, top-{k}")
    print(f" layer distinct top{k}_share top16_share entropy_bits (uniform {math.log2(experts):.2f})")
    rows = []
    for layer in sorted(chosen):
        c = chosen[layer]
        n = sum(c.values())
        top_k = sum(v for _, v in c.most_common(k)) / n
        top16 = sum(v for _, v in c.most_common(16)) / n
        h = -sum(v / n * math.log2(v / n) for v in c.values())
        rows.append((len(c), top_k, h))
        print(f" {layer:5d} {len(c):8d} {top_k:10.3f} {top16:11.3f} {h:12.2f}")
    m = len(rows)
    print(f" mean: {sum(r[0] for r in rows) / m:.1f} distinct, top{k} share {sum(r[1] for r in rows) / m:.3f},"
          f" entropy {sum(r[2] for r in rows) / m:.2f} bits")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for p in sys.argv[1:]:
        spread(p)
