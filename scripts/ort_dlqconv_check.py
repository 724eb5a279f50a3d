#!/usr/bin/env python3
"""Checks libonnx_dlq_ort (the DlqConv custom-op library) inside ONNX Runtime.

usage: ort_dlqconv_check.py LIBRARY

1. Exactness: random DlqConv nodes (DL and VQ; strides, pads, auto_pad, dilations, odd sizes,
   batch > 1, a last subspace narrower than the others, uint8/16/32 indices, with and without
   bias, float and float16) equal ORT's own Conv with the reconstructed dense kernel
   W~[k, s*N'+c, u, v] = (sum_t coef * atom)[assignment[s, k, u, v]][c], within EXACT_TOL of the
   output's largest magnitude (float16: F16_TOL, against the float32 Conv of the same float16
   values). Inputs are declared with symbolic batch and spatial sizes and each model runs on two
   sizes; one and two intra-op threads must give identical bytes.
   (ORT's Conv refuses SAME with dilation; crates/dlq-kernels/tests/operator.rs covers it.)
2. Refusal: malformed nodes fail at session creation with a message naming the node; a model
   opened without the library fails with ONNX Runtime's own message.
Prints one line per group; exit status 1 with the reason on the first failure.
"""
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

EXACT_TOL = 1e-5   # as crates/dlq-kernels/tests/exactness.rs
F16_TOL = 2e-3     # float16 output rounding (2^-11 relative) plus float16 input rounding

LIB = None


def session(model, threads=1, library=True):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if library:
        opts.register_custom_ops_library(LIB)
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def random_codebook(rng, n, m, kh, kw, width, atoms, reps, alpha, dl):
    s = -(-n // width)
    d = rng.standard_normal((s, atoms, width)).astype(np.float32)
    last = n - (s - 1) * width
    d[-1, :, last:] = 0.0  # entries beyond the last subspace's channels must be 0
    k = reps if dl else atoms
    idx = rng.integers(0, atoms, (s, reps, alpha)) if dl else None
    coef = rng.standard_normal((s, reps, alpha)).astype(np.float32) if dl else None
    assign = rng.integers(0, k, (s, m, kh, kw))
    return d, idx, coef, assign


def reconstruct(n, width, d, idx, coef, assign):
    s, _, _ = d.shape
    if idx is None:
        reps = d
    else:
        reps = np.einsum("skt,sktc->skc", coef.astype(np.float64), d[np.arange(s)[:, None, None], idx])
    m, kh, kw = assign.shape[1:]
    w = np.zeros((m, s * width, kh, kw))
    for sub in range(s):
        w[:, sub * width:(sub + 1) * width] = np.transpose(reps[sub][assign[sub]], (0, 3, 1, 2))
    return w[:, :n]


def conv_attrs(case):
    attrs = {"strides": case["strides"], "dilations": case["dilations"]}
    if case["auto_pad"] == "NOTSET":
        attrs["pads"] = case["pads"]
    else:
        attrs["auto_pad"] = case["auto_pad"]
    return attrs


def graph_model(node, inits, n, dtype, m, domain_version=1):
    x = helper.make_tensor_value_info("X", dtype, ["B", n, "H", "W"])
    y = helper.make_tensor_value_info("Y", dtype, ["B", m, None, None])
    graph = helper.make_graph([node], "g", [x], [y], initializer=inits)
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx_dlq", domain_version)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def dlq_model(case, d, idx, coef, assign, bias, idx_np, fdt, name="layer", relu=False):
    onnx_dt = TensorProto.FLOAT16 if fdt == np.float16 else TensorProto.FLOAT
    inits = [numpy_helper.from_array(d.astype(fdt), "atoms")]
    names = ["X", "atoms", "", "", "assignment"]
    if idx is not None:
        inits.append(numpy_helper.from_array(idx.astype(idx_np), "idx"))
        names[2] = "idx"
    if coef is not None:
        inits.append(numpy_helper.from_array(coef.astype(fdt), "coef"))
        names[3] = "coef"
    inits.append(numpy_helper.from_array(assign.astype(idx_np), "assignment"))
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(fdt), "B"))
        names.append("B")
    extra = {"activation": "Relu"} if relu else {}
    node = helper.make_node("DlqConv", names, ["Y"], name=name, domain="ai.onnx_dlq",
                            subspace=d.shape[2], **conv_attrs(case), **extra)
    return graph_model(node, inits, case["n"], onnx_dt, assign.shape[1])


