#!/usr/bin/env python3
"""Where an int8 model's error comes from: writes two variants of a QDQ model (onnx-dlq's
--int8 output or ONNX Runtime's own int8 model) for `onnx-dlq verify` to compare with the
original.

usage: int8_error_parts.py INT8.onnx PREFIX

  PREFIX-float-activations.onnx  every activation's QuantizeLinear -> DequantizeLinear pair
                                 removed (a pair with a uint8 zero point of 0 becomes the ReLU
                                 the rewrite folded into it): int8 weights, float activations
  PREFIX-float.onnx              every pair whose QuantizeLinear is computed removed too, so the
                                 codebooks' rebuilt kernels stay float (weights stored as int8
                                 initializers stay int8)

Then `onnx-dlq verify ORIGINAL MODEL --engine ort ...` on the int8 model and on each variant:
the differences are what the activations' and the rebuilt weights' rounding add to the
codebooks' own error. Needs numpy and onnx (scripts/requirements-bench.txt).
"""
import copy
import sys

import onnx
from onnx import numpy_helper


def is_weight_pair(q):
    # The rewrite names a rebuilt weight's quantized value `{layer}/wq`.
    return q.output[0].endswith("/wq")


def relu_folded(graph, q):
    zero = [t for t in graph.initializer if t.name == q.input[2]]
    return (bool(zero) and zero[0].data_type == onnx.TensorProto.UINT8
            and numpy_helper.to_array(zero[0]).max() == 0)


def without_pairs(model, weights_too):
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    removed, rename, relus = set(), {}, []
    for n in g.node:
        q = producer.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        weight = is_weight_pair(q)
        if weight and not weights_too:
            continue
        if not weight and relu_folded(g, q):
            relus.append(onnx.helper.make_node("Relu", [q.input[0]], [n.output[0]]))
        else:
            rename[n.output[0]] = q.input[0]
        removed.update([id(n), id(q)])
    kept = [n for n in g.node if id(n) not in removed] + relus
    del g.node[:]
    g.node.extend(kept)
    for n in g.node:
        for i, x in enumerate(n.input):
            while x in rename:
                x = rename[x]
            n.input[i] = x
    return model


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    model = onnx.load(sys.argv[1])
    prefix = sys.argv[2]
    for suffix, weights_too in [("float-activations", False), ("float", True)]:
        out = f"{prefix}-{suffix}.onnx"
        onnx.save(without_pairs(copy.deepcopy(model), weights_too), out)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
