#!/usr/bin/env python3
"""Cross-check helper for the int8 output's tests: what ONNX Runtime makes of a QDQ model.

usage: ort_int8_check.py MODEL INPUT.npy INT8_OUT.npy REFERENCE_OUT.npy

Checks the model with onnx.checker (full check), then
- loads it at ONNX Runtime's default optimisation level with `optimized_model_filepath` set and
  prints, as JSON, the optimised graph's operator counts (`ops`), the float Conv/Gemm/MatMul
  nodes left (`float_layers`: they did not become integer kernels), and the nodes left of a
  compact-form kernel's rebuilding (`rebuild_nodes`: reading a codebook initializer
  `<layer>/dlq/…` or a rebuilt tensor `dlq/<k>`; none when the engine folded them);
- runs the model on INPUT.npy twice: as ONNX Runtime deploys it (integer kernels) into
  INT8_OUT.npy, and with every graph optimisation disabled into REFERENCE_OUT.npy: each
  QuantizeLinear / DequantizeLinear then runs as written, around float operators, which is the
  float model computed with the same quantized weights and activations;
- prints the scale of the DequantizeLinear that writes the first graph output, else of the last
  activation DequantizeLinear (`output_scale`), the unit of the tests' int8 tolerance, and
  whether the first output is quantized at all (`output_quantized`: false when the model's
  head writes float).
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


def rebuilt(name, inits):
    """A codebook initializer (`<layer>/dlq/…`) or a tensor of a kernel's rebuilding (`dlq/<k>`):
    after folding, no node reads either."""
    return name.startswith("dlq/") or (name in inits and "/dlq/" in name)


def output_quantized(model):
    """Whether a DequantizeLinear writes the first output (else the model's head is float)."""
    out = model.graph.output[0].name
    return any(n.op_type == "DequantizeLinear" and out in n.output for n in model.graph.node)


def output_scale(model):
    """The scale of the DequantizeLinear writing the first output, else of the graph's last
    activation DequantizeLinear (a float Softmax after it changes values by at most as much)."""
    out = model.graph.output[0].name
    inits = {t.name: t for t in model.graph.initializer}
    scales = [(n, inits[n.input[1]]) for n in model.graph.node
              if n.op_type == "DequantizeLinear" and n.input[1] in inits
              and len(inits[n.input[1]].dims) == 0 and n.input[0] not in inits]
    for n, s in scales:
        if out in n.output:
            return float(numpy_helper.to_array(s))
    return float(numpy_helper.to_array(scales[-1][1])) if scales else None


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
    inits = {t.name for t in optimized.graph.initializer}
    print(json.dumps({
        "ops": collections.Counter(n.op_type for n in nodes),
        "float_layers": [n.name or n.output[0] for n in nodes if n.op_type in FLOAT_LAYERS],
        "rebuild_nodes": [n.op_type for n in nodes if any(rebuilt(i, inits) for i in n.input)],
        "output_scale": output_scale(onnx.load(model_path)),
        "output_quantized": output_quantized(onnx.load(model_path)),
    }))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # one line for the test's assertion message
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
