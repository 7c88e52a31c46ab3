#!/usr/bin/env python3
"""Writes an IDX data set (MNIST, Fashion-MNIST, ...) as folders of PNG pictures, one folder
per class, as torchvision's ImageFolder and Keras' image_dataset_from_directory read them:

    OUT/train/<class>/<index>.png   (the training set, index = position in the IDX file)
    OUT/test/<class>/<index>.png    (the test set)

The PNGs are written by Pillow (8-bit grayscale), so `gpu-train --data OUT` reads pictures
made by a library no one here wrote. Class folders are the labels ("0" ... "9"), or names:
`--names fashion` gives Fashion-MNIST's ("T-shirt_top", "Trouser", ...).

    python3 bench/idx_to_png.py data/mnist /tmp/mnist-png
    python3 bench/idx_to_png.py /usr/share/datasets/fashion-mnist /tmp/fashion-png --names fashion
    python3 bench/idx_to_png.py data/mnist /tmp/mnist-small --limit 1000   # the first 1,000 of each
"""
import argparse
import gzip
import os
import sys

try:
    from PIL import Image
except ImportError:
    sys.exit("needs Pillow (python3 -m pip install pillow)")

FASHION = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]


def read_idx(directory, stem):
    """The bytes of `stem` (raw or .gz, `-` or `.` before the kind) in `directory`."""
    for sep in "-.":
        for ext in ("", ".gz"):
            kind = "idx3-ubyte" if "images" in stem else "idx1-ubyte"
            path = os.path.join(directory, f"{stem}{sep}{kind}{ext}")
            if os.path.isfile(path):
                opener = gzip.open if ext else open
                with opener(path, "rb") as f:
                    return f.read()
    sys.exit(f"no {stem} file in {directory}")


def split(directory, stem):
    images = read_idx(directory, f"{stem}-images")
    labels = read_idx(directory, f"{stem}-labels")
    n, rows, cols = (int.from_bytes(images[i:i + 4], "big") for i in (4, 8, 12))
    if int.from_bytes(labels[4:8], "big") != n:
        sys.exit(f"{directory}: {stem} images and labels differ in count")
    size = rows * cols
    return [(images[16 + i * size:16 + (i + 1) * size], labels[8 + i]) for i in range(n)], (cols, rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("idx_dir")
    ap.add_argument("out")
    ap.add_argument("--names", choices=["digits", "fashion"], default="digits")
    ap.add_argument("--limit", type=int, help="only the first N pictures of each split")
    args = ap.parse_args()
    for stem, name in (("train", "train"), ("t10k", "test")):
        examples, size = split(args.idx_dir, stem)
        examples = examples[:args.limit]
        for i, (pixels, label) in enumerate(examples):
            cls = FASHION[label] if args.names == "fashion" else str(label)
            folder = os.path.join(args.out, name, cls)
            os.makedirs(folder, exist_ok=True)
            Image.frombytes("L", size, pixels).save(os.path.join(folder, f"{i:05d}.png"))
        print(f"{name}: {len(examples)} pictures in {args.out}/{name}")


if __name__ == "__main__":
    main()