def dense_model(case, w, bias):
    inits = [numpy_helper.from_array(w.astype(np.float32), "Wt")]
    names = ["X", "Wt"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(np.float32), "Bc"))
        names.append("Bc")
    node = helper.make_node("Conv", names, ["Y"], **conv_attrs(case))
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["B", case["n"], "H", "W"])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "dense", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


CASES = [
    dict(n=16, m=12, k=(3, 3), width=8, strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], auto_pad="NOTSET", sizes=[(1, 13, 13), (3, 7, 9)]),
    dict(n=13, m=7, k=(3, 2), width=4, strides=[2, 1], pads=[0, 1, 2, 0], dilations=[1, 2], auto_pad="NOTSET", sizes=[(2, 11, 8), (1, 6, 5)]),
    dict(n=9, m=5, k=(3, 3), width=4, strides=[2, 2], pads=[0, 0, 0, 0], dilations=[1, 1], auto_pad="SAME_UPPER", sizes=[(2, 9, 10), (1, 4, 4)]),
    dict(n=8, m=6, k=(2, 3), width=8, strides=[1, 3], pads=[0, 0, 0, 0], dilations=[1, 1], auto_pad="SAME_LOWER", sizes=[(3, 7, 8), (1, 5, 11)]),
    dict(n=10, m=4, k=(1, 1), width=3, strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], auto_pad="VALID", sizes=[(1, 5, 5), (2, 1, 3)]),
    dict(n=64, m=64, k=(3, 3), width=8, strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], auto_pad="NOTSET", sizes=[(2, 8, 8), (1, 16, 16)]),
]


def compare(got, ref, tol, what):
    scale = max(float(np.abs(ref).max()), 1e-6)
    err = float(np.abs(got.astype(np.float64) - ref).max())
    if not err <= tol * scale:
        raise AssertionError(f"{what}: max |DlqConv - dense Conv| = {err:.3g}, over {tol} x {scale:.3g}")
    return err / scale


def exactness():
    rng = np.random.default_rng(20261124)
    worst = {np.float32: 0.0, np.float16: 0.0}
    runs = 0
    for ci, case in enumerate(CASES):
        for dl in (True, False):
            for idx_np, fdt in ((np.uint8, np.float32), (np.uint16, np.float32), (np.uint32, np.float16)):
                atoms, reps, alpha = (6, 20, 2) if dl else (9, 9, 1)
                d, idx, coef, assign = random_codebook(rng, case["n"], case["m"], *case["k"], case["width"], atoms, reps, alpha, dl)
                bias = rng.standard_normal(case["m"]).astype(np.float32) if ci % 2 == 0 or not dl else None
                if fdt == np.float16:  # the reference sees the float16 values
                    d, coef = d.astype(np.float16).astype(np.float32), None if coef is None else coef.astype(np.float16).astype(np.float32)
                    bias = None if bias is None else bias.astype(np.float16).astype(np.float32)
                relu = ci % 3 == 1  # the fused Relu (attribute activation) on some models
                fused = dlq_model(case, d, idx, coef, assign, bias, idx_np, fdt, relu=relu)
                onnx.checker.check_model(fused, full_check=True)
                dense = session(dense_model(case, reconstruct(case["n"], case["width"], d, idx, coef, assign), bias))
                one, two = session(fused, 1), session(fused, 2)
                for b, h, w in case["sizes"]:
                    x = rng.standard_normal((b, case["n"], h, w)).astype(fdt)
                    ref = dense.run(None, {"X": x.astype(np.float32)})[0].astype(np.float64)
                    if relu:
                        ref = np.maximum(ref, 0.0)
                    got = one.run(None, {"X": x})[0]
                    if got.dtype != fdt or got.shape != ref.shape:
                        raise AssertionError(f"case {ci}: output {got.dtype}{got.shape}, expected {np.dtype(fdt)}{ref.shape}")
                    tol = EXACT_TOL if fdt == np.float32 else F16_TOL
                    worst[fdt] = max(worst[fdt], compare(got, ref, tol, f"case {ci} dl={dl} {np.dtype(idx_np)} {np.dtype(fdt)} {b}x{h}x{w}"))
                    if two.run(None, {"X": x})[0].tobytes() != got.tobytes():
                        raise AssertionError(f"case {ci}: 2 threads differ from 1 thread")
                    runs += 1
    print(f"exactness: {runs} runs of {len(CASES) * 6} models passed; worst relative error "
          f"float32 {worst[np.float32]:.2e} (tolerance {EXACT_TOL}), float16 {worst[np.float16]:.2e} (tolerance {F16_TOL})")


