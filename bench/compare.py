#!/usr/bin/env python3
"""gpu-train against PyTorch's fastest way of running the same training step, on one machine.

For every batch size: runs `gpu-train bench` `--repeats` times per precision class and, after
its first run, one bench/pytorch_bench.py process that measures every PyTorch variant asked
for (eager, cudagraph, compile-reduce-overhead, compile, ...: see that script) in the
matching precisions, compiling or capturing each once and timing it `--repeats` times.
Writes the figures with the machine, driver, commit, command and environment to
bench/results/<name>.json (after every batch, so a run cut short keeps what it measured) and
prints a table.

    python3 bench/compare.py --device cpu --arch cnn4 --batch 16 128
    python3 bench/compare.py --device gpu --arch cnn4 --batch 16 128 512 --precision both --steps 300

Precision classes (`--precision`, default f32):
  f32    `gpu-train bench` as it is (no --precision flag) against PyTorch in fp32 (on CUDA
         with PyTorch's default TF32 settings, recorded)
  mixed  `gpu-train bench --precision mixed` against PyTorch AMP (bf16, or f16 with a
         GradScaler where the GPU has no bf16); if the binary rejects the flag, that is
         recorded as the class's error and the rest still runs
  both   the two

Per batch, the results file has:
  gpu_train: {class: {seconds_per_epoch (median), runs, precision (as gpu-train reports it),
             device, command, error}}
  pytorch: one object per variant and precision: variant, precision, dtype,
           compile_seconds, capture_seconds, warmup_seconds, seconds_per_step,
           seconds_per_epoch (medians over the repeats), runs, peak_memory_bytes, loss,
           loss_finite, error, ...; what all variants share is in pytorch_env
  best_pytorch: {class: the fastest variant of the class's PyTorch precision (fp32 for f32,
           amp for mixed) whose loss stayed finite}
  ratio_vs_best: {class: gpu-train's time / best_pytorch's} (below 1.0: gpu-train is faster)
  ratio_vs_eager_fp32: gpu-train f32 / PyTorch eager fp32, the ratio earlier files called
           `ratio`
and the file records every environment variable that affects either side (GPU_TRAIN_*,
WGPU_*, VK_*, CUDA_*, TORCH*, PYTORCH*, NVIDIA_*), the GPU and driver, and torch's version.
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIT_CUDA_ERROR = 3  # pytorch_bench.py: stopped after a CUDA error, the rest not run
ENV_PREFIXES = ("GPU_TRAIN_", "WGPU_", "VK_", "CUDA_", "TORCH", "PYTORCH", "NVIDIA_")
# What pytorch_bench.py runs by default, fastest-to-set-up first (kept in step with it).
DEFAULT_VARIANTS = {
    "gpu": ["eager", "cudagraph", "compile-reduce-overhead", "compile"],
    "cpu": ["eager", "compile"],
}
TORCH_PRECISION = {"f32": "fp32", "mixed": "amp"}
# Keys every PyTorch variant of one process shares: kept once per batch, in pytorch_env.
SHARED_KEYS = ("system", "torch", "arch", "device", "batch", "steps", "repeats", "input", "data", "data_images",
               "data_note", "normalize", "tf32", "cudnn_benchmark", "cuda", "cudnn", "threads")


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
        first = [s.strip() for s in gpu.splitlines()[0].split(",")]
        if len(first) >= 2:
            info["gpu_name"], info["gpu_driver"] = first[0], first[1]
    return info


def tail(text, n=1500):
    text = (text or "").strip()
    return text if len(text) <= n else "..." + text[-n:]


def run_ours(cmd, timeout):
    """(result dict, None) or (None, error text) for one `gpu-train bench` run."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    except OSError as e:
        return None, f"could not run {cmd[0]}: {e}"
    if out.returncode != 0:
        return None, f"exit status {out.returncode}: {tail(out.stderr)}"
    try:
        return json.loads(out.stdout.strip().splitlines()[-1]), None
    except (ValueError, IndexError):
        return None, f"no JSON on stdout: {tail(out.stdout)} {tail(out.stderr)}"


