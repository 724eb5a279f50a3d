#!/usr/bin/env python3
"""A model of the fast-neural-style kind for the memory tests: ImageScaler (an experimental
operator of opset < 10 that ONNX Runtime runs and tract lacks), a 9x9 Conv, four 3x3 Convs of 32
channels and a 9x9 Conv back to 3 channels, each with a ReLU, at SIZE x SIZE (default 720),
opset 7, seeded random weights.

usage: make_hires_model.py OUT.onnx [SIZE]
"""
import sys
import numpy as np
import onnx
from onnx import helper, TensorProto, numpy_helper
size = int(sys.argv[2]) if len(sys.argv) > 2 else 720
rng = np.random.default_rng(0)
nodes, inits = [], []
nodes.append(helper.make_node("ImageScaler", ["x"], ["s"], scale=1.0, bias=[0.0, 0.0, 0.0]))
prev, c = "s", 3
for i, (co, k) in enumerate([(32, 9), (32, 3), (32, 3), (32, 3), (32, 3), (3, 9)]):
    w = (rng.standard_normal((co, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
    inits.append(numpy_helper.from_array(w, f"w{i}"))
    nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], kernel_shape=[k, k], pads=[k // 2] * 4))
    nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
    prev, c = f"r{i}", co
g = helper.make_graph(nodes, "hires", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                      [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 3, size, size])], inits)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 7)])
m.ir_version = 4  # initializers need not be graph inputs (IR 4)
onnx.save(m, sys.argv[1])
