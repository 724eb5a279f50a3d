#!/usr/bin/env python3
"""Cross-check helper for the int8 output's tests: what ONNX Runtime makes of a QDQ model.

usage: ort_int8_check.py MODEL INPUT.npy INT8_OUT.npy REFERENCE_OUT.npy

Checks the model with onnx.checker (full check), then
- loads it at ONNX Runtime's default optimisation level with `optimized_model_filepath` set and
  prints, as JSON, the optimised graph's operator counts (`ops`), the float Conv/Gemm/MatMul
  nodes left (`float_layers`: they did not become integer kernels), and the nodes left of a
  compact-form kernel's rebuilding (`rebuild_nodes`: named `<layer>/dlq/…`, none when folded);
- runs the model on INPUT.npy twice: as ONNX Runtime deploys it (integer kernels) into
  INT8_OUT.npy, and with every graph optimisation disabled into REFERENCE_OUT.npy: each
  QuantizeLinear / DequantizeLinear then runs as written, around float operators, which is the
  float model computed with the same quantized weights and activations;
- prints the scale of the DequantizeLinear that writes the first graph output (`output_scale`,
  null when none does), the unit of the tests' int8 tolerance.
"""
import collections
import json
import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

ort.set_default_logger_severity(3)  # the NCHWc serialisation warning is expected

FLOAT_LAYERS = {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"}


def session(path, level, optimized=None):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.intra_op_num_threads = 1
    if optimized:
        opts.optimized_model_filepath = optimized
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def output_scale(model):
    out = model.graph.output[0].name
    inits = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and out in n.output and n.input[1] in inits:
            return float(numpy_helper.to_array(inits[n.input[1]]).reshape(-1)[0])
    return None


def main():
    model_path, input_path, int8_path, reference_path = sys.argv[1:5]
    onnx.checker.check_model(model_path, full_check=True)
    x = np.load(input_path).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        optimized_path = os.path.join(tmp, "optimized.onnx")
        fast = session(model_path, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, optimized_path)
        optimized = onnx.load(optimized_path)
    name = fast.get_inputs()[0].name
    np.save(int8_path, fast.run(None, {name: x})[0].astype(np.float32))
    plain = session(model_path, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    np.save(reference_path, plain.run(None, {name: x})[0].astype(np.float32))
    nodes = optimized.graph.node
    print(json.dumps({
        "ops": collections.Counter(n.op_type for n in nodes),
        "float_layers": [n.name or n.output[0] for n in nodes if n.op_type in FLOAT_LAYERS],
        "rebuild_nodes": [n.name for n in nodes if "/dlq/" in (n.name or "")],
        "output_scale": output_scale(onnx.load(model_path)),
    }))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # one line for the test's assertion message
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
