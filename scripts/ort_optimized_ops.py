#!/usr/bin/env python3
"""Operator counts of a model after ONNX Runtime's graph optimisations (default level), as JSON.

usage: ort_optimized_ops.py MODEL

Used by the tests to check that the compact form's kernel subgraph is folded at load, so the
session runs the original Conv.
"""
import collections
import json
import os
import sys
import tempfile

import onnx
import onnxruntime as ort

ort.set_default_logger_severity(3)  # the NCHWc serialisation warning is expected


def main():
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
        model = onnx.load(opts.optimized_model_filepath)
    print(json.dumps(collections.Counter(n.op_type for n in model.graph.node)))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
