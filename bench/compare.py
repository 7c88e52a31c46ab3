#!/usr/bin/env python3
"""gpu-train against PyTorch's fastest way of running the same training step, on one machine.

For every batch size: runs `gpu-train bench` `--repeats` times per precision class and, after
its first run, one bench/pytorch_bench.py process that measures every PyTorch variant asked
for (eager, cudagraph, compile-reduce-overhead, compile, ...: see that script) in the
matching precisions, compiling or capturing each once and timing it `--repeats` times.
Writes the figures with the machine, driver, commit, command and environment to
bench/results/<name>.json (after every batch, and with --seeds every K, so that a run cut
short keeps what it measured) and prints a table.

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

K models at once (`--seeds K [K ...]`, e.g. `--seeds 1 4 8 16`): for every batch and K,
`gpu-train bench --seeds 1..K` (K models trained as one fused network) `--repeats` times per
class against PyTorch's fastest way to train the same K models (K models of the
architecture, each with its own initialisation, the same batches; see pytorch_bench.py
--models): `sequential` (one after another: a member-step is one model's step, measured
once per batch by pytorch_bench.py without --models and recorded under every K) or `vmap`
(torch.func.vmap over the stacked parameters, measured per K > 1 by `pytorch_bench.py
--models K --routes vmap`), each in every variant asked for. The figure is seconds per
member-step: one model's share of a step of all K (gpu-train: seconds_per_step / K).

    python3 bench/compare.py --device gpu --arch cnn4 --batch 16 --seeds 1 4 8 16 --steps 300

Per batch, the results file then has, instead of the keys above: batch, steps, repeats,
pytorch_env, pytorch_commands (sequential and one per K: vmap K=...), and arrays, one object
per K:
  models: K
  gpu_train: {class: {seconds_per_member_step (median), runs (seconds per member-step),
           seconds_per_step (the fused step of all K), seconds_per_epoch (all K models' epoch,
           as gpu-train reports it), members, and on the GPU dispatches_per_step,
           dispatches_per_member_step, host_seconds_per_step, host_seconds_per_member_step
           (medians); speedup_vs_k1: the K = 1 run's seconds per member-step / this K's (null
           without a K = 1 run); precision, device, command, error}}
  pytorch: one object per route, variant and precision: route, models, seconds_per_step (the
           vmapped step of all K; sequential: one model's), seconds_per_member_step, loss,
           loss_finite, vmap_check (whether vmap computes what K separate models do), error, ...
  best_pytorch_k: {class: the fastest route and variant of the class's PyTorch precision whose
           loss stayed finite, by seconds per member-step}
  ratio_vs_best_k: {class: gpu-train's seconds per member-step / best_pytorch_k's} (below 1.0:
           gpu-train is faster)
A K whose first gpu-train run fails is not run again for that K (the other K still run);
`--deadline` applies between K as between batches. Without --seeds the format is as above.
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
EPOCH_IMAGES = 60_000
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


def combination(route, variant, precision):
    """pytorch_bench.py's name for one measurement (its --skip takes these)."""
    return ":".join(([route] if route else []) + [variant, precision])


def key_of(obj):
    return obj.get("route"), obj["variant"], obj["precision"]


def run_torch(cmd, expected, timeout, deadline):
    """Every (route, variant, precision) in `expected` (route None without --models),
    measured by as few processes as it takes: if one dies (a crash, a timeout) the
    combination it was running is recorded as failed, and a new process runs the ones it had
    not reached (also after pytorch_bench.py stops by itself after a CUDA error)."""
    got, problems = {}, []

    def failed(c, error):
        r, v, p = c
        return dict({"route": r} if r else {}, variant=v, precision=p, failed_in="process", error=error)

    for _ in range(2 * len(expected)):
        todo = [c for c in expected if c not in got]
        if not todo:
            break
        if deadline is not None and time.monotonic() >= deadline:
            for c in todo:
                got[c] = failed(c, "not run: --deadline reached")
            problems.append("--deadline reached")
            break
        limit = timeout if deadline is None else min(timeout, deadline - time.monotonic())
        skip = [combination(*c) for c in expected if c in got]
        rc, lines, err = run_lines(cmd + (["--skip"] + skip if skip else []), limit)
        for obj in lines:
            got[key_of(obj)] = obj
        todo = [c for c in expected if c not in got]
        if not todo:
            break
        if rc == EXIT_CUDA_ERROR and lines:
            # It stopped by itself after recording a CUDA error: the rest were never started.
            problems.append(f"{combination(*key_of(lines[-1]))}: CUDA error, a new process for the rest")
            continue
        why = f"timed out after {limit:.0f} s" if rc is None else f"exit status {rc}"
        got[todo[0]] = failed(todo[0], f"the PyTorch process ended ({why}) while running this: {tail(err)}")
        problems.append(f"{combination(*todo[0])}: process ended ({why})")
    return [got[c] for c in expected if c in got], problems


