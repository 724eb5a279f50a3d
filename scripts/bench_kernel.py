#!/usr/bin/env python3
"""Native DlqConv kernel against ONNX Runtime's dense Conv, side by side.

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

`--suite layers` instead times every SqueezeNet 1.1 expand3x3 (fire2..fire9) and the ResNet-20
layer1/2/3 stride-1 3x3 convolutions at ρ = 4, 8, 16, and prints one compact table: ORT's dense
Conv on 1 and 2 intra-op threads, tract's dense Conv (1 thread, with `--tract BINARY`: the
project's `onnx-dlq verify M M --runs R --json` on the same single-Conv model, once per layer,
right before that layer's rows), the kernel's `run` (1 thread) and `run_parallel` on 2 threads
(a persistent spinning pool, and scoped threads spawned per `par` call), and the ratios. Each
row (and each tract measurement) is repeated, up to `--tries` times, while other processes used
more than `--max-foreign` % of the machine's CPU time during it (/proc/stat busy jiffies minus
this process's and its children's); the last column gives that share and the number of tries.
With `--passes P` the whole table is measured P times in a row and a last table gives, per cell,
the median of the P medians [the min of the P mins] (slow phases of the shared host lasting
seconds, invisible in /proc/stat, otherwise move single rows).
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
# The layers suite (`--suite layers`): name, M, N, H(=W), kernel, pad, ρ values.
LAYERS_RHOS = [4, 8, 16]
LAYERS_LAYERS = [
    (f"SqueezeNet {f}/expand3x3", m, n, hw, 3, 1, LAYERS_RHOS)
    for f, m, n, hw in [("fire2", 64, 16, 55), ("fire3", 64, 16, 55),
                        ("fire4", 128, 32, 27), ("fire5", 128, 32, 27),
                        ("fire6", 192, 48, 13), ("fire7", 192, 48, 13),
                        ("fire8", 256, 64, 13), ("fire9", 256, 64, 13)]
] + [
    (f"ResNet-20 {name} 3x3", c, c, hw, 3, 1, LAYERS_RHOS)
    for name, c, hw in [("layer1", 16, 32), ("layer2", 32, 16), ("layer3", 64, 8)]
]
SUBSPACE, C, ALPHA = 8, 3, 2


def subspace(n):
    """N′ = 8, or N when N < 8."""
    return min(SUBSPACE, n)


def paper_sizes(m, n, k, rho):
    """(K_vq, K, L) by the paper's rules, or None when L < α."""
    s = -(-n // subspace(n))
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
           "--subspace", subspace(n), "--l", atoms, "--k-reps", reps_k, "--alpha", ALPHA,
           "--reps", reps, "--dense-reps", 1]
    if threads is not None:
        cmd += ["--threads", threads]
    out = subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_tract(binary, model_bytes, name, runs):
    """tract's dense Conv, 1 thread: `onnx-dlq verify M M --runs R --json -q` on the single-Conv
    model (verify times the original and the "converted" model, here the same file, one after the
    other in one process); returns the original's (median, min) ms."""
    path = Path("/tmp") / ("bench_kernel_" + "".join(ch if ch.isalnum() else "_" for ch in name)
                           + ".onnx")
    path.write_bytes(model_bytes)
    out = subprocess.run([str(binary), "verify", str(path), str(path), "--runs", str(runs),
                          "--json", "-q"], check=True, capture_output=True, text=True)
    lat = json.loads(out.stdout)["original"]["latency_ms"]
    return lat["median"], lat["min"]


def busy_jiffies(seconds=2.0):
    """Busy and total jiffies over all CPUs in `seconds` (/proc/stat): the load of every
    process on the machine, which a container's load average may not show."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]
    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return (t1 - t0) - (i1 - i0), t1 - t0


def cpu_jiffies():
    """(machine busy jiffies, jiffies of this process and its waited-for children)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    own = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return sum(v) - v[3] - v[4], own


def quiet(measure, max_foreign, tries):
    """Calls `measure()` until the other processes on the machine used at most `max_foreign` %
    of the CPU time available during the call (machine busy jiffies minus this process's and its
    children's, over wall time × CPUs), at most `tries` times; returns (result, foreign %,
    calls made). The last result is kept when no call was quiet enough."""
    cpus = os.cpu_count() or 1
    hz = os.sysconf("SC_CLK_TCK")
    for attempt in range(1, tries + 1):
        busy0, own0 = cpu_jiffies()
        t0 = time.monotonic()
        result = measure()
        wall = time.monotonic() - t0
        busy1, own1 = cpu_jiffies()
        foreign = max(0, (busy1 - busy0) - (own1 - own0))
        pct = 100.0 * foreign / max(1.0, wall * hz * cpus)
        if pct <= max_foreign:
            break
    return result, pct, attempt


def load_line(when):
    with open("/proc/loadavg") as f:
        avg = " ".join(f.read().split()[0:3])
    busy, total = busy_jiffies()
    return f"load average {when}: {avg}; /proc/stat: {busy} of {total} jiffies busy over 2 s"


