#!/usr/bin/env python3
"""Single-Conv models of the benchmark shapes (dense weights, seed 0) for timing an engine's dense
Conv: /tmp/fire8conv.onnx (SqueezeNet fire8/expand3x3: 64 -> 256, 3x3, pad 1, 13x13) and
/tmp/r20conv.onnx (ResNet-20 layer3: 64 -> 64, 3x3, pad 1, 8x8). Needs numpy and onnx (e.g. the
venv of scripts/bench_kernel.sh)."""
import numpy as np, onnx
from onnx import helper, TensorProto, numpy_helper
def conv(path, m, n, h, w):
    rng = np.random.default_rng(0)
    W = numpy_helper.from_array(rng.standard_normal((m, n, 3, 3)).astype(np.float32) * 0.05, "w")
    B = numpy_helper.from_array(np.zeros(m, np.float32), "b")
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], kernel_shape=[3, 3], name="conv")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n, h, w])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, m, h, w])], [W, B])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)
conv("/tmp/fire8conv.onnx", 256, 64, 13, 13)
conv("/tmp/r20conv.onnx", 64, 64, 8, 8)
