#!/usr/bin/env python3
"""Clustering speed against scikit-learn, same machine, same run (BENCHMARKS.md).

For every `expand3x3` layer of the shared SqueezeNet at ratio rho, cut the kernel into subspaces
of N' = 8 input channels exactly as onnx-dlq does (columns = (output channel, kernel position)),
run scikit-learn KMeans(n_init=1) with K_vq = round(p^2 M / rho) on each, and time the total;
then run `cargo bench --bench cluster` (onnx-dlq VQ and DL on the same layers and K) and print
both figures and the ratio.

usage: scripts/bench_cluster.sh [--ratio 20] [--reps 3]
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import onnx
from onnx import numpy_helper
from sklearn.cluster import KMeans

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def subspaces(w, width=8):
    m, n, kh, kw = w.shape
    for s in range(0, n, width):
        yield w[:, s : s + width].transpose(0, 2, 3, 1).reshape(m * kh * kw, -1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "..", "shared", "models", "squeezenet1.1.onnx"))
    ap.add_argument("--ratio", type=float, default=20.0)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    model = onnx.load(a.model)
    inits = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in model.graph.initializer}
    layers = [(n.output[0], inits[n.input[1]]) for n in model.graph.node if n.op_type == "Conv" and "expand3x3" in n.output[0]]
    times = []
    errors = []
    for _ in range(a.reps):
        started = time.perf_counter()
        errors = []
        for _, w in layers:
            m, n, kh, kw = w.shape
            k = max(1, round(kh * kw * m / a.ratio))
            rec = np.zeros_like(w)
            for s, x in enumerate(subspaces(w)):
                km = KMeans(n_clusters=k, n_init=1, random_state=0).fit(x)
                rec[:, s * 8 : s * 8 + x.shape[1]] = km.cluster_centers_[km.labels_].reshape(m, kh, kw, -1).transpose(0, 3, 1, 2)
            errors.append(float(np.linalg.norm(w - rec) / np.linalg.norm(w)))
        times.append(time.perf_counter() - started)
    sk = float(np.median(times))
    print(f"scikit-learn KMeans(n_init=1): {len(layers)} layers, median {sk:.3f}s over {a.reps} runs {['%.3f' % t for t in times]}")
    print(f"scikit-learn relative errors: {['%.4f' % e for e in errors]}")
    cmd = ["cargo", "bench", "--quiet", "--bench", "cluster", "--", a.model, "--ratio", str(a.ratio), "--reps", str(a.reps)]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    ours = json.loads(out.stdout.strip().splitlines()[-1])
    vq, dl = ours["vq"]["seconds_median"], ours["dl"]["seconds_median"]
    print(f"onnx-dlq VQ: median {vq:.3f}s; relative errors {['%.4f' % e for e in ours['vq']['relative_errors']]}")
    print(f"onnx-dlq DL: median {dl:.3f}s; relative errors {['%.4f' % e for e in ours['dl']['relative_errors']]}")
    print(f"speed-up of onnx-dlq VQ over scikit-learn: {sk / vq:.1f}x (threads: {ours['threads']})")


if __name__ == "__main__":
    sys.exit(main())
