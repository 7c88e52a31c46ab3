#!/usr/bin/env python3
"""gpu-train against PyTorch, side by side in one invocation on one machine.

Runs `gpu-train bench` and bench/pytorch_bench.py alternately (so both see the same machine
state), `--repeats` times each, for every batch size asked for; prints the median seconds per
60,000-image epoch of each and their ratio, and writes the figures with the machine, driver,
commit and command to bench/results/<name>.json.

    python3 bench/compare.py --device cpu --arch cnn4 --batch 16 128
    python3 bench/compare.py --device gpu --arch cnn4 --batch 16 128 --python /path/to/python

Ratio = gpu-train time / PyTorch time (below 1.0: gpu-train is faster).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:
        return ""


def machine():
    cpu = sh("lscpu | sed -n 's/^Model name: *//p'") or platform.processor()
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "memory": sh("free -g | awk '/Mem:/ {print $2 \" GiB\"}'"),
    }
    gpu = sh("nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader")
    if gpu:
        info["gpu"] = gpu
    return info


def run_json(cmd, env=None):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "gpu"], required=True)
    ap.add_argument("--arch", default="cnn4")
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 128])
    ap.add_argument("--steps", type=int, default=0, help="timed steps per run (default: about 10 s of work)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "gpu-train"))
    ap.add_argument("--python", default=sys.executable, help="Python with torch installed")
    ap.add_argument("--name", default=None, help="results file name (default: device-arch-date)")
    args = ap.parse_args()

    torch_device = "cuda" if args.device == "gpu" else "cpu"
    results = []
    for batch in args.batch:
        steps = args.steps or max(20, (4000 if args.device == "cpu" else 60000) // batch)
        ours_cmd = [args.binary, "bench", "--arch", args.arch, "--batch", str(batch), "--steps", str(steps),
                    "--backend", args.device]
        torch_cmd = [args.python, os.path.join(ROOT, "bench", "pytorch_bench.py"), "--arch", args.arch,
                     "--batch", str(batch), "--steps", str(steps), "--device", torch_device]
        ours, theirs = [], []
        for r in range(args.repeats):
            ours.append(run_json(ours_cmd))
            theirs.append(run_json(torch_cmd))
            print(f"  batch {batch} run {r + 1}: gpu-train {ours[-1]['seconds_per_epoch']:.2f} s/epoch, "
                  f"pytorch {theirs[-1]['seconds_per_epoch']:.2f} s/epoch", file=sys.stderr)
        o = statistics.median(x["seconds_per_epoch"] for x in ours)
        t = statistics.median(x["seconds_per_epoch"] for x in theirs)
        results.append({
            "batch": batch,
            "steps": steps,
            "repeats": args.repeats,
            "gpu_train_seconds_per_epoch": o,
            "pytorch_seconds_per_epoch": t,
            "ratio": o / t,
            "gpu_train_device": ours[0].get("device"),
            "pytorch_device": theirs[0].get("device"),
            "torch_version": theirs[0].get("torch"),
            "gpu_train_runs": [x["seconds_per_epoch"] for x in ours],
            "pytorch_runs": [x["seconds_per_epoch"] for x in theirs],
            "pytorch_peak_memory_bytes": theirs[0].get("peak_memory_bytes"),
            "gpu_train_commands": ours_cmd,
            "pytorch_command": torch_cmd,
        })
        print(f"{args.arch} batch {batch} ({args.device}): gpu-train {o:.2f} s/epoch, PyTorch {t:.2f} s/epoch, "
              f"ratio {o / t:.3f}")
    record = {
        "what": f"{args.arch} training time per 60,000-image epoch, gpu-train vs PyTorch eager, {args.device}",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": sh(f"git -C {ROOT} rev-parse --short HEAD") + (" (dirty)" if sh(f"git -C {ROOT} status --porcelain -uno") else ""),
        "command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
        "machine": machine(),
        "environment": {k: v for k, v in os.environ.items() if k.startswith("GPU_TRAIN_")},
        "results": results,
    }
    name = args.name or f"{args.device}-{args.arch}-{datetime.date.today().isoformat()}"
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    path = os.path.join(ROOT, "bench", "results", name + ".json")
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    print(f"written to {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()
