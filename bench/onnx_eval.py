#!/usr/bin/env python3
"""Test accuracy of exported ONNX models under onnxruntime, against the accuracy gpu-train
recorded in them when it trained them.

    gpu-train export --model models/cnn4.safetensors --onnx cnn4.onnx
    python3 bench/onnx_eval.py cnn4.onnx [more.onnx ...] [--data-dir data/mnist]

Reads the test set with numpy: IDX files (t10k-images-idx3-ubyte and labels, raw or .gz; MNIST's
by default), where the folder holds CIFAR-10's test_batch.bin (or CIFAR-100's test.bin) the
CIFAR records (3x32x32), and where it holds a test/ folder of class folders, those pictures
(decoded by Pillow, labelled by the model's own `classes` metadata; they must already have the
model's input size). Feeds pixel/255 to onnxruntime's CPU provider in batches, and prints per model its accuracy, the
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


def read_cifar(data_dir):
    """(images N x 3 x 32 x 32, labels) of a CIFAR test file in data_dir, or None."""
    for name, skip in (("test_batch.bin", 1), ("test.bin", 2)):
        path = data_dir / name
        if path.is_file():
            raw = np.frombuffer(path.read_bytes(), dtype=np.uint8).reshape(-1, skip + 3072)
            return raw[:, skip:].reshape(-1, 3, 32, 32), raw[:, skip - 1].copy()
    return None


def read_folder(data_dir, classes, channels):
    """(images N x C x H x W, labels) of DATA/test/<class>/* by the model's class names."""
    from PIL import Image

    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    images, labels = [], []
    for label, name in enumerate(classes):
        folder = data_dir / "test" / name
        if not folder.is_dir():
            sys.exit(f"error: no folder {folder} for the model's class {name!r}")
        for f in sorted(folder.iterdir()):
            with Image.open(f) as img:
                a = np.asarray(img.convert(mode), dtype=np.uint8)
            images.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
            labels.append(label)
    return np.stack(images), np.array(labels)


def evaluate(path, images, labels):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    _, c, h, w = inp.shape
    if (c, h, w) != images.shape[1:]:
        have = "x".join(str(d) for d in images.shape[1:])
        sys.exit(f"error: {path} takes {c}x{h}x{w} inputs, the data set has {have}")
    start = time.perf_counter()
    predicted = []
    for i in range(0, len(images), BATCH):
        x = images[i : i + BATCH].astype(np.float32) / 255.0
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
    cifar = read_cifar(args.data_dir)
    if cifar is not None:
        images, labels = cifar
    elif (args.data_dir / "test").is_dir():
        first = ort.InferenceSession(str(args.models[0]), providers=["CPUExecutionProvider"])
        classes = json.loads(first.get_modelmeta().custom_metadata_map["classes"])
        images, labels = read_folder(args.data_dir, classes, first.get_inputs()[0].shape[1])
    else:
        images = read_idx(args.data_dir, "t10k", "images-idx3-ubyte")[:, None]
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