def median_or_none(xs):
    return statistics.median(xs) if xs else None


def summarize_ours(runs, errors, cmd, per="seconds_per_epoch"):
    ok = [r for r in runs if r]
    out = {
        "seconds_per_epoch": median_or_none([r["seconds_per_epoch"] for r in ok]),
        "seconds_per_step": median_or_none([r["seconds_per_step"] for r in ok]),
        "runs": [r[per] for r in ok],
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


def summarize_members(runs, errors, cmd):
    """summarize_ours for `gpu-train bench --seeds`: runs are seconds per member-step, and the
    GPU's dispatch and host-time counts per step and per member-step (medians; the dispatch
    count is the same in every run)."""
    ok = [r for r in runs if r]
    out = summarize_ours(runs, errors, cmd, per="seconds_per_member_step")
    out["members"] = ok[0].get("members") if ok else None
    for key in ("seconds_per_member_step", "dispatches_per_step", "dispatches_per_member_step",
                "host_seconds_per_step", "host_seconds_per_member_step"):
        values = [r[key] for r in ok if r.get(key) is not None]
        if values or key == "seconds_per_member_step":
            out[key] = median_or_none(values)
    return out


def best_of(variants, precision, per="seconds_per_epoch"):
    """The fastest of `variants` in `precision` whose loss stayed finite, by `per`."""
    ok = [v for v in variants if v.get("precision") == precision and v.get(per) and v.get("loss_finite", True)]
    if not ok:
        return None
    b = min(ok, key=lambda v: v[per])
    keys = ("variant", "precision", "dtype", "seconds_per_epoch", "seconds_per_step")
    if per == "seconds_per_member_step":
        keys = ("route", "variant", "precision", "dtype", "seconds_per_member_step", "seconds_per_step")
    return {k: b.get(k) for k in keys}


def as_sequential(rec, k, batch):
    """A `pytorch_bench.py` single-model record as the sequential route's at K models, as
    `pytorch_bench.py --models K --routes sequential` would write it (the same measurement:
    one model's step is a member-step; all K models' epoch takes K of one model's)."""
    out = {key: v for key, v in rec.items() if key not in SHARED_KEYS}
    out.update(route="sequential", models=k, measured_with_models=1)
    if out.get("seconds_per_step"):
        out["seconds_per_member_step"] = out["seconds_per_step"]
        out["seconds_per_epoch"] = out["seconds_per_step"] * k * -(-EPOCH_IMAGES // batch)
        out["images_per_second"] = batch / (out["seconds_per_step"] * k)
    return out


class Ours:
    """`gpu-train bench` runs, and what earlier runs taught about the binary: whether it takes
    --precision, and (in `broken`) which runs failed at once and are not asked for again."""

    def __init__(self, args, classes):
        self.args, self.classes = args, classes
        self.no_f32_flag = False  # set when the binary rejects --precision
        self.warnings = []

    def commands(self, batch, steps, extra=()):
        a = self.args
        cmds = {}
        for c in self.classes:
            cmds[c] = [a.binary, "bench", "--arch", a.arch, "--batch", str(batch), "--steps", str(steps),
                       "--warmup", str(a.warmup), "--backend", a.device, *extra]
            # gpu-train's --precision flag is new: asked for only when the mixed class is (and
            # then for f32 too, so that an `auto` default cannot make the f32 run mixed).
            if "mixed" in self.classes and not (c == "f32" and self.no_f32_flag):
                cmds[c] += ["--precision", c]
        return cmds

    def interleaved(self, cmds, broken, label, show, deadline, torch_step):
        """--repeats runs of each class's command in `cmds`, with torch_step() (the PyTorch
        measurement) after the first, so that both see the machine in the same state: (runs,
        errors) per class. A class whose first run fails goes into `broken` (class -> error)
        and is not run again by whoever passes the same `broken`."""
        ours = {c: [] for c in cmds}
        errs = {c: [] for c in cmds}
        for r in range(self.args.repeats):
            for c in cmds:
                if c in broken or (deadline is not None and time.monotonic() >= deadline):
                    continue
                res, err = run_ours(cmds[c], timeout=600)
                if err and c == "f32" and "--precision" in cmds[c] and "unexpected argument" in err:
                    # A binary from before --precision: its only precision is f32.
                    self.no_f32_flag = True
                    cmds[c] = cmds[c][:-2]
                    res, err = run_ours(cmds[c], timeout=600)
                if res and c == "f32" and res.get("precision") not in (None, "f32"):
                    self.warnings.append(f"{label}: the f32 run reported precision {res.get('precision')!r}")
                if err:
                    errs[c].append(err)
                    if r == 0 and not ours[c]:
                        broken[c] = err  # fails at once: do not spend the budget asking again
                    print(f"  {label} gpu-train {c} run {r + 1}: FAILED: {err[:300]}", file=sys.stderr)
                else:
                    ours[c].append(res)
                    print(f"  {label} gpu-train {c} run {r + 1}: {show(res)}", file=sys.stderr)
            if r == 0:
                torch_step()
        for c in cmds:
            if c in broken and not errs[c]:
                errs[c].append(f"not run: an earlier run failed: {broken[c]}")
        return ours, errs


def torch_command(args, batch, steps, torch_device, torch_precision, variants, models=1):
    cmd = [args.python, os.path.join(ROOT, "bench", "pytorch_bench.py"), "--arch", args.arch,
           "--batch", str(batch), "--steps", str(steps), "--warmup", str(args.warmup),
           "--repeats", str(args.repeats), "--device", torch_device, "--precision", torch_precision,
           "--variants", *variants]
    if models > 1:
        cmd += ["--models", str(models), "--routes", "vmap"]
    return cmd + shlex.split(args.torch_args)


def run_torch_logged(cmd, expected, args, deadline, label, per):
    t0 = time.monotonic()
    theirs, problems = run_torch(cmd, expected, args.torch_timeout, deadline)
    for v in theirs:
        what = (f"{v[per]:.6f} {per}" if v.get(per)
                else f"FAILED in {v.get('failed_in')}: {v.get('error', '')[:200]}")
        print(f"  {label} pytorch {combination(*key_of(v)).replace(':', ' ')}: {what}", file=sys.stderr)
    print(f"  {label} pytorch: {time.monotonic() - t0:.1f} s for {len(expected)} variants", file=sys.stderr)
    return theirs, problems


def measure_batch(args, ours, broken, batch, steps, classes, torch_device, torch_precision, variants, deadline):
    """One batch size without --seeds: gpu-train against every PyTorch variant, per class."""
    label = f"batch {batch}"
    cmds = ours.commands(batch, steps)
    torch_cmd = torch_command(args, batch, steps, torch_device, torch_precision, variants)
    expected = [(None, v, p) for v in variants for p in (["fp32", "amp"] if torch_precision == "both" else [torch_precision])]
    got = {"theirs": [], "problems": []}

    def torch_step():
        got["theirs"], got["problems"] = run_torch_logged(torch_cmd, expected, args, deadline, label, "seconds_per_epoch")

    runs, errs = ours.interleaved(cmds, broken, label, lambda res: f"{res['seconds_per_epoch']:.3f} s/epoch",
                                  deadline, torch_step)
    theirs, problems = got["theirs"], got["problems"]
    env = next((v for v in theirs if "torch" in v), {})
    gpu_train = {c: summarize_ours(runs[c], errs[c], cmds[c]) for c in classes}
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
    return result, env


def measure_arrays(args, ours, broken_by_k, batch, steps, classes, torch_device, torch_precision, variants,
                   deadline, written):
    """One batch size with --seeds: for each K, gpu-train's K-model array (`--seeds 1..K`)
    against PyTorch's K-model routes. The sequential route is one model's step, measured once
    per batch (`pytorch_bench.py` without --models, after the first K's first gpu-train run)
    and recorded under every K; vmap is measured per K > 1 (`--models K --routes vmap`).
    Calls written(result) after every K, so that a run cut short keeps what it measured."""
    precisions = ["fp32", "amp"] if torch_precision == "both" else [torch_precision]
    result = {"batch": batch, "steps": steps, "repeats": args.repeats, "arrays": [], "pytorch_commands": {}}
    single = {"theirs": None}
    problems = []
    env = {}
    for k in args.seeds:
        if deadline is not None and time.monotonic() >= deadline:
            result["incomplete"] = f"--deadline reached before K = {k}"
            break
        label = f"batch {batch} K={k}"
        cmds = ours.commands(batch, steps, extra=["--seeds", f"1..{k}"])
        vmap_cmd = torch_command(args, batch, steps, torch_device, torch_precision, variants, models=k) if k > 1 else None
        vmap = {"theirs": []}

        def torch_step():
            if single["theirs"] is None:
                cmd = torch_command(args, batch, steps, torch_device, torch_precision, variants)
                result["pytorch_commands"]["sequential"] = cmd
                expected = [(None, v, p) for v in variants for p in precisions]
                single["theirs"], found = run_torch_logged(cmd, expected, args, deadline, f"batch {batch} sequential",
                                                           "seconds_per_step")
                problems.extend(f"sequential {p}" for p in found)
            if vmap_cmd:
                result["pytorch_commands"][f"vmap K={k}"] = vmap_cmd
                expected = [("vmap", v, p) for v in variants for p in precisions]
                vmap["theirs"], found = run_torch_logged(vmap_cmd, expected, args, deadline, label,
                                                         "seconds_per_member_step")
                problems.extend(f"vmap K={k} {p}" for p in found)

        runs, errs = ours.interleaved(
            cmds, broken_by_k.setdefault(k, {}), label,
            lambda res: f"{1e3 * res['seconds_per_member_step']:.4f} ms/member-step", deadline, torch_step)
        env = env or next((v for v in (single["theirs"] or []) + vmap["theirs"] if "torch" in v), {})
        pytorch = [as_sequential(t, k, batch) for t in single["theirs"] or []]
        pytorch += [{key: v for key, v in t.items() if key not in SHARED_KEYS} for t in vmap["theirs"]]
        gpu_train = {c: summarize_members(runs[c], errs[c], cmds[c]) for c in classes}
        best = {c: best_of(pytorch, TORCH_PRECISION[c], per="seconds_per_member_step") for c in classes}
        ratio = {c: gpu_train[c]["seconds_per_member_step"] / best[c]["seconds_per_member_step"]
                 if gpu_train[c]["seconds_per_member_step"] and best[c] else None for c in classes}
        result["arrays"].append({"models": k, "gpu_train": gpu_train, "best_pytorch_k": best,
                                 "ratio_vs_best_k": ratio, "pytorch": pytorch})
        # gpu-train's K = 1 member-step over this K's: how much the array gains per model.
        k1 = next((a["gpu_train"] for a in result["arrays"] if a["models"] == 1), {})
        for a in result["arrays"]:
            for c, g in a["gpu_train"].items():
                base = k1.get(c, {}).get("seconds_per_member_step")
                g["speedup_vs_k1"] = base / g["seconds_per_member_step"] if base and g["seconds_per_member_step"] else None
        result["pytorch_env"] = {key: env[key] for key in SHARED_KEYS if key in env}
        if problems:
            result["pytorch_process_problems"] = problems
        written(result, env)
    written(result, env)  # also when the deadline came before any K


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
    ap.add_argument("--seeds", type=int, nargs="+", default=None, metavar="K",
                    help="K models at once, for each K given: gpu-train --seeds 1..K against PyTorch's K-model "
                         "routes (sequential, vmap); seconds per member-step")
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

    if args.seeds and min(args.seeds) < 1:
        sys.exit("--seeds takes model counts K of at least 1")
    what = (f"{args.arch} training time per 60,000-image epoch, gpu-train vs PyTorch" if not args.seeds else
            f"{args.arch}, K models at once (K = {', '.join(map(str, args.seeds))}): seconds per member-step, "
            f"gpu-train --seeds 1..K vs PyTorch's K-model routes (sequential, vmap)")
    record = {
        "what": f"{what} ({', '.join(variants)}; {' and '.join(classes)} precision class{'es' if len(classes) > 1 else ''}), {args.device}",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": sh(f"git -C {ROOT} rev-parse --short HEAD") + (" (dirty)" if sh(f"git -C {ROOT} status --porcelain -uno") else ""),
        "command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + [shlex.quote(a) for a in sys.argv[1:]]),
        "machine": machine(),
        "environment": {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)},
        "python": args.python,
        "torch_version": None,
        "settings": {"precision_classes": classes, "variants": variants, "repeats": args.repeats,
                     "warmup": args.warmup, "torch_args": args.torch_args, **({"seeds": args.seeds} if args.seeds else {})},
        "results": [],
    }
    if args.note:
        record["note"] = args.note

    def write():
        with open(path, "w") as f:
            json.dump(record, f, indent=2)

    ours = Ours(args, classes)
    broken = {}  # class -> error: a binary that rejects --precision mixed is not asked again
    broken_by_k = {}  # the same per K with --seeds: one K failing (out of memory, say) spares the others

    def written(result, env):
        if not any(r is result for r in record["results"]):
            record["results"].append(result)
        record["torch_version"] = record["torch_version"] or env.get("torch")
        if ours.warnings:
            record["warnings"] = ours.warnings
        write()

    for batch in args.batch:
        if deadline is not None and time.monotonic() >= deadline:
            record["incomplete"] = f"--deadline reached before batch {batch}"
            break
        steps = args.steps or (max(20, 4000 // batch) if args.device == "cpu" else max(100, 10000 // batch))
        if args.seeds:
            measure_arrays(args, ours, broken_by_k, batch, steps, classes, torch_device, torch_precision, variants,
                           deadline, written)
        else:
            written(*measure_batch(args, ours, broken, batch, steps, classes, torch_device, torch_precision,
                                   variants, deadline))
    record["elapsed_seconds"] = round(time.monotonic() - start, 1)
    write()
    (print_arrays_table if args.seeds else print_table)(record)
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


def print_arrays_table(record):
    s = record["settings"]
    print(f"{record['what']}\nmilliseconds per member-step (one model's share of a step of K models; median of "
          f"{s['repeats']}); PyTorch setup = compile or capture seconds, apart")
    print(f"{'batch':>5} {'K':>3}  {'PyTorch route variant':<35} {'prec':<5} {'ms/member':>10} {'ms/step':>9} {'setup s':>8}")
    for r in record["results"]:
        for a in r["arrays"]:
            for v in a["pytorch"]:
                name = f"{v.get('route')} {v['variant']}"
                setup = v.get("compile_seconds") if v.get("compile_seconds") is not None else v.get("capture_seconds")
                if v.get("seconds_per_member_step"):
                    print(f"{r['batch']:>5} {a['models']:>3}  {name:<35} {v['precision']:<5} "
                          f"{fmt(1e3 * v['seconds_per_member_step'], '.4f'):>10} {fmt(1e3 * v['seconds_per_step']):>9} "
                          f"{fmt(setup, '.1f'):>8}" + ("" if v.get("loss_finite", True) else "  (loss not finite)"))
                else:
                    err = (v.get("error") or "").splitlines()
                    print(f"{r['batch']:>5} {a['models']:>3}  {name:<35} {v['precision']:<5} failed in "
                          f"{v.get('failed_in')}: {err[0][:80] if err else ''}")
    print(f"{'batch':>5} {'K':>3}  {'class':<6} {'gpu-train':>10} {'vs K=1':>7} {'disp/mem':>9} {'host ms':>8} "
          f"{'best PyTorch':>13} {'(route variant dtype)':<38} {'vs best':>8}")
    for r in record["results"]:
        for a in r["arrays"]:
            for c, g in a["gpu_train"].items():
                b = a["best_pytorch_k"].get(c)
                if g["seconds_per_member_step"] is None:
                    err = g.get("error")
                    err = err if isinstance(err, str) else (err or ["no run"])[0]
                    print(f"{r['batch']:>5} {a['models']:>3}  {c:<6} failed: {err.splitlines()[0][:110] if err else ''}")
                    continue
                host = g.get("host_seconds_per_member_step")
                label = f"({b['route']} {b['variant']} {b['dtype']})" if b else "(none ran)"
                print(f"{r['batch']:>5} {a['models']:>3}  {c:<6} {fmt(1e3 * g['seconds_per_member_step'], '.4f'):>10} "
                      f"{fmt(g.get('speedup_vs_k1'), '.2f'):>7} {fmt(g.get('dispatches_per_member_step'), '.1f'):>9} "
                      f"{fmt(None if host is None else 1e3 * host, '.4f'):>8} "
                      f"{fmt(1e3 * b['seconds_per_member_step'] if b else None, '.4f'):>13} {label:<38} "
                      f"{fmt(a['ratio_vs_best_k'].get(c)):>8}")


if __name__ == "__main__":
    main()