def run_lines(cmd, timeout):
    """Runs cmd in its own process group; (exit status or None on timeout, JSON lines, stderr)."""
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        p = subprocess.Popen(cmd, stdout=so, stderr=se, cwd=ROOT, text=True, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # the process and its compile workers
            p.wait()
            rc = None
        so.seek(0)
        se.seek(0)
        lines = []
        for line in so.read().splitlines():
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if obj.get("system") == "pytorch":
                    lines.append(obj)
        return rc, lines, se.read()


def run_torch(cmd, expected, timeout, deadline):
    """Every (variant, precision) in `expected`, measured by as few processes as it takes: if
    one dies (a crash, a timeout) the combination it was running is recorded as failed, and a
    new process runs the ones it had not reached (also after pytorch_bench.py stops by itself
    after a CUDA error)."""
    got, problems = {}, []
    for _ in range(2 * len(expected)):
        todo = [c for c in expected if c not in got]
        if not todo:
            break
        if deadline is not None and time.monotonic() >= deadline:
            for v, p in todo:
                got[(v, p)] = {"variant": v, "precision": p, "failed_in": "process", "error": "not run: --deadline reached"}
            problems.append("--deadline reached")
            break
        limit = timeout if deadline is None else min(timeout, deadline - time.monotonic())
        skip = [f"{v}:{p}" for v, p in expected if (v, p) in got]
        rc, lines, err = run_lines(cmd + (["--skip"] + skip if skip else []), limit)
        for obj in lines:
            got[(obj["variant"], obj["precision"])] = obj
        todo = [c for c in expected if c not in got]
        if not todo:
            break
        if rc == EXIT_CUDA_ERROR and lines:
            # It stopped by itself after recording a CUDA error: the rest were never started.
            problems.append(f"{lines[-1]['variant']} {lines[-1]['precision']}: CUDA error, a new process for the rest")
            continue
        why = f"timed out after {limit:.0f} s" if rc is None else f"exit status {rc}"
        v, p = todo[0]
        got[(v, p)] = {"variant": v, "precision": p, "failed_in": "process",
                       "error": f"the PyTorch process ended ({why}) while running this: {tail(err)}"}
        problems.append(f"{v} {p}: process ended ({why})")
    return [got[c] for c in expected if c in got], problems


def median_or_none(xs):
    return statistics.median(xs) if xs else None


def summarize_ours(runs, errors, cmd):
    ok = [r for r in runs if r]
    out = {
        "seconds_per_epoch": median_or_none([r["seconds_per_epoch"] for r in ok]),
        "seconds_per_step": median_or_none([r["seconds_per_step"] for r in ok]),
        "runs": [r["seconds_per_epoch"] for r in ok],
        "precision": ok[0].get("precision") if ok else None,
        "device": ok[0].get("device") if ok else None,
        "command": cmd,
    }
    for key in ("shader_compile_seconds", "setup_seconds", "device_memory_peak_bytes"):
        if ok and key in ok[0]:
            out[key] = ok[0][key]
    if errors:
        out["error"] = errors[0] if len(set(errors)) == 1 else errors
    return out


def best_of(variants, precision):
    ok = [v for v in variants if v.get("precision") == precision and v.get("seconds_per_epoch") and v.get("loss_finite", True)]
    if not ok:
        return None
    b = min(ok, key=lambda v: v["seconds_per_epoch"])
    return {k: b.get(k) for k in ("variant", "precision", "dtype", "seconds_per_epoch", "seconds_per_step")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--device", choices=["cpu", "gpu"], required=True)
    ap.add_argument("--arch", default="cnn4")
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 128])
    ap.add_argument("--steps", type=int, default=0,
                    help="timed steps per run, both programs (default: cpu 4000/batch, gpu 10000/batch, at least 20 / 100)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps per run, both programs")
    ap.add_argument("--repeats", type=int, default=3,
                    help="gpu-train runs per class; timed sections per PyTorch variant (after one compile)")
    ap.add_argument("--precision", choices=["f32", "mixed", "both", "fp32", "amp"], default="f32")
    ap.add_argument("--variants", nargs="+", default=None,
                    help="PyTorch variants (default: gpu: " + " ".join(DEFAULT_VARIANTS["gpu"]) +
                         "; cpu: " + " ".join(DEFAULT_VARIANTS["cpu"]) + ")")
    ap.add_argument("--torch-args", default="", help="more arguments for pytorch_bench.py, e.g. '--adam fused'")
    ap.add_argument("--torch-timeout", type=float, default=1200, help="seconds one PyTorch process may take")
    ap.add_argument("--deadline", type=float, default=None,
                    help="seconds from now after which nothing new is started (what ran is written)")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "gpu-train"))
    ap.add_argument("--python", default=sys.executable, help="Python with torch installed")
    ap.add_argument("--name", default=None, help="results file name (default: device-arch-date)")
    ap.add_argument("--note", default=None, help="a remark to keep in the results file")
    args = ap.parse_args()
    start = time.monotonic()
    deadline = None if args.deadline is None else start + args.deadline

    precision = {"fp32": "f32", "amp": "mixed"}.get(args.precision, args.precision)
    classes = ["f32", "mixed"] if precision == "both" else [precision]
    torch_precision = "both" if len(classes) == 2 else TORCH_PRECISION[classes[0]]
    variants = args.variants or DEFAULT_VARIANTS[args.device]
    torch_device = "cuda" if args.device == "gpu" else "cpu"
    name = args.name or f"{args.device}-{args.arch}-{datetime.date.today().isoformat()}"
    path = os.path.join(ROOT, "bench", "results", name + ".json")
    os.makedirs(os.path.dirname(path), exist_ok=True)

    record = {
        "what": f"{args.arch} training time per 60,000-image epoch, gpu-train vs PyTorch "
                f"({', '.join(variants)}; {' and '.join(classes)} precision class{'es' if len(classes) > 1 else ''}), {args.device}",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": sh(f"git -C {ROOT} rev-parse --short HEAD") + (" (dirty)" if sh(f"git -C {ROOT} status --porcelain -uno") else ""),
        "command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + [shlex.quote(a) for a in sys.argv[1:]]),
        "machine": machine(),
        "environment": {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)},
        "python": args.python,
        "torch_version": None,
        "settings": {"precision_classes": classes, "variants": variants, "repeats": args.repeats,
                     "warmup": args.warmup, "torch_args": args.torch_args},
        "results": [],
    }
    if args.note:
        record["note"] = args.note

    def write():
        with open(path, "w") as f:
            json.dump(record, f, indent=2)

    no_f32_flag = False  # set when the binary rejects --precision
    warnings = []
    broken = {}  # class -> error: a binary that rejects --precision mixed is not asked again
    for batch in args.batch:
        if deadline is not None and time.monotonic() >= deadline:
            record["incomplete"] = f"--deadline reached before batch {batch}"
            break
        steps = args.steps or (max(20, 4000 // batch) if args.device == "cpu" else max(100, 10000 // batch))
        ours_cmd = {}
        for c in classes:
            ours_cmd[c] = [args.binary, "bench", "--arch", args.arch, "--batch", str(batch), "--steps", str(steps),
                           "--warmup", str(args.warmup), "--backend", args.device]
            # gpu-train's --precision flag is new: asked for only when the mixed class is (and
            # then for f32 too, so that an `auto` default cannot make the f32 run mixed).
            if "mixed" in classes and not (c == "f32" and no_f32_flag):
                ours_cmd[c] += ["--precision", c]
        torch_cmd = [args.python, os.path.join(ROOT, "bench", "pytorch_bench.py"), "--arch", args.arch,
                     "--batch", str(batch), "--steps", str(steps), "--warmup", str(args.warmup),
                     "--repeats", str(args.repeats), "--device", torch_device, "--precision", torch_precision,
                     "--variants", *variants] + shlex.split(args.torch_args)
        expected = [(v, p) for v in variants for p in (["fp32", "amp"] if torch_precision == "both" else [torch_precision])]
        ours = {c: [] for c in classes}
        ours_err = {c: [] for c in classes}
        theirs, problems = [], []
        for r in range(args.repeats):
            for c in classes:
                if c in broken or (deadline is not None and time.monotonic() >= deadline):
                    continue
                res, err = run_ours(ours_cmd[c], timeout=600)
                if err and c == "f32" and "--precision" in ours_cmd[c] and "unexpected argument" in err:
                    # A binary from before --precision: its only precision is f32.
                    no_f32_flag = True
                    ours_cmd[c] = ours_cmd[c][:-2]
                    res, err = run_ours(ours_cmd[c], timeout=600)
                if res and c == "f32" and res.get("precision") not in (None, "f32"):
                    warnings.append(f"batch {batch}: the f32 run reported precision {res.get('precision')!r}")
                if err:
                    ours_err[c].append(err)
                    if r == 0 and not ours[c]:
                        broken[c] = err  # fails at once: do not spend the budget asking again
                    print(f"  batch {batch} gpu-train {c} run {r + 1}: FAILED: {err[:300]}", file=sys.stderr)
                else:
                    ours[c].append(res)
                    print(f"  batch {batch} gpu-train {c} run {r + 1}: {res['seconds_per_epoch']:.3f} s/epoch", file=sys.stderr)
            if r == 0:
                t0 = time.monotonic()
                theirs, problems = run_torch(torch_cmd, expected, args.torch_timeout, deadline)
                for v in theirs:
                    what = (f"{v['seconds_per_epoch']:.3f} s/epoch" if v.get("seconds_per_epoch")
                            else f"FAILED in {v.get('failed_in')}: {v.get('error', '')[:200]}")
                    print(f"  batch {batch} pytorch {v['variant']} {v['precision']}: {what}", file=sys.stderr)
                print(f"  batch {batch} pytorch: {time.monotonic() - t0:.1f} s for {len(expected)} variants", file=sys.stderr)
        for c in classes:
            if c in broken and not ours_err[c]:
                ours_err[c].append(f"not run: an earlier batch failed: {broken[c]}")

        env = next((v for v in theirs if "torch" in v), {})
        record["torch_version"] = record["torch_version"] or env.get("torch")
        gpu_train = {c: summarize_ours(ours[c], ours_err[c], ours_cmd[c]) for c in classes}
        pytorch = [{k: v for k, v in t.items() if k not in SHARED_KEYS} for t in theirs]
        best = {c: best_of(theirs, TORCH_PRECISION[c]) for c in classes}
        ratio = {c: (gpu_train[c]["seconds_per_epoch"] / best[c]["seconds_per_epoch"])
                 if gpu_train[c]["seconds_per_epoch"] and best[c] else None for c in classes}
        eager = next((t for t in theirs if t["variant"] == "eager" and t["precision"] == "fp32" and t.get("seconds_per_epoch")), None)
        ours_f32 = gpu_train.get("f32", {}).get("seconds_per_epoch")
        result = {
            "batch": batch,
            "steps": steps,
            "repeats": args.repeats,
            "gpu_train": gpu_train,
            "best_pytorch": best,
            "ratio_vs_best": ratio,
            "ratio_vs_eager_fp32": ours_f32 / eager["seconds_per_epoch"] if ours_f32 and eager else None,
            "pytorch": pytorch,
            "pytorch_env": {k: env[k] for k in SHARED_KEYS if k in env},
            "pytorch_command": torch_cmd,
        }
        if problems:
            result["pytorch_process_problems"] = problems
        record["results"].append(result)
        if warnings:
            record["warnings"] = warnings
        write()
    record["elapsed_seconds"] = round(time.monotonic() - start, 1)
    write()
    print_table(record)
    print(f"written to {os.path.relpath(path, ROOT)}")


def fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def print_table(record):
    s = record["settings"]
    print(f"{record['what']}\nseconds per 60,000-image epoch (median of {s['repeats']}); PyTorch setup = compile or capture seconds, apart")
    print(f"{'batch':>5}  {'PyTorch variant':<24} {'prec':<5} {'s/epoch':>9} {'ms/step':>9} {'setup s':>8}")
    for r in record["results"]:
        for v in r["pytorch"]:
            setup = v.get("compile_seconds") if v.get("compile_seconds") is not None else v.get("capture_seconds")
            if v.get("seconds_per_epoch"):
                print(f"{r['batch']:>5}  {v['variant']:<24} {v['precision']:<5} {fmt(v['seconds_per_epoch']):>9} "
                      f"{fmt(1e3 * v['seconds_per_step']):>9} {fmt(setup, '.1f'):>8}"
                      + ("" if v.get("loss_finite", True) else "  (loss not finite)"))
            else:
                print(f"{r['batch']:>5}  {v['variant']:<24} {v['precision']:<5} failed in {v.get('failed_in')}: "
                      f"{(v.get('error') or '').splitlines()[0][:90] if v.get('error') else ''}")
    print(f"{'batch':>5}  {'class':<6} {'gpu-train':>10} {'best PyTorch':>13} {'(variant)':<30} {'vs best':>8} {'vs eager fp32':>14}")
    for r in record["results"]:
        for c, g in r["gpu_train"].items():
            b = r["best_pytorch"].get(c)
            if g["seconds_per_epoch"] is None:
                err = g.get("error")
                err = err if isinstance(err, str) else (err or ["no run"])[0]
                print(f"{r['batch']:>5}  {c:<6} failed: {err.splitlines()[0][:110] if err else ''}")
                continue
            label = f"({b['variant']} {b['dtype']})" if b else "(none ran)"
            print(f"{r['batch']:>5}  {c:<6} {fmt(g['seconds_per_epoch']):>10} {fmt(b['seconds_per_epoch'] if b else None):>13} "
                  f"{label:<30} {fmt(r['ratio_vs_best'].get(c)):>8} "
                  f"{fmt(r['ratio_vs_eager_fp32'] if c == 'f32' else None):>14}")


if __name__ == "__main__":
    main()
