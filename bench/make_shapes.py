#!/usr/bin/env python3
"""A generated RGB data set: coloured shapes on coloured backgrounds, one folder per class.

Four classes (circle, cross, square, triangle), each picture SIZE x SIZE (32 by default)
with a random background colour, a random shape colour at least a set distance from it, a
random size (from 40% to 90% of the picture across), position and rotation, and
mild pixel noise. Written by Pillow as PNG:

    OUT/train/<class>/<index>.png and OUT/test/<class>/<index>.png

or, with --format cifar (32x32 only), as CIFAR-10's binary files: OUT/data_batch_1.bin and
OUT/test_batch.bin (records of a label byte and 3072 planar RGB bytes) with the class names in
OUT/batches.meta.txt, which `gpu-train --data OUT` reads as it reads CIFAR-10.

    python3 bench/make_shapes.py /tmp/shapes --train 2000 --test 500 --seed 1
    python3 bench/make_shapes.py /tmp/shapes-cifar --format cifar --train 10000 --test 2000
"""
import argparse
import math
import os
import random
import sys

try:
    from PIL import Image, ImageDraw
except ImportError:
    sys.exit("needs Pillow (python3 -m pip install pillow)")

CLASSES = ["circle", "cross", "square", "triangle"]


def colour(rng):
    return tuple(rng.randrange(256) for _ in range(3))


def far_colour(rng, other, distance=160):
    while True:
        c = colour(rng)
        if sum(abs(a - b) for a, b in zip(c, other)) >= distance:
            return c


def picture(rng, cls, size):
    bg = colour(rng)
    fg = far_colour(rng, bg)
    # Drawn at 4x and shrunk: smooth edges, as a photographed shape would have.
    s = 4 * size
    img = Image.new("RGB", (s, s), bg)
    d = ImageDraw.Draw(img)
    r = rng.uniform(0.2, 0.45) * s
    cx, cy = rng.uniform(r, s - r), rng.uniform(r, s - r)
    angle = rng.uniform(0, 2 * math.pi)

    def rotated(points):
        c, sn = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * sn, cy + x * sn + y * c) for x, y in points]

    if cls == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif cls == "square":
        h = r / math.sqrt(2)
        d.polygon(rotated([(-h, -h), (h, -h), (h, h), (-h, h)]), fill=fg)
    elif cls == "triangle":
        d.polygon(rotated([(r * math.cos(a), r * math.sin(a)) for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)]), fill=fg)
    else:
        w = r / 3
        d.polygon(rotated([(-r, -w), (r, -w), (r, w), (-r, w)]), fill=fg)
        d.polygon(rotated([(-w, -r), (w, -r), (w, r), (-w, r)]), fill=fg)
    img = img.resize((size, size), Image.BILINEAR)
    px = img.load()
    for y in range(size):
        for x in range(size):
            px[x, y] = tuple(min(255, max(0, v + rng.randint(-12, 12))) for v in px[x, y])
    return img


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=2000, help="pictures in the training set")
    ap.add_argument("--test", type=int, default=500, help="pictures in the test set")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--format", choices=["png", "cifar"], default="png")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    if args.format == "cifar":
        if args.size != 32:
            sys.exit("--format cifar writes 32x32 pictures (CIFAR-10's records)")
        os.makedirs(args.out, exist_ok=True)
        for name, count in (("data_batch_1.bin", args.train), ("test_batch.bin", args.test)):
            with open(os.path.join(args.out, name), "wb") as f:
                for i in range(count):
                    label = i % len(CLASSES)
                    img = picture(rng, CLASSES[label], 32)
                    planes = [img.getchannel(c).tobytes() for c in "RGB"]
                    f.write(bytes([label]) + b"".join(planes))
            print(f"{name}: {count} pictures of {len(CLASSES)} classes")
        with open(os.path.join(args.out, "batches.meta.txt"), "w") as f:
            f.write("\n".join(CLASSES) + "\n")
        return
    for name, count in (("train", args.train), ("test", args.test)):
        for i in range(count):
            cls = CLASSES[i % len(CLASSES)]
            folder = os.path.join(args.out, name, cls)
            os.makedirs(folder, exist_ok=True)
            picture(rng, cls, args.size).save(os.path.join(folder, f"{i:05d}.png"))
        print(f"{name}: {count} pictures of {len(CLASSES)} classes in {args.out}/{name}")


if __name__ == "__main__":
    main()
