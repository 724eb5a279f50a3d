#!/usr/bin/env python3
"""Plots and the headline table from scripts/headline.py's JSON.

usage: plot_headline.py RESULTS.json [--svg-dir docs]

Writes, per model, `results-<model>.svg`: top-1 against file size and top-1 against ONNX
Runtime latency (both on log scales), every form and ONNX Runtime's own int8 model as points beside the fp32
original. Prints the headline Markdown table (README.md, BENCHMARKS.md). Standard library only.
"""
import argparse
import html
import json
import math
import os

LABELS = {"fp32": "fp32 original", "ort-int8": "ORT int8", "ops": "standard ops",
          "fused": "fused", "compact": "compact", "int8": "int8 (onnx-dlq)"}
COLOURS = {"fp32": "#444444", "ort-int8": "#d62728", "ops": "#9467bd", "fused": "#ff7f0e",
           "compact": "#2ca02c", "int8": "#1f77b4"}


def points(m):
    """(form, bytes, ms, top-1 %) for the original and every measured form."""
    yield "fp32", m["fp32"]["bytes"], m["fp32"]["ms"], 100 * m["fp32"]["top1"]
    for form, e in m["forms"].items():
        yield form, e["bytes"], e["ms"], 100 * e["accuracy"]["top1"]


def nice_range(lo, hi, log=False):
    if log:
        return 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))
    pad = (hi - lo) * 0.1 or 1
    return lo - pad, hi + pad


def panel(pts, x_of, x_label, log, ox, w, h, y_range, unit=lambda t: f"{t:g}"):
    """One scatter panel as SVG elements, its plot area at (ox, 20) of size w × h."""
    xs = [x_of(p) for p in pts]
    x0, x1 = nice_range(min(xs), max(xs), log)
    y0, y1 = y_range
    fx = (lambda v: ox + w * (math.log10(v / x0) / math.log10(x1 / x0))) if log else \
        (lambda v: ox + w * (v - x0) / (x1 - x0))
    fy = lambda v: 20 + h * (1 - (v - y0) / (y1 - y0))  # noqa: E731
    out = [f'<rect x="{ox}" y="20" width="{w}" height="{h}" fill="none" stroke="#999"/>']
    ticks = [10 ** k for k in range(round(math.log10(x0)), round(math.log10(x1)) + 1)] if log \
        else [x0 + (x1 - x0) * i / 4 for i in range(5)]
    for t in ticks:
        label = unit(t) if log else f"{t:.2f}"
        out.append(f'<text x="{fx(t):.1f}" y="{h + 36}" font-size="11" text-anchor="middle">'
                   f'{label}</text>')
    for i in range(5):
        v = y0 + (y1 - y0) * i / 4
        out.append(f'<text x="{ox - 4}" y="{fy(v) + 4:.1f}" font-size="11" text-anchor="end">'
                   f'{v:.1f}</text>')
    out.append(f'<text x="{ox + w / 2}" y="{h + 54}" font-size="12" text-anchor="middle">'
               f'{html.escape(x_label)}</text>')
    for i, p in enumerate(pts):
        x, y = fx(x_of(p)), fy(p[3])
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{COLOURS[p[0]]}"/>')
        # Labels alternate above and below their points, so that neighbours do not overlap.
        dy = -7 if i % 2 == 0 else 15
        out.append(f'<text x="{x + 7:.1f}" y="{y + dy:.1f}" font-size="11">'
                   f'{html.escape(LABELS[p[0]])}</text>')
    return out


def svg(name, m):
    pts = list(points(m))
    ys = [p[3] for p in pts]
    y_range = nice_range(min(ys), max(ys))
    w, h = 330, 240
    body = [f'<text x="20" y="14" font-size="13" font-weight="bold">{html.escape(m["name"])}: '
            f'top-1 % on held-out images</text>']
    body += panel(pts, lambda p: p[1], "file size (log scale)", True, 60, w, h, y_range,
                  unit=lambda t: f"{t / 1e6:g} MB")
    body += panel(pts, lambda p: p[2], "ONNX Runtime latency, 1 thread (log scale)", True,
                  60 + w + 70, w, h, y_range, unit=lambda t: f"{t:g} ms")
    width, height = 60 + 2 * w + 90, h + 70
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n'
            + "\n".join(body) + "\n</svg>\n")


def table(r):
    rows = ["| model | form | file bytes | smaller | top-1 (change) | agreement | ORT ms | "
            "time / ORT int8's |", "|---|---|---|---|---|---|---|---|"]
    for m in r["models"].values():
        f = m["fp32"]
        rows.append(f"| {m['name']} | fp32 original | {f['bytes']:,} | 1× | "
                    f"{100 * f['top1']:.2f}% | — | {f['ms']:.3f} | {f['time_vs_ort_int8']:.2f} |")
        for form, e in m["forms"].items():
            a = e["accuracy"]
            rows.append(
                f"| | {LABELS[form]} | {e['bytes']:,} | {f['bytes'] / e['bytes']:.2f}× | "
                f"{100 * a['top1']:.2f}% ({a['top1_change_points']:+.2f}) | "
                f"{100 * a['agreement']:.1f}% | {e['ms']:.3f} | {e['time_vs_ort_int8']:.2f} |")
        for form, why in m.get("refused", {}).items():
            rows.append(f"| | {LABELS[form]} | refused: {why} | | | | | |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--svg-dir", default=None)
    a = ap.parse_args()
    with open(a.results) as f:
        r = json.load(f)
    if a.svg_dir:
        for key, m in r["models"].items():
            path = os.path.join(a.svg_dir, f"results-{key}.svg")
            with open(path, "w") as f:
                f.write(svg(key, m))
    print(table(r))


if __name__ == "__main__":
    main()
