#!/usr/bin/env python3
"""ONNX Runtime latency of models on one seeded random input (BENCHMARKS.md).

usage: ort_latency.py [--runs R] [--threads T] MODEL [MODEL ...]

Each model: one untimed warm-up, then R timed runs on the same input; prints the median, min and
max in ms, single-threaded by default (intra- and inter-op threads = 1), CPU provider.
"""
import argparse
import time

import numpy as np
import onnxruntime as ort

TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    for path in a.models:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = a.threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        x = rng.uniform(-1, 1, size=shape).astype(TYPES[inp.type])
        sess.run(None, {inp.name: x})
        ms = []
        for _ in range(a.runs):
            t = time.perf_counter()
            sess.run(None, {inp.name: x})
            ms.append((time.perf_counter() - t) * 1e3)
        ms.sort()
        print(f"{path}\tORT {ort.__version__}\tthreads {a.threads}\truns {a.runs}\tmedian {ms[len(ms) // 2]:.2f} ms\tmin {ms[0]:.2f}\tmax {ms[-1]:.2f}")


if __name__ == "__main__":
    main()
