#!/usr/bin/env python3
"""The headline figures: every output form of the shared models beside the fp32 original and
ONNX Runtime's own int8 model, measured in one run and written as JSON.

usage: headline.py [--shared ../shared] [--bin target/debug/onnx-dlq] [--work target/headline]
                   [--models resnet20,resnet56,squeezenet] [--runs 200] OUT.json

Per model and form, one conversion with the settings a user would type (FORMS below), all
calibrated on the same images; ORT's int8 model from scripts/ort_int8_reference.py on those
images. Top-1 by `onnx-dlq verify --engine ort` on images no conversion saw: CIFAR-10 on the
2,000 `cifar10-test` images (calibration: 256 `cifar10-train` images spread over the classes);
SqueezeNet two-fold (calibrated on the first 256 of the 500 ImageNet-sample images and
evaluated on the other 244, then the other way round; figures pooled over the 488). Latency:
every model of one network alternating in one ONNX Runtime process (scripts/bench_int8.py, one
thread, batch 1); SqueezeNet's from the first fold's files. Conversions already in --work are
reused, so an interrupted run resumes. Needs the packages of scripts/requirements-bench.txt.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# Form name -> convert flags (besides --calibrate and the model's data flags).
# The fused form's budget is a latency budget timed in tract on this machine (what the native
# kernel is for), so its files, unlike the others, depend on the machine and its load.
FORMS = {
    "compact": ["--all", "--target-compression", "8"],
    "int8": ["--all", "--target-compression", "8", "--int8"],
    "ops": ["--target-speedup", "2"],
    "fused": ["--target-speedup", "1.2", "--form", "fused"],
}

CIFAR = {"calib": "cifar10-train", "select": "spread", "eval": "cifar10-test"}
MODELS = {
    "resnet20": dict(file="resnet20-cifar10.onnx", spec="resnet20-cifar10.preprocess.json",
                     name="ResNet-20", **CIFAR),
    "resnet56": dict(file="resnet56-cifar10.onnx", spec="resnet56-cifar10.preprocess.json",
                     name="ResNet-56", **CIFAR),
    "squeezenet": dict(file="squeezenet1.1.onnx", spec="squeezenet1.1.preprocess.json",
                       name="SqueezeNet 1.1", calib="imagenet-sample", select=None,
                       eval="imagenet-sample"),
}
SQ_CALIB = 256


def run(cmd, **kw):
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, **kw)


class Refused(Exception):
    """A conversion that ended in an error (a latency budget this machine cannot reach)."""


def folds(m):
    """(suffix, calibration selection, verify flags) per fold."""
    if m["select"]:
        return [("", m["select"], [])]
    return [("-first", "first", ["--skip", str(SQ_CALIB)]),
            ("-last", "last", ["--samples", str(500 - SQ_CALIB)])]


def convert(a, m, form, out, select):
    if os.path.exists(out):
        return
    d = lambda p: os.path.join(a.shared, p)  # noqa: E731
    try:
        run([a.bin, d("models/" + m["file"]), out + ".tmp.onnx", *FORMS[form], "--calibrate",
             d("data/" + m["calib"]), "--calib-samples", str(SQ_CALIB), "--calib-select",
             select, "--preprocess", d("models/" + m["spec"]), "--no-latency", "-q"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except subprocess.CalledProcessError as e:
        raise Refused(e.stderr.strip().splitlines()[-1]) from e
    os.replace(out + ".tmp.onnx", out)


def ort_int8(a, m, out, select):
    if os.path.exists(out):
        return
    d = lambda p: os.path.join(a.shared, p)  # noqa: E731
    run([sys.executable, os.path.join(HERE, "ort_int8_reference.py"), d("models/" + m["file"]),
         out + ".tmp.onnx", "--data", d("data/" + m["calib"]), "--preprocess",
         d("models/" + m["spec"]), "--calib-samples", str(SQ_CALIB), "--calib-select", select],
        stdout=subprocess.DEVNULL)
    os.replace(out + ".tmp.onnx", out)


def verify(a, m, path, flags):
    d = lambda p: os.path.join(a.shared, p)  # noqa: E731
    out = run([a.bin, "verify", d("models/" + m["file"]), path, "--data", d("data/" + m["eval"]),
               "--preprocess", d("models/" + m["spec"]), "--engine", "ort", "--runs", "1",
               "--json", "-q", *flags], capture_output=True, text=True).stdout
    r = json.loads(out)
    n = r["samples"]
    return {"samples": n, "original_correct": round(r["original"]["top1"] * n),
            "correct": round(r["converted"]["top1"] * n),
            "agreeing": round(r["top1_agreement"] * n)}


def pooled(per_fold):
    keys = ["samples", "original_correct", "correct", "agreeing"]
    s = {k: sum(f[k] for f in per_fold) for k in keys}
    s["top1"] = s["correct"] / s["samples"]
    s["original_top1"] = s["original_correct"] / s["samples"]
    s["top1_change_points"] = 100 * (s["correct"] - s["original_correct"]) / s["samples"]
    s["agreement"] = s["agreeing"] / s["samples"]
    s["folds"] = per_fold
    return s


def measure_model(a, key):
    m = MODELS[key]
    work = os.path.join(a.work, key)
    os.makedirs(work, exist_ok=True)
    entries, refused = {}, {}
    for form in ["ort-int8", *FORMS]:
        per_fold, files = [], []
        try:
            for suffix, select, vflags in folds(m):
                out = os.path.join(work, f"{form}{suffix}.onnx")
                if form == "ort-int8":
                    ort_int8(a, m, out, select)
                else:
                    convert(a, m, form, out, select)
                per_fold.append(verify(a, m, out, vflags))
                files.append(out)
        except Refused as e:
            refused[form] = str(e)
            continue
        entries[form] = {"files": [os.path.relpath(f, a.work) for f in files],
                         "bytes": os.path.getsize(files[0]),
                         "accuracy": pooled(per_fold)}
    original = os.path.join(a.shared, "models", m["file"])
    bench = run([sys.executable, os.path.join(HERE, "bench_int8.py"), "--runs", str(a.runs),
                 "--json", "--lib", a.lib, original,
                 *[f"{f}={os.path.join(a.work, e['files'][0])}" for f, e in entries.items()]],
                capture_output=True, text=True).stdout
    times = {r["name"]: r for r in json.loads(bench)}
    for f, e in entries.items():
        e["ms"] = times[f]["ms"]
        e["vs_fp32"] = times[f]["vs_original"]
        e["time_vs_ort_int8"] = 1 / times[f]["vs_ort_int8"]
    fp32 = {"bytes": os.path.getsize(original), "ms": times["original"]["ms"],
            "time_vs_ort_int8": 1 / times["original"]["vs_ort_int8"],
            "top1": entries["int8"]["accuracy"]["original_top1"]}
    return {"name": m["name"], "fp32": fp32, "forms": entries, "refused": refused,
            "settings": {f: " ".join(v) for f, v in FORMS.items()}}


def machine():
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    field = lambda k: next((l.split(":", 1)[1].strip() for l in lscpu.splitlines()  # noqa: E731
                            if l.startswith(k + ":")), "")
    flags = [f for f in field("Flags").split() if f.startswith(("avx", "fma", "amx"))]
    import onnxruntime
    return {"cpu": field("Model name"), "cpus": field("CPU(s)"), "flags": flags,
            "onnxruntime": onnxruntime.__version__,
            "date": datetime.date.today().isoformat()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.path.join(HERE, "..", "..", "shared"))
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "target", "debug", "onnx-dlq"))
    ap.add_argument("--lib", default=None, help="libonnx_dlq_ort (default: beside --bin)")
    ap.add_argument("--work", default=os.path.join(HERE, "..", "target", "headline"))
    ap.add_argument("--models", default="resnet20,resnet56,squeezenet")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("out")
    a = ap.parse_args()
    a.lib = a.lib or os.path.join(os.path.dirname(os.path.abspath(a.bin)), "libonnx_dlq_ort.so")
    result = {"machine": machine(), "models": {}}
    for key in a.models.split(","):
        result["models"][key] = measure_model(a, key)
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
