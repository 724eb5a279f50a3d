#!/usr/bin/env python3
"""Top-1 and ties at the top of the outputs, per model, in ONNX Runtime on a labelled folder.

usage: top1_ties.py SPEC.json FOLDER START COUNT MODEL [MODEL ...]

Runs every MODEL (one thread, default optimisation level) on images START..START+COUNT of
FOLDER's labels.csv, preprocessed by SPEC.json as scripts/ort_int8_reference.py does, and prints
per model how many images it classifies correctly and on how many two or more classes share the
largest output (an argmax then picks the lowest class index, whatever the image). Quantized
logits tie; float ones practically never do.
"""
import csv
import json
import os
import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ort_int8_reference import preprocess  # noqa: E402


def main():
    spec_path, folder, start, count, *models = sys.argv[1:]
    spec = json.load(open(spec_path))
    rows = list(csv.DictReader(open(os.path.join(folder, "labels.csv"))))
    rows = rows[int(start):int(start) + int(count)]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    for path in models:
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        correct = ties = 0
        for r in rows:
            x = preprocess(os.path.join(folder, r["file"]), spec)
            x = x if x.ndim == 4 else x[None]
            out = sess.run(None, {name: x})[0].reshape(-1)
            correct += int(out.argmax() == int(r["label"]))
            ties += int((out == out.max()).sum() > 1)
        print(f"{path}: {correct}/{len(rows)} correct, {ties} with a tie at the top")


if __name__ == "__main__":
    main()
