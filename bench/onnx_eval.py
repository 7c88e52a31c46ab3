#!/usr/bin/env python3
"""Test accuracy of exported ONNX models under onnxruntime, against the accuracy gpu-train
recorded in them when it trained them.

    gpu-train export --model models/cnn4.safetensors --onnx cnn4.onnx
    python3 bench/onnx_eval.py cnn4.onnx [more.onnx ...] [--data-dir data/mnist]

Reads the MNIST test set (t10k-images-idx3-ubyte and labels, raw or .gz) with numpy, feeds
pixel/255 to onnxruntime's CPU provider in batches, and prints per model its accuracy, the
accuracy in its metadata (`metrics`, copied from the safetensors file) and whether the two
count the same number of correct images. Exit status 1 if any model's count differs, 2 on bad
input; a model without recorded metrics is reported, not failed. Needs numpy and onnxruntime
only.
"""

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
BATCH = 500


def read_idx(data_dir, stem, ext):
    """The payload of an IDX file, under either spelling, raw or gzipped."""
    for name in (f"{stem}-{ext}", f"{stem}.{ext}"):
        for path in (data_dir / name, data_dir / f"{name}.gz"):
            if path.is_file():
                raw = path.read_bytes()
                raw = gzip.decompress(raw) if path.suffix == ".gz" else raw
                dims = raw[3]
                shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
                return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)
    sys.exit(f"error: no {stem}-{ext}[.gz] in {data_dir}")


def evaluate(path, images, labels):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    _, c, h, w = inp.shape
    if (c, h, w) != (1, *images.shape[1:]):
        sys.exit(f"error: {path} takes {c}x{h}x{w} inputs, the data set has 1x{images.shape[1]}x{images.shape[2]}")
    start = time.perf_counter()
    predicted = []
    for i in range(0, len(images), BATCH):
        x = images[i : i + BATCH, None].astype(np.float32) / 255.0
        predicted.append(session.run(None, {inp.name: x})[0].argmax(axis=1))
    seconds = time.perf_counter() - start
    correct = int((np.concatenate(predicted) == labels).sum())
    meta = session.get_modelmeta().custom_metadata_map
    return correct, seconds, json.loads(meta["metrics"]) if "metrics" in meta else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--data-dir", type=Path, default=REPO / "data" / "mnist")
    args = ap.parse_args()
    images = read_idx(args.data_dir, "t10k", "images-idx3-ubyte")
    labels = read_idx(args.data_dir, "t10k", "labels-idx1-ubyte")
    n = len(labels)
    shown = os.path.relpath(args.data_dir)
    shown = args.data_dir if shown.startswith("..") else shown
    print(f"onnxruntime {ort.__version__}, {n} test images from {shown}")
    failed = 0
    for path in args.models:
        if not path.is_file():
            sys.exit(f"error: no such file: {path}")
        correct, seconds, metrics = evaluate(path, images, labels)
        line = f"{path}: accuracy {100 * correct / n:.2f}% ({correct}/{n}, {seconds:.1f}s)"
        if metrics is None or "test_accuracy" not in metrics:
            print(f"{line}; no recorded accuracy to compare with")
            continue
        recorded = round(metrics["test_accuracy"] * metrics.get("test_count", n))
        if metrics.get("test_count", n) == n and recorded == correct:
            print(f"{line}; recorded {100 * recorded / n:.2f}% ({recorded}/{n}): matches")
        else:
            failed += 1
            print(f"{line}; recorded {100 * metrics['test_accuracy']:.2f}% of {metrics.get('test_count')}: MISMATCH")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