def expect_refused(model, wanted, library=True):
    try:
        session(model, library=library)
    except Exception as e:  # ORT raises its own exception types
        if not all(w in str(e) for w in wanted):
            raise AssertionError(f"refused, but the message lacks {wanted}: {e}")
        return str(e).splitlines()[0][:160]
    raise AssertionError(f"accepted a model that should be refused ({wanted})")


def refusals():
    rng = np.random.default_rng(7)
    case = CASES[0]
    d, idx, coef, assign = random_codebook(rng, case["n"], case["m"], *case["k"], case["width"], 6, 20, 2, True)
    def good(**kw):
        parts = dict(d=d, idx=idx, coef=coef, assign=assign) | kw
        return dlq_model(case, parts["d"], parts["idx"], parts["coef"], parts["assign"], None, np.uint8, np.float32)
    bad_assign = assign.copy()
    bad_assign[1, 3, 0, 2] = 20
    bad_idx = idx.copy()
    bad_idx[0, 5, 1] = 6
    messages = [
        expect_refused(good(assign=bad_assign), ["layer", "assignment", "= 20"]),
        expect_refused(good(idx=bad_idx), ["layer", "= 6", "below 6"]),
        expect_refused(good(d=d[:, :, :4]), ["layer", "atoms has shape"]),
        expect_refused(good(idx=idx, coef=None), ["layer", "go together"]),
    ]
    m = good()
    m.graph.node[0].attribute.append(helper.make_attribute("activation", "Tanh"))
    messages.append(expect_refused(m, ["layer", "attribute activation"]))
    m = good()
    m.graph.node[0].attribute.append(helper.make_attribute("auto_pad", "SAME_UPPER"))
    messages.append(expect_refused(m, ["layer", "exclude each other"]))
    m = good()
    for a in m.graph.node[0].attribute:
        if a.name == "strides":
            a.ints[:] = [0, 1]
    messages.append(expect_refused(m, ["layer", "strides"]))
    m = good()  # atoms as a graph input, not an initializer
    m.graph.input.append(helper.make_tensor_value_info("atoms", TensorProto.FLOAT, list(d.shape)))
    del m.graph.initializer[0]
    messages.append(expect_refused(m, ["layer", "must be a constant"]))
    messages.append(expect_refused(dlq_model(case, d, idx, coef, assign, None, np.uint8, np.float32, name="v2"), ["DlqConv"], library=False))
    print(f"refusals: {len(messages)} malformed models refused at session creation")
    for line in messages:
        print(f"  {line}")


def main():
    global LIB
    LIB = sys.argv[1]
    ort.set_default_logger_severity(4)  # the refusals are expected; their messages are checked
    print(f"onnxruntime {ort.__version__}, library {LIB}")
    exactness()
    refusals()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
