#!/usr/bin/env python3
"""A model with one large fully connected layer, for BENCHMARKS.md ("A large fully connected layer"):
y = Gemm(x[1, N], W[M, N] (transB = 1), b[M]), Gaussian weights (std 1/sqrt(N), seed 0), opset 13.

usage: make_fc_model.py OUT [--n 4096] [--m 4096]
"""
import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--m", type=int, default=4096)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((a.m, a.n)) / np.sqrt(a.n)).astype(np.float32)
    b = (rng.standard_normal(a.m) * 0.1).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, name="fc")
    graph = helper.make_graph(
        [node], "fc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, a.n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, a.m])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, a.out)


if __name__ == "__main__":
    main()
