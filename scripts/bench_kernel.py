#!/usr/bin/env python3
"""Native DlqConv kernel against ONNX Runtime's dense Conv, side by side (issue 14).

Builds `crates/dlq-kernels`' example `bench_layer` in release (the portable build, and a second
one with RUSTFLAGS="-C target-cpu=native" for orientation), builds a single-Conv ONNX model of
each layer's shape with the `onnx` package, times it in ONNX Runtime with one thread (warm-up,
then the median of many runs), runs the Rust example for the same shape at each ρ and prints a
Markdown table plus the machine's ceilings (`bench_layer --ceiling`). With `--threads 2` (the
default) it also times ORT with intra_op_num_threads = 2 and the kernel's `run_parallel` on 2
threads (a persistent spinning pool, as ORT's, in bench_layer). `--before BINARY` adds a column
timed with another build of bench_layer (e.g. the previous commit's), run row by row in the same
process as the others.

Layers: SqueezeNet `fire8/expand3x3` (M=256, N=64, 3x3, pad 1, 13x13) at ρ = 10, 20 and the
ResNet-20 layer3 shape (M=N=64, 3x3, pad 1, 8x8) at ρ = 4, 8, 16; DL with N' = 8, c = 3, α = 2
and the paper's sizes K_vq = round(kh·kw·M/ρ), K = c·K_vq, L = floor((N·K_vq − α·S·K)/N)
(a ρ with L < α is skipped). Run through scripts/bench_kernel.sh (pinned venv).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
LAYERS = [
    # name, M, N, H(=W), kernel, pad, ρ values
    ("SqueezeNet fire8/expand3x3", 256, 64, 13, 3, 1, [10, 20]),
    ("ResNet-20 layer3 3x3", 64, 64, 8, 3, 1, [4, 8, 16]),
]
SUBSPACE, C, ALPHA = 8, 3, 2


def paper_sizes(m, n, k, rho):
    """(K_vq, K, L) by the paper's rules, or None when L < α."""
    s = -(-n // SUBSPACE)
    k_vq = round(k * k * m / rho)
    reps = C * k_vq
    atoms = (n * k_vq - ALPHA * s * reps) // n
    return None if atoms < ALPHA else (k_vq, reps, atoms)


def cargo_build(target_dir, rustflags=None):
    env = dict(os.environ, CARGO_TARGET_DIR=str(target_dir))
    if rustflags:
        env["RUSTFLAGS"] = rustflags
    cmd = ["cargo", "build", "--release", "-p", "dlq-kernels", "--examples"]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    return Path(target_dir) / "release" / "examples" / "bench_layer"


def conv_model(m, n, hw, k, pad, seed=0):
    rng = np.random.default_rng(seed)
    weight = rng.uniform(-1, 1, (m, n, k, k)).astype(np.float32)
    out_hw = hw + 2 * pad - k + 1
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[k, k], pads=[pad] * 4)],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, m, out_hw, out_hw])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def time_ort(model_bytes, n, hw, warmup, runs, threads=1):
    """Median and min ms of `session.run` (`threads` intra-op threads, one inter-op thread)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).uniform(-1, 1, (1, n, hw, hw)).astype(np.float32)
    feeds = {"x": x}
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(runs):
        t = time.perf_counter_ns()
        sess.run(None, feeds)
        times.append((time.perf_counter_ns() - t) / 1e6)
    return statistics.median(times), min(times)


def run_kernel(binary, m, n, hw, k, pad, sizes, reps, threads=None):
    _, reps_k, atoms = sizes
    cmd = [str(binary), "--m", m, "--n", n, "--h", hw, "--w", hw, "--k", k, "--pad", pad,
           "--subspace", SUBSPACE, "--l", atoms, "--k-reps", reps_k, "--alpha", ALPHA,
           "--reps", reps, "--dense-reps", 1]
    if threads is not None:
        cmd += ["--threads", threads]
    out = subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=500, help="timed runs per measurement")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--no-native", action="store_true", help="skip the target-cpu=native build")
    ap.add_argument("--threads", type=int, default=2,
                    help="also time ORT and the kernel on this many threads (1: skip)")
    ap.add_argument("--before", help="another bench_layer binary, timed as a 'before' column")
    args = ap.parse_args()

    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    portable = cargo_build(target)
    native = None if args.no_native else cargo_build(target / "native", "-C target-cpu=native")

    with open("/proc/loadavg") as f:
        print(f"load average before: {f.read().split()[0:3]}")
    print(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, numpy {np.__version__}; "
          f"{args.runs} timed runs after {args.warmup} warm-up runs; times in ms, median [min]\n")
    t = args.threads
    head = "| layer | ρ | K_vq / K / L | ORT dense ms |"
    rule = "|---|---|---|---|"
    if args.before:
        head += " before: kernel ms |"
        rule += "---|"
    head += (" kernel ms | speed-up (ORT/kernel) | kernel GFLOP/s | phases Z / R / adds ms |")
    rule += "---|---|---|---|"
    if t > 1:
        head += f" ORT {t} threads ms | kernel {t} threads ms | speed-up {t} threads |"
        rule += "---|---|---|"
    if native:
        head += " kernel native ms | speed-up native | native GFLOP/s |"
        rule += "---|---|---|"
    print(head)
    print(rule)
    rows = []
    for name, m, n, hw, k, pad, rhos in LAYERS:
        model = conv_model(m, n, hw, k, pad)
        for rho in rhos:
            sizes = paper_sizes(m, n, k, rho)
            if sizes is None:
                print(f"| {name} | {rho} | L < α: skipped | | | | | |")
                continue
            ort_med, ort_min = time_ort(model, n, hw, args.warmup, args.runs)
            res = run_kernel(portable, m, n, hw, k, pad, sizes, args.runs, t)
            line = (f"| {name} | {rho} | {sizes[0]} / {sizes[1]} / {sizes[2]} "
                    f"| {ort_med:.3f} [{ort_min:.3f}] ")
            if args.before:
                bef = run_kernel(args.before, m, n, hw, k, pad, sizes, args.runs)
                line += f"| {bef['median_ms']:.3f} [{bef['min_ms']:.3f}] "
            line += (f"| {res['median_ms']:.3f} [{res['min_ms']:.3f}] "
                     f"| {ort_med / res['median_ms']:.2f}× | {res['gflops']:.1f} "
                     f"| {res['phase_z_ms']:.3f} / {res['phase_r_ms']:.3f} / "
                     f"{res['phase_taps_ms']:.3f} |")
            if t > 1:
                ort_t, ort_t_min = time_ort(model, n, hw, args.warmup, args.runs, t)
                assert res["threads_bit_identical"], "run_parallel differs from run"
                line += (f" {ort_t:.3f} [{ort_t_min:.3f}] "
                         f"| {res['threads_median_ms']:.3f} [{res['threads_min_ms']:.3f}] "
                         f"| {ort_t / res['threads_median_ms']:.2f}× |")
            if native:
                nat = run_kernel(native, m, n, hw, k, pad, sizes, args.runs)
                line += (f" {nat['median_ms']:.3f} [{nat['min_ms']:.3f}] "
                         f"| {ort_med / nat['median_ms']:.2f}× | {nat['gflops']:.1f} |")
            print(line, flush=True)
            rows.append((name, rho, ort_med, res))
    print()
    for name, rho, ort_med, res in rows:
        dense_gflops = 2 * res["dense_multiplications"] / (ort_med * 1e-3) / 1e9
        print(f"- {name} ρ={rho}: paper multiplications {res['multiplications']:.0f} "
              f"(dense {res['dense_multiplications']:.0f}), look-up adds "
              f"{res['additions']:.0f}; ORT dense at {dense_gflops:.1f} GFLOP/s; naive f64 "
              f"reference dense_conv {res['naive_dense_reference_ms']:.1f} ms")
    ceil = subprocess.run([str(portable), "--ceiling"], check=True, capture_output=True,
                          text=True)
    print("\nceiling (bench_layer --ceiling, portable build):", ceil.stdout.strip())
    with open("/proc/loadavg") as f:
        print(f"load average after: {f.read().split()[0:3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
