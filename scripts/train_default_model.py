#!/usr/bin/env python3
"""Train the project's default model: a small CNN on scikit-learn's bundled digits.

Everything it needs ships inside registry packages (the 8x8 digits data set is part of
scikit-learn), so it runs offline. It writes, under models/:

  digits-cnn.onnx                 the model (opset 13, input `input` [N,3,8,8] f32, output `logits`)
  digits-cnn.preprocess.json      the preprocessing, in the format of ../shared/README.md
  digits-test/                    the held-out test split: images/*.png, labels.csv, classes.txt

and prints the test accuracy measured twice: by the numpy forward pass used for training
and by ONNX Runtime on the written PNG files through the preprocessing JSON.

Usage: scripts/train_default_model.sh   (makes a venv with the pinned packages, then runs this)
"""
import csv
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SEED = 20261121
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models")
MODEL = os.path.join(ROOT, "digits-cnn.onnx")
SPEC = os.path.join(ROOT, "digits-cnn.preprocess.json")
TEST_DIR = os.path.join(ROOT, "digits-test")

# Preprocessing shared by training and the JSON spec: pixel*scale, then (x - mean) / std.
SCALE = 1.0 / 255.0
MEAN = [0.5, 0.5, 0.5]
STD = [0.25, 0.25, 0.25]

# (name, in, out) of the 3x3, pad-1 convolutions; a 2x2 max-pool follows conv2.
CONVS = [("conv1", 3, 32), ("conv2", 32, 32), ("conv3", 32, 64), ("conv4", 64, 64)]
CLASSES = 10


def to_pixels(images):
    """digits values 0..16 -> uint8 grey 0..255, as stored in the PNG files."""
    return np.round(images * (255.0 / 16.0)).astype(np.uint8)


def preprocess(pixels):
    """uint8 [n,8,8] -> float32 [n,3,8,8] exactly as the JSON spec says (grey as RGB)."""
    x = pixels.astype(np.float32) * np.float32(SCALE)
    x = np.repeat(x[:, None, :, :], 3, axis=1)
    mean = np.array(MEAN, np.float32)[None, :, None, None]
    std = np.array(STD, np.float32)[None, :, None, None]
    return ((x - mean) / std).astype(np.float32)


# ---- a minimal autograd-free CNN in numpy (im2col convolutions) ---------------------------


