#!/usr/bin/env python3
"""Model files both ways between gpu-train and PyTorch.

1. Loads a gpu-train model file into a torch.nn.Sequential of the same layers (a residual
   block a `Residual` module with `body` and `shortcut` Sequentials) with strict=True and
   evaluates it in PyTorch, normalising inputs as the file says: the accuracy must equal what
   gpu-train recorded.
2. Saves a freshly initialised torch.nn.Sequential, trained a few steps (state_dict ->
   safetensors), and has `gpu-train eval --arch ARCH` evaluate it: the accuracy must equal
   PyTorch's own.

    python3 bench/torch_compat.py --model models/cnn4.safetensors --arch cnn4
    python3 bench/torch_compat.py --model runs/f/resnet20-gray.safetensors --arch resnet20-gray \
        --data-dir /usr/share/datasets/fashion-mnist

The test set is an IDX folder (MNIST's by default), a folder of CIFAR-10 binary files, or a
folder with test/<class>/ picture folders (read as bench/onnx_eval.py reads them, by the model
file's class names).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import tomllib

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pytorch_bench as pb  # noqa: E402

ROOT = pb.ROOT


def torch_accuracy(net, images, labels, spec):
    """Accuracy of `net` on uint8 images normalised as the model file `spec` says."""
    mean, std = pb.normalization(spec, images.shape[1])
    mean = torch.tensor(mean).view(1, -1, 1, 1)
    std = torch.tensor(std).view(1, -1, 1, 1)
    net.eval()
    with torch.no_grad():
        x = (torch.from_numpy(images.copy()).float().div_(255.0) - mean) / std
        pred = torch.cat([net(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return (pred.numpy() == labels).mean()


def gpu_train_accuracy(binary, model, arch, data_dir):
    out = subprocess.run([binary, "eval", "--backend", "cpu", "--brief", "--model", model, "--arch", arch,
                          "--data", data_dir], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        sys.exit(out.stderr)
    line = [l for l in out.stdout.splitlines() if "accuracy" in l][-1]
    return float(line.split("accuracy ")[1].split("%")[0]) / 100.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a model file written by gpu-train")
    ap.add_argument("--arch", required=True)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "gpu-train"))
    ap.add_argument("--data-dir", default=os.path.join(ROOT, "data", "mnist"),
                    help="the IDX folder whose test set to score (default: the shipped MNIST)")
    args = ap.parse_args()
    with open(pb.model_file(args.arch), "rb") as f:
        spec = tomllib.load(f)
    d = args.data_dir
    cifar = os.path.join(d, "test_batch.bin")
    if os.path.isfile(cifar):
        raw = np.fromfile(cifar, dtype=np.uint8).reshape(-1, 3073)
        images, labels = raw[:, 1:].reshape(-1, 3, 32, 32), raw[:, 0].copy()
    elif os.path.isdir(os.path.join(d, "test")):
        from pathlib import Path
        from onnx_eval import read_folder
        with safe_open(args.model, "pt") as f:
            classes = json.loads(f.metadata()["classes"])
        images, labels = read_folder(Path(d), classes, spec.get("input", [1])[0])
    else:
        idx = lambda stem: next(p for p in (os.path.join(d, stem), os.path.join(d, stem + ".gz")) if os.path.isfile(p))
        images = pb.load_images(idx("t10k-images-idx3-ubyte"))
        labels = pb.load_labels(idx("t10k-labels-idx1-ubyte"))

    # 1. ours -> torch, with the model file's own normalisation (resolved when it trained)
    net = pb.build(spec)
    net.load_state_dict(load_file(args.model), strict=True)
    with safe_open(args.model, "pt") as f:
        meta = f.metadata()
    recorded = json.loads(meta["metrics"])["test_accuracy"]
    acc = torch_accuracy(net, images, labels, tomllib.loads(meta["model"]) if "model" in meta else spec)
    print(f"gpu-train file in PyTorch (strict=True): accuracy {100 * acc:.2f}%, recorded {100 * recorded:.2f}%")
    ok1 = abs(acc - recorded) <= 2e-4

    # 2. torch -> ours
    torch.manual_seed(7)
    net = pb.build(spec)
    # A few random steps so batch-norm statistics and weights are not at their defaults.
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x = torch.from_numpy(images[:256].copy()).float() / 255.0
    labels = labels.astype(np.int64)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), torch.from_numpy(labels[:256])).backward()
        opt.step()
    theirs = torch_accuracy(net, images, labels, spec)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "torch.safetensors")
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
        ours = gpu_train_accuracy(args.binary, path, args.arch, d)
    print(f"PyTorch file in gpu-train: accuracy {100 * ours:.2f}%, PyTorch says {100 * theirs:.2f}%")
    ok2 = abs(ours - theirs) <= 2e-4
    print("both ways agree" if ok1 and ok2 else "MISMATCH")
    sys.exit(0 if ok1 and ok2 else 1)


if __name__ == "__main__":
    main()
