#!/usr/bin/env python3
"""Whole-model latency in ONNX Runtime: original against converted, side by side in one run.

usage: bench_models_ort.py --lib LIBRARY [--threads 1,2] [--levels all,extended] [--runs 200]
                           [--warmup 30] [--json] ORIGINAL CONVERTED [ORIGINAL CONVERTED ...]

Each model gets its own session (CPUExecutionProvider, intra_op_num_threads = T,
inter_op_num_threads = 1, sequential execution, graph optimisation level `all` = ORT's default,
which includes the NCHWc layout transformer on x86 with AVX2/AVX-512, or `extended` = without
layout transformations);
converted models register LIBRARY (libonnx_dlq_ort) for their DlqConv nodes. One random input
of the model's shape (symbolic dimensions = 1) feeds both. Runs alternate between the two
models (warm-up first), so drifts of the machine hit both alike; the figure is the median
[minimum] in ms, and the ratio is original / converted (above 1: the converted model is faster).
"""
import argparse
import json
import time

import numpy as np
import onnxruntime as ort

TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


LEVELS = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}


def make_session(path, threads, library, level="all"):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = LEVELS[level]
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if library:
        opts.register_custom_ops_library(library)
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def feed(sess, seed=0):
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    x = np.random.default_rng(seed).standard_normal(shape).astype(TYPES[inp.type])
    return {inp.name: x}


def bench_pair(original, converted, threads, library, runs, warmup, level):
    a = make_session(original, threads, None, level)
    b = make_session(converted, threads, library, level)
    x = feed(a)
    times = {"original": [], "converted": []}
    for i in range(warmup + runs):
        for name, sess in (("original", a), ("converted", b)):
            t0 = time.perf_counter()
            sess.run(None, x)
            dt = (time.perf_counter() - t0) * 1e3
            if i >= warmup:
                times[name].append(dt)
    med = {k: float(np.median(v)) for k, v in times.items()}
    low = {k: float(np.min(v)) for k, v in times.items()}
    return {"original": original, "converted": converted, "threads": threads, "level": level,
            "original_ms": med["original"], "original_min_ms": low["original"],
            "converted_ms": med["converted"], "converted_min_ms": low["converted"],
            "speedup": med["original"] / med["converted"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--threads", default="1")
    ap.add_argument("--levels", default="all")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("models", nargs="+")
    args = ap.parse_args()
    if len(args.models) % 2:
        ap.error("models come in pairs: ORIGINAL CONVERTED")
    rows = []
    for level in args.levels.split(","):
        for t in [int(v) for v in args.threads.split(",")]:
            for orig, conv in zip(args.models[::2], args.models[1::2]):
                rows.append(bench_pair(orig, conv, t, args.lib, args.runs, args.warmup, level))
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"onnxruntime {ort.__version__}; median [min] of {args.runs} runs after {args.warmup} warm-up, alternating")
    print("| converted model | optimisation level | threads | ORT original ms | ORT converted ms | speed-up |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['converted']} | {r['level']} | {r['threads']} | {r['original_ms']:.3f} [{r['original_min_ms']:.3f}] | "
              f"{r['converted_ms']:.3f} [{r['converted_min_ms']:.3f}] | **{r['speedup']:.2f}×** |")


if __name__ == "__main__":
    main()