def im2col(x):
    """[n,c,h,w] -> [n*h*w, c*9] patches of a 3x3, pad-1, stride-1 convolution."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.empty((n, h, w, c, 3, 3), np.float32)
    for u in range(3):
        for v in range(3):
            cols[:, :, :, :, u, v] = xp[:, :, u : u + h, v : v + w].transpose(0, 2, 3, 1)
    return cols.reshape(n * h * w, c * 9)


def col2im(dcols, shape):
    n, c, h, w = shape
    dcols = dcols.reshape(n, h, w, c, 3, 3)
    dxp = np.zeros((n, c, h + 2, w + 2), np.float32)
    for u in range(3):
        for v in range(3):
            dxp[:, :, u : u + h, v : v + w] += dcols[:, :, :, :, u, v].transpose(0, 3, 1, 2)
    return dxp[:, :, 1:-1, 1:-1]


def init_params(rng):
    params = {}
    for name, cin, cout in CONVS:
        fan_in = cin * 9
        params[name + ".weight"] = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        params[name + ".bias"] = np.zeros(cout, np.float32)
    params["fc.weight"] = (rng.standard_normal((CLASSES, 64)) * np.sqrt(1.0 / 64)).astype(np.float32)
    params["fc.bias"] = np.zeros(CLASSES, np.float32)
    return params


def forward(params, x, keep=False):
    cache = []
    for name, _, cout in CONVS:
        n, _, h, w = x.shape
        cols = im2col(x)
        wmat = params[name + ".weight"].reshape(cout, -1)
        y = (cols @ wmat.T + params[name + ".bias"]).reshape(n, h, w, cout).transpose(0, 3, 1, 2)
        a = np.maximum(y, 0)
        if keep:
            cache.append(("conv", name, x.shape, cols, y))
        x = a
        if name == "conv2":
            n, c, h, w = x.shape
            blocks = x.reshape(n, c, h // 2, 2, w // 2, 2)
            pooled = blocks.max(axis=(3, 5))
            if keep:
                mask = blocks == pooled[:, :, :, None, :, None]
                cache.append(("pool", mask, x.shape))
            x = pooled
    feat = x.mean(axis=(2, 3))
    logits = feat @ params["fc.weight"].T + params["fc.bias"]
    if keep:
        cache.append(("gap", x.shape, feat))
    return logits, cache


def backward(params, cache, dlogits):
    grads = {}
    _, shape, feat = cache[-1]
    grads["fc.weight"] = dlogits.T @ feat
    grads["fc.bias"] = dlogits.sum(0)
    dfeat = dlogits @ params["fc.weight"]
    n, c, h, w = shape
    dx = np.broadcast_to(dfeat[:, :, None, None] / (h * w), shape).astype(np.float32)
    for entry in reversed(cache[:-1]):
        if entry[0] == "pool":
            _, mask, in_shape = entry
            n, c, h, w = in_shape
            dx = (mask * dx[:, :, :, None, :, None]).reshape(in_shape)
            continue
        _, name, in_shape, cols, y = entry
        cout = y.shape[1]
        dy = dx * (y > 0)
        dy2 = dy.transpose(0, 2, 3, 1).reshape(-1, cout)
        grads[name + ".weight"] = (dy2.T @ cols).reshape(params[name + ".weight"].shape)
        grads[name + ".bias"] = dy2.sum(0)
        dcols = dy2 @ params[name + ".weight"].reshape(cout, -1)
        dx = col2im(dcols, in_shape)
    return grads


def softmax_xent(logits, labels):
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    loss = -np.log(p[np.arange(len(labels)), labels] + 1e-12).mean()
    d = p
    d[np.arange(len(labels)), labels] -= 1
    return loss, d / len(labels)


def train(x, y, rng, epochs=60, batch=64, lr=2e-3):
    params = init_params(rng)
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(v) for k, v in params.items()}
    b1, b2, step = 0.9, 0.999, 0
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        rate = lr * 0.5 * (1 + np.cos(np.pi * epoch / epochs))
        losses = []
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            xb = x[idx]
            # light augmentation: random shifts by one pixel keep the small net honest
            dx, dy = rng.integers(-1, 2, size=2)
            xb = np.roll(xb, (int(dy), int(dx)), axis=(2, 3))
            logits, cache = forward(params, xb, keep=True)
            loss, dlogits = softmax_xent(logits, y[idx])
            losses.append(loss)
            grads = backward(params, cache, dlogits)
            step += 1
            for k in params:
                g = grads[k] + 1e-4 * params[k]
                m[k] = b1 * m[k] + (1 - b1) * g
                v[k] = b2 * v[k] + (1 - b2) * g * g
                mh = m[k] / (1 - b1**step)
                vh = v[k] / (1 - b2**step)
                params[k] -= (rate * mh / (np.sqrt(vh) + 1e-8)).astype(np.float32)
        if epoch % 10 == 9 or epoch == epochs - 1:
            print(f"epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4f}", file=sys.stderr)
    return params


# ---- export ---------------------------------------------------------------------------------


def export(params, path):
    nodes, inits = [], []
    prev = "input"
    for name, _, _ in CONVS:
        inits.append(numpy_helper.from_array(params[name + ".weight"], name + ".weight"))
        inits.append(numpy_helper.from_array(params[name + ".bias"], name + ".bias"))
        out = name + "_out"
        nodes.append(
            helper.make_node(
                "Conv", [prev, name + ".weight", name + ".bias"], [out], name=name,
                kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], group=1,
            )
        )
        nodes.append(helper.make_node("Relu", [out], [name + "_relu"], name=name + "_relu"))
        prev = name + "_relu"
        if name == "conv2":
            nodes.append(helper.make_node("MaxPool", [prev], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]))
            prev = "pool"
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1))
    inits.append(numpy_helper.from_array(params["fc.weight"], "fc.weight"))
    inits.append(numpy_helper.from_array(params["fc.bias"], "fc.bias"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes, "digits-cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="onnx-dlq/scripts/train_default_model.py")
    model.ir_version = 8
    model.doc_string = "Small CNN on scikit-learn's 8x8 digits (grey replicated to RGB), the onnx-dlq default model."
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def write_test_split(pixels, labels):
    os.makedirs(os.path.join(TEST_DIR, "images"), exist_ok=True)
    rows = []
    for i, (img, label) in enumerate(zip(pixels, labels)):
        rel = f"images/{label}_{i:04d}.png"
        Image.fromarray(img, mode="L").convert("RGB").save(os.path.join(TEST_DIR, rel), optimize=True)
        rows.append((rel, int(label)))
    with open(os.path.join(TEST_DIR, "labels.csv"), "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "label"])
        w.writerows(rows)
    with open(os.path.join(TEST_DIR, "classes.txt"), "w") as f:
        f.write("".join(f"{c}\n" for c in range(CLASSES)))
    spec = {"channel_order": "RGB", "scale": SCALE, "mean": MEAN, "std": STD, "layout": "NCHW", "input": "input"}
    with open(SPEC, "w") as f:
        json.dump(spec, f, indent=2)
        f.write("\n")


def onnxruntime_accuracy():
    """Top-1 of the written model on the written PNG files, through the JSON spec."""
    import onnxruntime as ort

    with open(SPEC) as f:
        spec = json.load(f)
    sess = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
    correct = total = 0
    with open(os.path.join(TEST_DIR, "labels.csv")) as f:
        for row in csv.DictReader(f):
            img = np.asarray(Image.open(os.path.join(TEST_DIR, row["file"])).convert("RGB"), np.float32)
            x = (img * spec["scale"] - np.array(spec["mean"], np.float32)) / np.array(spec["std"], np.float32)
            x = x.transpose(2, 0, 1)[None].astype(np.float32)
            logits = sess.run(None, {spec["input"]: x})[0]
            correct += int(np.argmax(logits) == int(row["label"]))
            total += 1
    return correct / total, total


def main():
    rng = np.random.default_rng(SEED)
    digits = load_digits()
    pixels = to_pixels(digits.images)
    tr_px, te_px, tr_y, te_y = train_test_split(pixels, digits.target, test_size=0.2, stratify=digits.target, random_state=0)
    params = train(preprocess(tr_px), tr_y, rng)
    logits, _ = forward(params, preprocess(te_px))
    numpy_acc = float((logits.argmax(1) == te_y).mean())
    export(params, MODEL)
    write_test_split(te_px, te_y)
    ort_acc, n = onnxruntime_accuracy()
    print(f"train images: {len(tr_px)}, test images: {n}")
    print(f"test top-1 (numpy forward): {numpy_acc:.4f}")
    print(f"test top-1 (ONNX Runtime on the PNG files): {ort_acc:.4f}")


if __name__ == "__main__":
    main()
