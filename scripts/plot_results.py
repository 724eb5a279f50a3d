#!/usr/bin/env python3
"""Plots the stage-wise top-1 tables of docs/RESULTS.md (the paper's Experiment II) as one SVG.

Reads every "top-1 %" table under each "## <model>" section (rows: method, rho, one value per
cumulative stage) and draws top-1 against the number of converted stages, one panel per model,
one line per (method, rho): DL solid, VQ dashed. The original's top-1 (from the section's text,
"top-1 / top-5 through tract are X% / Y%") is the dotted line at stage 0.

usage: scripts/plot_results.sh [--out docs/results-top1.svg]
"""
import argparse
import os
import re
import sys

import matplotlib

matplotlib.use("svg")
matplotlib.rcParams["svg.hashsalt"] = "onnx-dlq"  # stable element ids: reproducible SVG
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def sections(text):
    parts = re.split(r"^## ", text, flags=re.M)
    for p in parts[1:]:
        title, _, body = p.partition("\n")
        yield title.strip(), body


def top1_rows(body):
    rows = {}
    for m in re.finditer(r"^top-1 %\n\n\|[^\n]*\n\|[-| ]+\n((?:\|[^\n]*\n)+)", body, flags=re.M):
        for line in m.group(1).strip().splitlines():
            cells = [c.strip() for c in line.strip("|").split("|")]
            method, rho, values = cells[0], cells[1], [float(v) for v in cells[2:]]
            rows[(method, rho)] = values
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default=os.path.join(ROOT, "docs", "RESULTS.md"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "results-top1.svg"))
    a = ap.parse_args()
    text = open(a.results, encoding="utf-8").read()
    panels = []
    for title, body in sections(text):
        rows = top1_rows(body)
        if not rows:
            continue
        base = re.search(r"top-1\s+/\s+top-5\s+through\s+tract\s+are\s+([0-9.]+)%", body)
        panels.append((title, rows, float(base.group(1)) if base else None))
    if not panels:
        sys.exit(f"no top-1 tables in {a.results}")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (title, rows, base) in zip(axes[0], panels):
        colours = {}
        for (method, rho), values in sorted(rows.items(), key=lambda kv: (float(kv[0][1]), kv[0][0])):
            c = colours.setdefault(rho, f"C{len(colours)}")
            xs = list(range(0, len(values) + 1))
            ys = ([base] if base is not None else [float("nan")]) + values
            ax.plot(xs, ys, color=c, linestyle="-" if method == "DL" else "--", marker="o" if method == "DL" else "s",
                    markersize=3, label=f"{method} ρ={rho}")
        if base is not None:
            ax.axhline(base, color="grey", linestyle=":", linewidth=1)
        ax.set_title(title.split(",")[0], fontsize=10)
        ax.set_xlabel("stages converted (cumulative)")
        ax.set_xticks(range(0, max(len(v) for v in rows.values()) + 1))
        ax.set_ylabel("top-1 %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle("Top-1 after each stage, no fine-tuning (docs/RESULTS.md)", fontsize=11)
    fig.tight_layout()
    # Fixed metadata so the SVG is reproducible.
    fig.savefig(a.out, metadata={"Date": None}, format="svg")
    print(f"wrote {a.out} ({len(panels)} panels)")


if __name__ == "__main__":
    sys.exit(main())
