#!/usr/bin/env python3
"""Perplexity against average bits: uniform MWQ levels (a line through them) and trained
bit-width routers (points), from the JSON lines `d2moe eval ppl --json` prints.

    scripts/router_plot.py results.jsonl out.svg [--title T]

Each line needs "perplexity" and "average_bits"; lines with "bit_policy": "uniform" make the
line, the others are router points (labelled by "tag" when present). Prints, for each router
point, the uniform line's perplexity at the same bits (linear between the two levels around
it) and how far below (negative: above) the line the router is. Plain Python, no packages.
"""
import json
import math
import sys


def main():
    args = sys.argv[1:]
    title = "perplexity vs average bits"
    if "--title" in args:
        i = args.index("--title")
        title = args[i + 1]
        del args[i:i + 2]
    if len(args) != 2:
        sys.exit(__doc__)
    rows = [json.loads(l) for l in open(args[0]) if l.strip()]
    uniform = sorted((r["average_bits"], r["perplexity"]) for r in rows if r.get("bit_policy") == "uniform")
    routed = [r for r in rows if r.get("bit_policy") != "uniform"]
    if len(uniform) < 2:
        sys.exit("need at least two uniform rows")

    def line_at(b):
        for (b0, p0), (b1, p1) in zip(uniform, uniform[1:]):
            if b0 <= b <= b1:
                return p0 + (p1 - p0) * (b - b0) / (b1 - b0)
        return None

    for r in routed:
        ref = line_at(r["average_bits"])
        gap = "" if ref is None else "line %.2f, router %.1f%% below" % (ref, 100 * (ref - r["perplexity"]) / ref)
        print("%-28s %.3f bits  ppl %.2f  %s" % (r.get("tag", "router"), r["average_bits"], r["perplexity"], gap))

    # Log-scaled perplexity: 2-bit points are an order of magnitude above the rest.
    w, h, left, right, top, bottom = 640, 420, 70, 20, 40, 50
    xs = [b for b, _ in uniform] + [r["average_bits"] for r in routed]
    ys = [p for _, p in uniform] + [r["perplexity"] for r in routed]
    x0, x1 = min(xs) - 0.1, max(xs) + 0.1
    y0, y1 = math.log(min(ys) * 0.9), math.log(max(ys) * 1.1)
    X = lambda b: left + (b - x0) / (x1 - x0) * (w - left - right)
    Y = lambda p: top + (y1 - math.log(p)) / (y1 - y0) * (h - top - bottom)
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (w, h),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="20" font-size="14">%s</text>' % (left, title),
           '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (left, h - bottom, w - right, h - bottom),
           '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (left, top, left, h - bottom),
           '<text x="%d" y="%d">average bits per expert-token</text>' % (w // 2 - 80, h - 12),
           '<text x="14" y="%d" transform="rotate(-90 14 %d)">perplexity (log scale)</text>' % (h // 2 + 50, h // 2 + 50)]
    b = math.ceil(x0 * 4) / 4
    while b <= x1:
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ccc"/><text x="%.1f" y="%d" text-anchor="middle">%g</text>'
                   % (X(b), top, X(b), h - bottom, X(b), h - bottom + 16, b))
        b += 0.25
    for p in [10, 20, 30, 50, 100, 200, 300, 500, 1000, 2000]:
        if y0 <= math.log(p) <= y1:
            out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#eee"/><text x="%d" y="%.1f" text-anchor="end">%d</text>'
                       % (left, Y(p), w - right, Y(p), left - 6, Y(p) + 4, p))
    # The uniform line is straight in linear perplexity, drawn through many points.
    pts = []
    for (ba, pa), (bb, pb) in zip(uniform, uniform[1:]):
        for i in range(41):
            t = i / 40
            pts.append("%.1f,%.1f" % (X(ba + t * (bb - ba)), Y(pa + t * (pb - pa))))
    out.append('<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="%s"/>' % " ".join(pts))
    for bu, pu in uniform:
        out.append('<circle cx="%.1f" cy="%.1f" r="4" fill="#1f77b4"/><text x="%.1f" y="%.1f">%.1f</text>' % (X(bu), Y(pu), X(bu) + 6, Y(pu) - 6, pu))
    # Router points in one colour per series: the tag without its last word (the knob setting).
    colours = ["#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2"]
    series = []
    for r in routed:
        name = r["tag"].rsplit(" ", 1)[0] if " " in r.get("tag", "") else "router"
        if name not in series:
            series.append(name)
        c = colours[series.index(name) % len(colours)]
        out.append('<rect x="%.1f" y="%.1f" width="8" height="8" fill="%s"/><text x="%.1f" y="%.1f" fill="%s">%.1f</text>'
                   % (X(r["average_bits"]) - 4, Y(r["perplexity"]) - 4, c, X(r["average_bits"]) + 6, Y(r["perplexity"]) + 14, c,
                      r["perplexity"]))
    out.append('<circle cx="%d" cy="%d" r="4" fill="#1f77b4"/><text x="%d" y="%d">uniform MWQ (line through the levels)</text>'
               % (w - 260, top + 10, w - 250, top + 14))
    for i, name in enumerate(series):
        c = colours[i % len(colours)]
        label = "trained bit-width router" if name == "router" else "router: " + name
        out.append('<rect x="%d" y="%d" width="8" height="8" fill="%s"/><text x="%d" y="%d">%s</text>'
                   % (w - 264, top + 24 + 14 * i, c, w - 250, top + 32 + 14 * i, label))
    out.append("</svg>")
    open(args[1], "w").write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
