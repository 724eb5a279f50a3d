#!/usr/bin/env python3
"""Latency and size of several models of one network in ONNX Runtime, alternating in one process.

usage: bench_int8.py [--threads 1] [--runs 200] [--warmup 30] [--json] [--lib LIBRARY]
                     ORIGINAL [NAME=]MODEL [[NAME=]MODEL ...]

Every model gets its own session (CPUExecutionProvider, ORT's default optimisation level,
intra_op_num_threads = T, sequential execution). One seeded random input of the model's shape
(symbolic dimensions = 1) feeds all of them; each round runs every model once in turn, so a
drift of the machine hits all alike. Prints per model: file bytes, how much smaller than the
original, median [min] latency in ms and the speed against the original and against the model
named `ort-int8` when there is one (ONNX Runtime's own int8 model, scripts/ort_int8_reference.py).
"""
import argparse
import json
import os
import time

import numpy as np
import onnxruntime as ort

from bench_models_ort import feed, make_session

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--lib", default=None, help="custom-op library for fused models")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("models", nargs="+")
    a = ap.parse_args()
    named = [("original", a.models[0])]
    for i, m in enumerate(a.models[1:]):
        name, _, path = m.rpartition("=")
        named.append((name or f"model{i + 1}", path))
    sessions = [make_session(p, a.threads, a.lib) for _, p in named]
    x = feed(sessions[0])
    times = [[] for _ in named]
    for r in range(a.warmup + a.runs):
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            s.run(None, x)
            if r >= a.warmup:
                times[i].append((time.perf_counter() - t0) * 1e3)
    med = [float(np.median(t)) for t in times]
    rows = []
    names = [n for n, _ in named]
    ref = names.index("ort-int8") if "ort-int8" in names else None
    for i, (name, path) in enumerate(named):
        size = os.path.getsize(path)
        rows.append({"name": name, "path": path, "bytes": size,
                     "smaller": os.path.getsize(named[0][1]) / size,
                     "ms": med[i], "min_ms": float(np.min(times[i])),
                     "vs_original": med[0] / med[i],
                     "vs_ort_int8": None if ref is None else med[ref] / med[i]})
    if a.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"onnxruntime {ort.__version__}; {a.threads} thread(s); median [min] of {a.runs} "
          f"alternating runs after {a.warmup} warm-up")
    print("| model | file bytes | smaller | ORT ms | faster than fp32 | time / ORT int8's |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        vs = "" if r["vs_ort_int8"] is None else f"{1 / r['vs_ort_int8']:.3f}"
        print(f"| {r['name']} | {r['bytes']:,} | {r['smaller']:.2f}× | {r['ms']:.3f} "
              f"[{r['min_ms']:.3f}] | {r['vs_original']:.2f}× | {vs} |")


if __name__ == "__main__":
    main()