def suite_layers(args, portable):
    """The layers table (see the module docstring). With `--passes P` the whole table is
    measured P times, one pass after the other (each printed as it runs), and the final table
    gives per cell the median of the P medians [the min of the P mins]."""
    print(load_line("before"))
    print(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, numpy {np.__version__}; "
          f"{args.runs} timed runs after {args.warmup} warm-up runs (tract: {args.runs} runs); "
          f"times in ms, median [min]\n")
    head = ("| layer | ρ | K_vq / K / L | ORT 1 thr | ORT 2 thr | tract 1 thr | kernel 1 thr "
            "| kernel 2 thr (pool) | kernel 2 thr (scoped) | ORT/kernel 1 thr "
            "| ORT/kernel 2 thr | tract/kernel 1 thr | other load % (tries) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    simd = set()
    cells = {}  # (layer index, rho) -> list over passes of (ort1, ort2, tract, k1, k2, scoped)
    loads = {}  # (layer index, rho) -> list over passes of "pct (tries)" notes
    for p in range(args.passes):
        print(f"pass {p + 1} of {args.passes}:\n{head}", flush=True)
        for li, (name, m, n, hw, k, pad, rhos) in enumerate(LAYERS_LAYERS):
            model = conv_model(m, n, hw, k, pad)
            tr, tr_pct, tr_tries = None, 0.0, 0
            if args.tract:
                tr, tr_pct, tr_tries = quiet(
                    lambda: time_tract(args.tract, model, name, args.runs),
                    args.max_foreign, args.tries)
            for rho in rhos:
                sizes = paper_sizes(m, n, k, rho)
                if sizes is None:
                    continue

                def row():
                    return (time_ort(model, n, hw, args.warmup, args.runs, 1),
                            time_ort(model, n, hw, args.warmup, args.runs, 2),
                            run_kernel(portable, m, n, hw, k, pad, sizes, args.runs, 2))
                (ort1, ort2, res), pct, tries = quiet(row, args.max_foreign, args.tries)
                assert res["threads_bit_identical"], "run_parallel differs from run"
                simd.add(res["simd"])
                meas = (ort1, ort2, tr,
                        (res["median_ms"], res["min_ms"]),
                        (res["threads_median_ms"], res["threads_min_ms"]),
                        (res["threads_scoped_median_ms"], res["threads_scoped_min_ms"]))
                note = f"{pct:.1f} ({tries})"
                if tr and rho == rhos[0]:
                    note += f"; tract {tr_pct:.1f} ({tr_tries})"
                cells.setdefault((li, rho), []).append(meas)
                loads.setdefault((li, rho), []).append(note)
                print(table_row(LAYERS_LAYERS[li], rho, sizes, [meas], note,
                                rho == rhos[0]), flush=True)
        print()
    if args.passes > 1:
        print(f"median of the {args.passes} passes' medians [min of their mins]:\n{head}")
        for (li, rho), meas in cells.items():
            layer = LAYERS_LAYERS[li]
            sizes = paper_sizes(layer[1], layer[2], layer[4], rho)
            print(table_row(layer, rho, sizes, meas, " / ".join(loads[(li, rho)]),
                            rho == layer[6][0]))
    print(f"\nkernel SIMD level: {', '.join(sorted(simd))}")
    ceil = subprocess.run([str(portable), "--ceiling"], check=True, capture_output=True,
                          text=True)
    print("ceiling (bench_layer --ceiling):", ceil.stdout.strip())
    print(load_line("after"))
    return 0


def table_row(layer, rho, sizes, meas, note, first):
    """One Markdown row from one or more passes' measurements (median of medians [min of mins])."""
    name, m, n, hw = layer[:4]

    def agg(i):
        vals = [x[i] for x in meas if x[i] is not None]
        if not vals:
            return None
        return statistics.median(v[0] for v in vals), min(v[1] for v in vals)

    ort1, ort2, tr, k1, k2, sc = (agg(i) for i in range(6))
    cell = lambda v: f"{v[0]:.3f} [{v[1]:.3f}]" if v else "–"
    label = f"{name} (M {m}, N {n}, {hw}×{hw})" if first else name
    tract_ratio = f"{tr[0] / k1[0]:.2f}×" if tr else "–"
    return (f"| {label} | {rho} | {sizes[0]} / {sizes[1]} / {sizes[2]} | {cell(ort1)} "
            f"| {cell(ort2)} | {cell(tr)} | {cell(k1)} | {cell(k2)} | {cell(sc)} "
            f"| {ort1[0] / k1[0]:.2f}× | {ort2[0] / k2[0]:.2f}× | {tract_ratio} | {note} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=500, help="timed runs per measurement")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--no-native", action="store_true", help="skip the target-cpu=native build")
    ap.add_argument("--threads", type=int, default=2,
                    help="also time ORT and the kernel on this many threads (1: skip)")
    ap.add_argument("--before", help="another bench_layer binary, timed as a 'before' column")
    ap.add_argument("--suite", choices=["default", "layers"], default="default",
                    help="layers: every SqueezeNet expand3x3 and ResNet-20 3x3 layer, ρ 4/8/16")
    ap.add_argument("--tract", help="an onnx-dlq binary: add tract's dense Conv (layers suite)")
    ap.add_argument("--passes", type=int, default=1, help="layers suite: measure the whole "
                    "table this many times; the last table gives the median of the medians")
    ap.add_argument("--max-foreign", type=float, default=3.0,
                    help="layers suite: re-measure a row while other processes used more than "
                         "this %% of the machine's CPU time during it")
    ap.add_argument("--tries", type=int, default=4, help="layers suite: at most this many "
                    "measurements per row (the last one is printed if none was quiet)")
    args = ap.parse_args()

    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    portable = cargo_build(target)
    if args.suite == "layers":
        return suite_layers(args, portable)
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
