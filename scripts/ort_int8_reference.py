#!/usr/bin/env python3
"""ONNX Runtime's own int8 model of a network: what a user would otherwise ship.

usage: ort_int8_reference.py MODEL OUT --data DIR --preprocess SPEC.json
                             [--calib-samples 256] [--calib-select first|spread|last]
                             [--activation uint8|int8] [--method minmax|percentile|entropy]

Runs `onnxruntime.quantization.quantize_static` in the configuration ONNX Runtime recommends
for x86 CPUs: QDQ format, int8 weights per output channel (symmetric), uint8 activations
(asymmetric), calibrated on the same images onnx-dlq's `--calibrate` would take (the same
`--calib-samples` and `--calib-select` rule, in labels.csv order), after ORT's own
pre-processing (`quant_pre_process`: shape inference and graph optimisation). Evaluate the
result beside the original and an onnx-dlq model with `onnx-dlq verify ... --engine ort` on
images the calibration did not see.

Needs numpy, onnx, onnxruntime and pillow (scripts/requirements-bench.txt).
"""
import argparse
import csv
import json
import os
import sys
import tempfile

import numpy as np
import onnx
import onnx.version_converter
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image


def image_files(folder):
    labels = os.path.join(folder, "labels.csv")
    if os.path.exists(labels):
        with open(labels, newline="") as f:
            return [os.path.join(folder, row["file"]) for row in csv.DictReader(f)]
    exts = (".png", ".jpg", ".jpeg")
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.lower().endswith(exts))


def select(n, count, how):
    """The indices onnx-dlq's --calib-select takes (src/eval/seen.rs)."""
    count = min(count, n)
    if how == "first":
        return list(range(count))
    if how == "last":
        return list(range(n - count, n))
    return [((2 * j + 1) * n) // (2 * max(count, 1)) for j in range(count)]


def preprocess(path, spec):
    img = Image.open(path).convert("RGB")
    if "resize_shorter" in spec:
        s = spec["resize_shorter"]
        w, h = img.size
        if w < h:
            size = (s, round(h * s / w))
        else:
            size = (round(w * s / h), s)
        img = img.resize(size, Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32)
    if "center_crop" in spec:
        ch, cw = spec["center_crop"]
        top, left = (x.shape[0] - ch) // 2, (x.shape[1] - cw) // 2
        x = x[top:top + ch, left:left + cw]
    if spec.get("channel_order", "RGB") == "BGR":
        x = x[:, :, ::-1]
    x = x * spec.get("scale", 1.0)
    x = (x - np.array(spec["mean"], np.float32)) / np.array(spec["std"], np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def at_opset_13(path, tmp):
    """The model itself, or upgraded to opset 13 (onnx.version_converter) when it is older: the
    quantizer writes per-channel DequantizeLinear nodes, which need opset 13, and keeps an
    older model's opset (an invalid model). IR 3's weights listed as graph inputs are unlisted
    (from IR 4 they would be inputs a caller may feed, so never folded)."""
    model = onnx.load(path)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset >= 13:
        return path
    model = onnx.version_converter.convert_version(model, 13)
    inits = {t.name for t in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    model.ir_version = max(model.ir_version, 7)
    out = os.path.join(tmp, "opset13.onnx")
    onnx.save(model, out)
    return out


class Images(CalibrationDataReader):
    def __init__(self, files, spec):
        self.files, self.spec, self.i = files, spec, 0

    def get_next(self):
        if self.i >= len(self.files):
            return None
        x = preprocess(self.files[self.i], self.spec)
        self.i += 1
        return {self.spec["input"]: x}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--data", required=True)
    p.add_argument("--preprocess", required=True)
    p.add_argument("--calib-samples", type=int, default=256)
    p.add_argument("--calib-select", choices=["first", "spread", "last"], default="first")
    p.add_argument("--activation", choices=["uint8", "int8"], default="uint8")
    p.add_argument("--method", choices=["minmax", "percentile", "entropy"], default="minmax")
    a = p.parse_args()
    with open(a.preprocess) as f:
        spec = json.load(f)
    files = image_files(a.data)
    chosen = [files[i] for i in select(len(files), a.calib_samples, a.calib_select)]
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[a.method]
    with tempfile.TemporaryDirectory() as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        quant_pre_process(at_opset_13(a.model, tmp), pre)
        quantize_static(pre, a.out, Images(chosen, spec), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8 if a.activation == "uint8"
                        else QuantType.QInt8,
                        calibrate_method=method)
    onnx.checker.check_model(a.out)
    print(json.dumps({"model": a.model, "out": a.out, "bytes": os.path.getsize(a.out),
                      "original_bytes": os.path.getsize(a.model),
                      "calibration": {"folder": a.data, "count": len(chosen),
                                      "select": a.calib_select, "method": a.method},
                      "activation": a.activation}))


if __name__ == "__main__":
    sys.exit(main())
