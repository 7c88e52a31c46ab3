#!/usr/bin/env python3
"""PyTorch counterpart of `gpu-train bench`: the same architecture (read from the same model
file), the same batch size, data resident on the device, Adam, dropout on, He init; times
training steps after a warm-up and prints one JSON line with seconds per step and per
60,000-image epoch.

    python3 bench/pytorch_bench.py --arch cnn4 --batch 16 --steps 200 [--device cuda] [--threads 2]
"""
import argparse
import gzip
import json
import os
import platform
import sys
import time
import tomllib

import numpy as np
import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCH_IMAGES = 60_000


def model_file(arch):
    """Path of a preset's model file (models/NAME.toml or models/seeds/NAME.toml) or a path."""
    for p in (arch, os.path.join(ROOT, "models", arch + ".toml"), os.path.join(ROOT, "models", "seeds", arch + ".toml")):
        if os.path.isfile(p):
            return p
    sys.exit(f"unknown architecture {arch}")


def build(spec):
    """torch.nn.Sequential with one module per layer-list entry, as gpu-train names tensors."""
    c, h, w = spec.get("input", [1, 28, 28])
    shape = (c, h, w)
    mods = []
    for layer in spec["layers"]:
        t = layer["type"]
        if t == "conv2d":
            k = layer["kernel"]
            kh, kw = (k, k) if isinstance(k, int) else k
            pad = layer.get("padding", 0)
            if pad == "same":
                pad = (kh // 2, kw // 2)
            elif pad == "valid":
                pad = 0
            stride = layer.get("stride", 1)
            m = nn.Conv2d(shape[0], layer["filters"], (kh, kw), stride=stride, padding=pad, bias=layer.get("bias", True))
            ph, pw = (pad, pad) if isinstance(pad, int) else pad
            shape = (layer["filters"], (shape[1] + 2 * ph - kh) // stride + 1, (shape[2] + 2 * pw - kw) // stride + 1)
        elif t == "dense":
            m = nn.Linear(shape[0], layer["units"], bias=layer.get("bias", True))
            shape = (layer["units"],)
        elif t in ("max_pool2d", "maxpool"):
            s = layer.get("size", 2)
            st = layer.get("stride") or s
            m = nn.MaxPool2d(s, st)
            shape = (shape[0], (shape[1] - s) // st + 1, (shape[2] - s) // st + 1)
        elif t == "flatten":
            m = nn.Flatten()
            shape = (int(np.prod(shape)),)
        elif t == "dropout":
            m = nn.Dropout(layer["p"])
        elif t == "relu":
            m = nn.ReLU()
        elif t == "sigmoid":
            m = nn.Sigmoid()
        elif t == "tanh":
            m = nn.Tanh()
        elif t == "batch_norm":
            m = (nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d)(shape[0], eps=layer.get("eps", 1e-5), momentum=layer.get("momentum", 0.1))
        else:
            sys.exit(f"layer type {t} not supported here")
        mods.append(m)
    net = nn.Sequential(*mods)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net


def load_images(path):
    with gzip.open(path) as f:
        data = f.read()
    n, r, c = np.frombuffer(data[4:16], dtype=">u4")
    return np.frombuffer(data[16:], dtype=np.uint8).reshape(n, 1, r, c)


def load_labels(path):
    with gzip.open(path) as f:
        data = f.read()
    return np.frombuffer(data[8:], dtype=np.uint8)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="cnn4")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--data-dir", default=os.path.join(ROOT, "data", "mnist"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    with open(model_file(args.arch), "rb") as f:
        spec = tomllib.load(f)
    opt_spec = spec.get("train", {}).get("optimizer", {"type": "adam", "lr": 0.001})
    dev = torch.device(args.device)
    net = build(spec).to(dev)
    net.train()
    if opt_spec.get("type", "adam") == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=opt_spec.get("lr", 0.001), eps=opt_spec.get("eps", 1e-8))
    else:
        opt = torch.optim.SGD(net.parameters(), lr=opt_spec["lr"], momentum=opt_spec.get("momentum", 0.0))
    loss_fn = nn.CrossEntropyLoss()
    images = torch.from_numpy(load_images(os.path.join(args.data_dir, "train-images-idx3-ubyte.gz")).copy()).to(dev)
    labels = torch.from_numpy(load_labels(os.path.join(args.data_dir, "train-labels-idx1-ubyte.gz")).astype(np.int64)).to(dev)
    perm = torch.randperm(images.shape[0], device=dev)
    batches = images.shape[0] // args.batch

    def step(i):
        idx = perm[(i % batches) * args.batch:(i % batches + 1) * args.batch]
        x = images[idx].float().div_(255.0)
        y = labels[idx]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        return loss

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for i in range(args.warmup):
        step(i)
    sync()
    warm = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        loss = step(i)
    sync()
    secs = time.perf_counter() - t0
    if not torch.isfinite(loss).item():
        sys.exit("loss became NaN")
    per_step = secs / args.steps
    out = {
        "system": "pytorch",
        "torch": torch.__version__,
        "arch": spec["name"],
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
        "batch": args.batch,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "warmup_seconds": warm,
        "seconds_per_step": per_step,
        "seconds_per_epoch": per_step * -(-EPOCH_IMAGES // args.batch),
        "images_per_second": args.batch / per_step,
    }
    if dev.type == "cuda":
        out["peak_memory_bytes"] = torch.cuda.max_memory_allocated(dev)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
