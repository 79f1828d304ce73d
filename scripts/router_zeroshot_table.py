#!/usr/bin/env python3
"""The table of scripts/router_zeroshot.sh's JSON lines: acc (acc_norm) per task and the mean acc,
one row per configuration in the order first seen, with its average bits.

    scripts/router_zeroshot_table.py OUT.jsonl
"""
import json
import sys

if len(sys.argv) != 2:
    sys.exit(__doc__)
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
names, tasks, cell, bits, n = [], [], {}, {}, {}
for r in rows:
    name, res = r["name"], r["result"]
    if name not in names:
        names.append(name)
    if res["task"] not in tasks:
        tasks.append(res["task"])
    cell[name, res["task"]] = (res["accuracy"], res["accuracy_norm"])
    n[res["task"]] = res["n"]
    b = res.get("average_bits")
    if b is not None:
        bits.setdefault(name, []).append((b, res["tokens"]))
print("| configuration | avg bits | " + " | ".join("%s (n=%d)" % (t, n[t]) for t in tasks) + " | mean acc |")
print("| --- | --- |" + " --- |" * (len(tasks) + 1))
for name in names:
    b = bits.get(name)
    avg = "%.2f" % (sum(x * w for x, w in b) / sum(w for _, w in b)) if b else "float"
    accs = [cell[name, t][0] for t in tasks if (name, t) in cell]
    cols = ["%.3f (%.3f)" % cell[name, t] if (name, t) in cell else "" for t in tasks]
    print("| %s | %s | %s | %.3f |" % (name, avg, " | ".join(cols), sum(accs) / len(accs)))
