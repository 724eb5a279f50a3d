#!/usr/bin/env python3
"""Writes the fuzzing seed corpus, fuzz/corpus/load_convert/*.onnx: small models in the forms
real exporters produce (opsets 7 and 13, IR 3 with initializers as inputs, auto_pad, strides,
dilations, asymmetric pads, no bias, BatchNormalization, dynamic batch, float16, unconvertible
layers beside a convertible one). Each is valid and has a convertible layer, so the smoke test
can check that every seed converts before it mutates them.

usage: target/venv-test/bin/python scripts/make_fuzz_corpus.py   (needs numpy and onnx)
"""
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = os.path.join(os.path.dirname(__file__), "..", "fuzz", "corpus", "load_convert")
rng = np.random.default_rng(2026)


def w(*shape, dtype=np.float32):
    return rng.uniform(-1, 1, size=shape).astype(dtype)


def conv(name, x, weight, y, bias=None, **attrs):
    inputs = [x, weight] + ([bias] if bias else [])
    return helper.make_node("Conv", inputs, [y], name=name, **attrs)


def save(fname, nodes, inits, x_shape, outputs, opset=13, ir=8, elem=TensorProto.FLOAT,
         inits_as_inputs=False):
    inputs = [helper.make_tensor_value_info("x", elem, x_shape)]
    if inits_as_inputs:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in inits]
    outs = [helper.make_tensor_value_info(o, elem, [None] * r) for o, r in outputs]
    g = helper.make_graph(nodes, "seed", inputs, outs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                          producer_name="onnx-dlq fuzz corpus")
    m.ir_version = ir
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, os.path.join(OUT, fname))


def main():
    os.makedirs(OUT, exist_ok=True)
    t = numpy_helper.from_array
    save("conv3x3_opset13.onnx",
         [conv("conv", "x", "w", "y", "b", kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
         [t(w(8, 8, 3, 3), "w"), t(w(8), "b")], [1, 8, 6, 6], [("y", 4)])
    save("same_upper_stride2_opset7.onnx",
         [conv("conv", "x", "w", "y", "b", kernel_shape=[3, 3], strides=[2, 2],
               auto_pad="SAME_UPPER")],
         [t(w(6, 8, 3, 3), "w"), t(w(6), "b")], [1, 8, 7, 9], [("y", 4)], opset=7, ir=3,
         inits_as_inputs=True)
    save("dilated_asymmetric_nobias.onnx",
         [conv("conv", "x", "w", "y", kernel_shape=[3, 3], dilations=[2, 2],
               pads=[0, 1, 2, 0])],
         [t(w(6, 8, 3, 3), "w")], [2, 8, 9, 8], [("y", 4)])
    save("one_by_one_valid.onnx",
         [conv("conv", "x", "w", "y", "b", kernel_shape=[1, 1], auto_pad="VALID")],
         [t(w(16, 8, 1, 1), "w"), t(w(16), "b")], [1, 8, 5, 5], [("y", 4)])
    save("ir3_batchnorm_nameless.onnx",
         [conv("", "x", "w1", "c1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
          helper.make_node("BatchNormalization", ["c1", "s", "bb", "mu", "var"], ["bn"]),
          helper.make_node("Relu", ["bn"], ["r"]),
          conv("", "r", "w2", "y", "b2", kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
         [t(w(8, 8, 3, 3), "w1"), t(w(8), "s"), t(w(8), "bb"), t(w(8), "mu"),
          t(np.abs(w(8)) + 0.5, "var"), t(w(8, 8, 3, 3), "w2"), t(w(8), "b2")],
         [1, 8, 6, 6], [("y", 4)], opset=7, ir=3, inits_as_inputs=True)
    save("dynamic_batch.onnx",
         [conv("conv", "x", "w", "y", "b", kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
         [t(w(8, 8, 3, 3), "w"), t(w(8), "b")], ["batch", 8, 5, 7], [("y", 4)])
    save("float16.onnx",
         [conv("conv", "x", "w", "y", "b", kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
         [t(w(8, 8, 3, 3, dtype=np.float16), "w"), t(w(8, dtype=np.float16), "b")],
         [1, 8, 6, 6], [("y", 4)], elem=TensorProto.FLOAT16)
    save("unconvertible_beside_convertible.onnx",
         [conv("ok", "x", "w", "y", "b", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
          conv("grouped", "x", "wg", "yg", kernel_shape=[3, 3], group=2),
          helper.make_node("ConvTranspose", ["x", "wt"], ["yt"], name="transpose",
                           kernel_shape=[3, 3]),
          helper.make_node("Mul", ["w", "two"], ["wr"]),
          conv("runtime", "x", "wr", "yr", kernel_shape=[3, 3])],
         [t(w(8, 8, 3, 3), "w"), t(w(8), "b"), t(w(8, 4, 3, 3), "wg"),
          t(w(8, 8, 3, 3), "wt"), t(w(1), "two")],
         [1, 8, 6, 6], [("y", 4), ("yg", 4), ("yt", 4), ("yr", 4)])


if __name__ == "__main__":
    main()
