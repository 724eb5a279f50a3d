#!/usr/bin/env python3
"""Cross-check helper for the Rust tests: validate a model with onnx.checker (full check) and run
it with ONNX Runtime on one input.

usage: ort_run.py MODEL INPUT.npy OUTPUT.npy [CUSTOM_OPS_LIBRARY]

With CUSTOM_OPS_LIBRARY (libonnx_dlq_ort.so), models with DlqConv nodes run through it.

The input is cast to the model's input element type (float16 models take float16); the first
output is written as float32. Exit status 1 with a message on stderr when anything fails.
"""
import sys

import numpy as np
import onnx
import onnxruntime as ort

TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def main():
    model_path, input_path, output_path = sys.argv[1:4]
    onnx.checker.check_model(model_path, full_check=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if len(sys.argv) > 4:
        opts.register_custom_ops_library(sys.argv[4])
    sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.load(input_path).astype(TYPES[inp.type])
    y = sess.run(None, {inp.name: x})[0]
    np.save(output_path, y.astype(np.float32))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # one line for the test's assertion message
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
