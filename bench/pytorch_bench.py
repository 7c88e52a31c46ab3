#!/usr/bin/env python3
"""PyTorch counterpart of `gpu-train bench`, in each of PyTorch's ways of running a training step.

The same architecture (read from the same model file; residual blocks as `Residual`
modules), batch size, optimizer (Adam with the file's lr, betas and eps; AdamW when
weight_decay > 0; SGD with its momentum, Nesterov and weight decay if the file says so), the
loss with the file's label smoothing, dropout on, He init; the training images stay on the device as uint8 and each step gathers its batch by
a permutation, divides by 255 and normalises per the recipe's `normalize`. Times training
steps after a warm-up, for each variant and precision asked for:

    python3 bench/pytorch_bench.py --arch cnn4 --batch 16 --steps 200 [--device cuda]
        [--variants eager compile cudagraph ...] [--precision fp32|amp|both] [--repeats 3]

Variants (`--variants`, default: every one the device supports, in this order):

  eager                    the step as plain PyTorch code
  cudagraph                (CUDA) the whole step (gather, forward, loss, backward, Adam with
                           capturable=True) captured once with torch.cuda.graph after three
                           eager warm-up steps on a side stream, then replayed; each step's
                           batch indices are copied into a static index tensor first
  compile-reduce-overhead  (CUDA) torch.compile(step, mode="reduce-overhead"): Inductor's
                           kernels replayed as CUDA graphs (cudagraph trees)
  compile                  torch.compile(step), default mode
  compile-max-autotune     torch.compile(step, mode="max-autotune-no-cudagraphs"); never in
                           the default list (it autotunes for minutes)

Compiled variants compile the whole step function: Dynamo breaks the graph at backward(),
so the forward (and, through AOTAutograd, its backward) is one compiled graph and the
optimizer step another (`--compile-scope model` compiles only the network instead).

Precision (`--precision`, default fp32): fp32 (on CUDA with PyTorch's default TF32 settings,
unchanged and recorded in `tf32`: cuDNN convolutions use TF32 by default, matmuls do not);
amp (torch.autocast: bfloat16 where supported, on CUDA `torch.cuda.is_bf16_supported()`,
else float16 with a GradScaler; bfloat16 on the CPU); both (fp32 then amp, per variant).

Output: one JSON object per line on stdout, one line per (variant, precision), printed as
soon as that variant is done, so a crash loses only what was still to run. With one variant
and one precision (`--variants eager --precision fp32`) the output is one line with every
key the single-line output of earlier versions had:

    system ("pytorch"), torch, arch, device, batch, steps, warmup_steps, warmup_seconds,
    seconds_per_step, seconds_per_epoch (per 60,000 images), images_per_second,
    peak_memory_bytes (CUDA: during the timed steps)

and adds: variant, precision ("fp32" or "amp"), dtype (the autocast dtype or float32),
grad_scaler, repeats, seconds_per_step_runs (one per repeat; seconds_per_step is their
median), compile_seconds (the first call of a compiled step, which compiles it; null
otherwise), capture_seconds (cudagraph: the capture; null otherwise), loss (after the timed
steps) and loss_finite, data ("mnist" or "random": deterministic random uint8 images when the
model's input is not MNIST's 1x28x28 or the files are missing), data_images, input,
optimizer, tf32 (CUDA), threads (CPU), dynamo (compiled variants: graph count, graph
breaks, cudagraph skips, when PyTorch reports them). A variant that fails has `error` (the
exception) and `failed_in` (setup, compile, capture, warmup, timed) instead of the timings;
the other variants still run. The exit status is 0 when at least one variant ran, 1 when
none did, 3 when it stopped early after a CUDA error (which can leave the device unusable
for the rest of the process): the variants after that one were not run.

`--repeats R` times each variant's timed section R times after one compile or capture (the
figure is the median): compiling is what costs time, not the steps. `--skip VARIANT:PRECISION`
leaves out single combinations (bench/compare.py uses it to resume after a crash).

K models at once (`--models K`, K > 1): PyTorch's two ways to train what `gpu-train bench
--seeds 1..K` trains (K models of the architecture, member m initialised from seed
`--seed` + m, all seeing the same batches), each in every variant and precision above
(`--routes`, default both):

  sequential  K models trained one after another: a member-step costs one model's step, so
              this is the single-model measurement above (one model, seed `--seed`), recorded
              as the route's member-step
  vmap        the K models' parameters and buffers stacked (torch.func.stack_module_state,
              shape (K, ...)); a step is torch.func.vmap of a functional_call forward and
              loss over the stacked tensors with the batch shared (in_dims None), with
              randomness="different" (each member draws its own dropout masks); backward()
              of the summed member losses (members share nothing, so each member's gradient
              is its own loss's) and one optimizer over the stacked leaves (the same Adam
              hyper-parameters for all). Batch norm's running statistics are stacked
              buffers vmapped with the parameters, so each member updates its own in
              place: the "vmap cannot update running_mean" limitation of the torch.func
              docs is about unbatched buffers and does not arise here. Whether it trains
              the same K models is checked, not assumed: see vmap_check.

Each line then also has route, models (K) and seconds_per_member_step (vmap: the K-model
step / K; sequential: one model's step); seconds_per_step is the whole vmapped step (vmap)
or one model's step (sequential); seconds_per_epoch and images_per_second mean what
`gpu-train bench --seeds` reports: all K models' epoch (K x 60,000 member-images) and
batch / (time of one step of all K). vmap lines add loss (the members' mean), member_losses,
vmap_randomness and vmap_check: one forward and backward of K separately built models
against the vmapped one on the same batch (fp32, dropout off since its masks differ by
design): the largest differences of member loss, gradient (with the largest gradient, for
scale) and buffer (batch norm's running statistics), or the error it raised. `--skip` takes
ROUTE:VARIANT:PRECISION then. With `--models 1` (the default) nothing of this appears and
the output is as described above.
"""
import argparse
import contextlib
import copy
import gc
import gzip
import json
import os
import platform
import statistics
import sys
import time
import tomllib
import traceback

import numpy as np
import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCH_IMAGES = 60_000
ALL_VARIANTS = ["eager", "cudagraph", "compile-reduce-overhead", "compile", "compile-max-autotune"]
DEFAULT_VARIANTS = {
    "cuda": ["eager", "cudagraph", "compile-reduce-overhead", "compile"],
    "cpu": ["eager", "compile"],
}
COMPILE_MODES = {
    "compile": None,
    "compile-reduce-overhead": "reduce-overhead",
    "compile-max-autotune": "max-autotune-no-cudagraphs",
}
ROUTES = ["sequential", "vmap"]
MNIST_SHAPE = (1, 28, 28)
# Errors after which the CUDA context cannot be trusted: exit with EXIT_CUDA_ERROR at once.
STICKY_ERRORS = ("CUDA error", "CUBLAS_STATUS", "CUDNN_STATUS", "cuDNN error", "illegal memory access",
                 "AcceleratorError")
EXIT_CUDA_ERROR = 3
RANDOM_DATA_BYTES = 512 << 20  # cap on the random data set's size


def model_file(arch):
    """Path of a preset's model file (models/NAME.toml or models/seeds/NAME.toml) or a path."""
    for p in (arch, os.path.join(ROOT, "models", arch + ".toml"), os.path.join(ROOT, "models", "seeds", arch + ".toml")):
        if os.path.isfile(p):
            return p
    sys.exit(f"unknown architecture {arch}")


class Residual(nn.Module):
    """gpu-train's residual block: body(x) + shortcut(x), the shortcut the identity when it has
    no layers; its tensors are named body.{j}.* and shortcut.{j}.*, as gpu-train names them."""

    def __init__(self, body, shortcut):
        super().__init__()
        self.body = nn.Sequential(*body)
        self.shortcut = nn.Sequential(*shortcut)

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


def _modules(layers, shape):
    """One torch module per layer-list entry for inputs of `shape`: (modules, output shape)."""
    mods = []
    for layer in layers:
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
            m = nn.Conv2d(shape[0], layer["filters"], (kh, kw), stride=stride, padding=pad, bias=layer.get("bias", True),
                          groups=layer.get("groups", 1))
            ph, pw = (pad, pad) if isinstance(pad, int) else pad
            shape = (layer["filters"], (shape[1] + 2 * ph - kh) // stride + 1, (shape[2] + 2 * pw - kw) // stride + 1)
        elif t == "dense":
            m = nn.Linear(shape[0], layer["units"], bias=layer.get("bias", True))
            shape = (layer["units"],)
        elif t in ("max_pool2d", "maxpool", "avg_pool2d", "avgpool"):
            s = layer.get("size", 2)
            st = layer.get("stride") or s
            m = nn.MaxPool2d(s, st) if t in ("max_pool2d", "maxpool") else nn.AvgPool2d(s, st)
            shape = (shape[0], (shape[1] - s) // st + 1, (shape[2] - s) // st + 1)
        elif t == "global_avg_pool":
            m = nn.AdaptiveAvgPool2d(1)
            shape = (shape[0], 1, 1)
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
        elif t == "leaky_relu":
            m = nn.LeakyReLU(layer.get("slope", 0.01))
        elif t == "gelu":
            m = nn.GELU()
        elif t == "silu":
            m = nn.SiLU()
        elif t == "batch_norm":
            m = (nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d)(shape[0], eps=layer.get("eps", 1e-5), momentum=layer.get("momentum", 0.1))
        elif t == "residual":
            body, out = _modules(layer["layers"], shape)
            shortcut, short = _modules(layer.get("shortcut", []), shape)
            if out != short:
                sys.exit(f"residual block: body gives {out}, shortcut {short}")
            m = Residual(body, shortcut)
            shape = out
        else:
            sys.exit(f"layer type {t} not supported here")
        mods.append(m)
    return mods, shape


def build(spec):
    """torch.nn.Sequential with one module per layer-list entry, as gpu-train names tensors
    (a residual block a `Residual` with `body` and `shortcut` Sequentials)."""
    c, h, w = spec.get("input", [1, 28, 28])
    mods, _ = _modules(spec["layers"], (c, h, w))
    net = nn.Sequential(*mods)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net


def classes_of(spec):
    """Outputs of the network: the last dense layer's units."""
    dense = [l["units"] for l in spec["layers"] if l["type"] == "dense"]
    return dense[-1] if dense else 10


def _read(path):
    """A file's bytes, gunzipped when its name ends in .gz."""
    with (gzip.open(path) if str(path).endswith(".gz") else open(path, "rb")) as f:
        return f.read()


def load_images(path):
    data = _read(path)
    n, r, c = np.frombuffer(data[4:16], dtype=">u4")
    return np.frombuffer(data[16:], dtype=np.uint8).reshape(n, 1, r, c)


def load_labels(path):
    data = _read(path)
    return np.frombuffer(data[8:], dtype=np.uint8)


def per_channel(value, channels, what):
    """A normalize mean or std as a list of `channels` floats (a float applies to every channel)."""
    if isinstance(value, (int, float)):
        return [float(value)] * channels
    value = [float(v) for v in value]
    if len(value) == 1:
        return value * channels
    if len(value) != channels:
        sys.exit(f"normalize {what} has {len(value)} values for {channels} input channels")
    return value


def normalization(spec, channels):
    """Per-channel (mean, std) of the recipe; "auto" (computed by gpu-train when it trains, then
    written into the saved model file) counts as plain pixel / 255 here."""
    norm = spec.get("train", {}).get("normalize", {})
    if not isinstance(norm, dict):
        norm = {}
    return per_channel(norm.get("mean", 0.0), channels, "mean"), per_channel(norm.get("std", 1.0), channels, "std")


def load_data(spec, data_dir, seed):
    """(uint8 images N x C x H x W, int64 labels, description) on the host."""
    shape = tuple(spec.get("input", list(MNIST_SHAPE)))
    files = [os.path.join(data_dir, f) for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")]
    if shape == MNIST_SHAPE and all(os.path.isfile(f) for f in files):
        images = torch.from_numpy(load_images(files[0]).copy())
        labels = torch.from_numpy(load_labels(files[1]).astype(np.int64))
        return images, labels, "mnist"
    n = max(1, min(EPOCH_IMAGES, RANDOM_DATA_BYTES // int(np.prod(shape))))
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n,) + shape, generator=g, dtype=torch.uint8)
    labels = torch.randint(0, classes_of(spec), (n,), generator=g, dtype=torch.int64)
    why = "input shape is not 1x28x28" if shape != MNIST_SHAPE else f"no MNIST files in {data_dir}"
    return images, labels, f"random ({why})"


def tf32_state():
    """PyTorch's TF32 switches as they are (this script never changes them)."""
    state = {}
    for key, get in (
        ("cuda.matmul.allow_tf32", lambda: torch.backends.cuda.matmul.allow_tf32),
        ("cudnn.allow_tf32", lambda: torch.backends.cudnn.allow_tf32),
        ("float32_matmul_precision", torch.get_float32_matmul_precision),
        ("cuda.matmul.fp32_precision", lambda: torch.backends.cuda.matmul.fp32_precision),
        ("cudnn.conv.fp32_precision", lambda: torch.backends.cudnn.conv.fp32_precision),
    ):
        try:
            state[key] = get()
        except Exception:  # older PyTorch: no fp32_precision attributes
            pass
    return state


def amp_dtype(dev):
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def make_optimizer(spec, params, capturable, impl):
    o = spec.get("train", {}).get("optimizer", {"type": "adam", "lr": 0.001})
    kind = o.get("type", "adam")
    if kind == "sgd":
        kw = dict(lr=o["lr"], momentum=o.get("momentum", 0.0), nesterov=o.get("nesterov", False),
                  weight_decay=o.get("weight_decay", 0.0))
        if impl == "fused":
            kw["fused"] = True
        elif impl == "foreach":
            kw["foreach"] = True
        elif impl == "for-loop":
            kw["foreach"] = False
        return torch.optim.SGD(params, **kw), {"type": "sgd", **kw, "implementation": impl}
    wd = o.get("weight_decay", 0.0)
    kw = dict(lr=o.get("lr", 0.001), betas=(o.get("beta1", 0.9), o.get("beta2", 0.999)), eps=o.get("eps", 1e-8))
    if capturable:
        kw["capturable"] = True
    if impl == "fused":
        kw["fused"] = True
    elif impl == "foreach":
        kw["foreach"] = True
    elif impl == "for-loop":
        kw["foreach"] = False
    cls = torch.optim.AdamW if wd > 0 else torch.optim.Adam
    opt = cls(params, weight_decay=wd, **kw)
    desc = {"type": "adamw" if wd > 0 else "adam", "lr": kw["lr"], "betas": list(kw["betas"]), "eps": kw["eps"],
            "weight_decay": wd, "capturable": capturable, "implementation": impl}
    if o.get("bias_correction", "step") != "step":
        desc["note"] = f"gpu-train's bias_correction = {o['bias_correction']!r} has no PyTorch counterpart; the step's work is the same"
    return opt, desc


def loss_of(out, y, kind, smoothing=0.0):
    """The recipe's loss of logits `out` (B, classes) for labels `y` (B,)."""
    if kind == "mse":
        target = torch.zeros(out.shape, dtype=out.dtype, device=out.device).scatter_(1, y[:, None], 1.0)
        return torch.nn.functional.mse_loss(out, target)
    return torch.nn.functional.cross_entropy(out, y, label_smoothing=smoothing)


def gather(data, idx):
    """The batch at indices `idx`: images as floats, normalised per the recipe (B, C, H, W), labels (B,)."""
    images, labels, _, scale, shift = data
    x = images.index_select(0, idx).float()
    x = x.div_(255.0) if scale is None else torch.addcmul(shift, x, scale)
    return x, labels.index_select(0, idx)


def member_nets(spec, dev, seed, k):
    """K models of the architecture, member m initialised from seed + m, in training mode."""
    nets = []
    for m in range(k):
        torch.manual_seed(seed + m)
        nets.append(build(spec).to(dev).train())
    return nets


def stacked(nets):
    """torch.func's form of K models: parameters and buffers stacked along a new first
    dimension ({name: (K, ...)}, the parameters leaves that require grad), and one copy of
    the module without storage (meta device) for functional_call to run with a member's slice."""
    params, buffers = torch.func.stack_module_state(nets)
    return params, buffers, copy.deepcopy(nets[0]).to("meta")


def vmapped_losses(base, loss_kind, smoothing=0.0):
    """f(params, buffers, x, y) -> the K member losses (K,): each member's forward and loss on
    the same batch. randomness="different": each member draws its own dropout masks, as K
    separate models would (the default, "error", refuses any random op inside vmap)."""
    def member_loss(p, b, x, y):
        return loss_of(torch.func.functional_call(base, (p, b), (x,)), y, loss_kind, smoothing)
    return torch.func.vmap(member_loss, in_dims=(0, 0, None, None), randomness="different")


def check_vmap(spec, dev, seed, k, data, batch, loss_kind):
    """Whether the vmapped step computes what K separate models do: one forward and backward
    of K models built as `member_nets` builds them, each on its own and all vmapped over
    their stacked copies, on the same batch in fp32. Dropout is set to p = 0 in both (its masks
    differ by design); batch norm's running statistics are compared after the forward."""
    nets = member_nets(spec, dev, seed, k)
    for net in nets:
        for mod in net.modules():
            if isinstance(mod, nn.Dropout):
                mod.p = 0.0
    params, buffers, base = stacked(nets)  # copies: the separate runs below do not touch them
    x, y = gather(data, data[2][:batch])
    losses = vmapped_losses(base, loss_kind)(params, buffers, x, y)
    losses.sum().backward()
    worst = {"loss": 0.0, "grad": 0.0, "buffer": 0.0}
    largest_grad = 0.0
    for m, net in enumerate(nets):
        loss = loss_of(net(x), y, loss_kind)
        loss.backward()
        worst["loss"] = max(worst["loss"], abs(loss.item() - losses[m].item()))
        for name, p in net.named_parameters():
            worst["grad"] = max(worst["grad"], (p.grad - params[name].grad[m]).abs().max().item())
            largest_grad = max(largest_grad, p.grad.abs().max().item())
        for name, b in net.named_buffers():
            worst["buffer"] = max(worst["buffer"], (b.double() - buffers[name][m].double()).abs().max().item())
    return {"members": k, "max_loss_diff": worst["loss"], "max_grad_diff": worst["grad"], "max_grad": largest_grad,
            "max_buffer_diff": worst["buffer"], "buffers": len(buffers),
            "how": "one forward and backward, fp32, dropout p=0, the same batch: K separate models against the vmapped one"}


def dynamo_counters():
    """What Dynamo and Inductor say about the compiled variant: graphs, breaks, cudagraph skips."""
    try:
        from torch._dynamo.utils import counters
    except Exception:
        return None
    out = {}
    try:
        out["unique_graphs"] = counters["stats"]["unique_graphs"]
        # Expected: one at backward() and Optimizer.step's own two (around its body).
        breaks = {}
        for reason, n in counters["graph_break"].items():
            first = reason.strip().splitlines()[0][:200]
            breaks[first] = breaks.get(first, 0) + n
        out["graph_breaks"] = breaks
        # Whether the compile hit Inductor's and AOTAutograd's on-disk caches (a warm cache
        # makes compile_seconds much smaller than on a fresh machine), and cudagraph skips.
        out["caches"] = {k: v for k, v in list(counters["inductor"].items()) + list(counters["aot_autograd"].items())
                         if "cache" in k}
        skips = {k: v for k, v in counters["inductor"].items() if "cudagraph" in k}
        if skips:
            out["inductor_cudagraph"] = skips
    except Exception:
        pass
    return out


def cleanup(dev):
    gc.collect()
    try:
        torch._dynamo.reset()
    except Exception:
        pass
    try:
        from torch._dynamo.utils import counters
        counters.clear()
    except Exception:
        pass
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


class Failed(Exception):
    def __init__(self, stage, exc):
        super().__init__(str(exc))
        self.stage = stage
        self.exc = exc


def run_variant(args, spec, dev, data, variant, precision, route=None):
    """Times one variant in one precision; returns its JSON object's variant-specific keys.
    route "vmap": the step of all `args.models` models vmapped over their stacked parameters;
    otherwise (a single model, or the sequential route's member) one model's step."""
    images, labels, perm, scale, shift = data
    batch = args.batch
    batches = images.shape[0] // batch
    stage = "setup"
    try:
        if variant == "cudagraph" and dev.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        if variant == "compile-reduce-overhead" and dev.type != "cuda":
            raise RuntimeError("reduce-overhead replays CUDA graphs: it needs a CUDA device")
        dtype = amp_dtype(dev) if precision == "amp" else torch.float32
        use_scaler = precision == "amp" and dtype == torch.float16
        if variant == "cudagraph" and use_scaler:
            raise RuntimeError("float16 AMP needs a GradScaler, whose step syncs with the host: "
                               "not capturable as a whole step (this GPU has no bfloat16)")
        loss_kind = spec.get("train", {}).get("loss", "cross_entropy")
        smoothing = spec.get("train", {}).get("label_smoothing", 0.0)
        static = [images, labels]  # tensors that never move (for cudagraph trees)
        if route == "vmap":
            params, buffers, base = stacked(member_nets(spec, dev, args.seed, args.models))
            static += list(params.values()) + list(buffers.values())
            leaves = list(params.values())
            losses_of = vmapped_losses(base, loss_kind, smoothing)
            if variant in COMPILE_MODES and args.compile_scope == "model":
                losses_of = torch.compile(losses_of, mode=COMPILE_MODES[variant])

            def forward_loss(x, y):
                return losses_of(params, buffers, x, y)  # (K,)
        else:
            torch.manual_seed(args.seed)
            net = build(spec).to(dev)
            net.train()
            leaves = net.parameters()
            model = net
            if variant in COMPILE_MODES and args.compile_scope == "model":
                model = torch.compile(net, mode=COMPILE_MODES[variant])

            def forward_loss(x, y):
                return loss_of(model(x), y, loss_kind, smoothing)
        opt, opt_desc = make_optimizer(spec, leaves, capturable=variant == "cudagraph", impl=args.adam)
        scaler = torch.amp.GradScaler(dev.type) if use_scaler else None
        idx_buf = torch.empty(batch, dtype=torch.int64, device=dev)

        def autocast():
            if precision != "amp":
                return contextlib.nullcontext()
            # Inside a CUDA graph capture autocast's cast cache must be off (see
            # torch.cuda.make_graphed_callables); each weight is cast once per step here anyway.
            return torch.autocast(dev.type, dtype=dtype, cache_enabled=False if variant == "cudagraph" else None)

        def train_step(idx):
            x, y = gather(data, idx)
            with autocast():
                loss = forward_loss(x, y)
            # vmap: the members' losses (K,); their sum's gradient is each member's own.
            total = loss if loss.dim() == 0 else loss.sum()
            if scaler is not None:
                scaler.scale(total).backward()
                scaler.step(opt)
                scaler.update()
            else:
                total.backward()
                opt.step()
            return loss.detach()

        mark_step = variant == "compile-reduce-overhead" and hasattr(torch.compiler, "cudagraph_mark_step_begin")

        def eager_step(idx):
            if mark_step:
                # A new training iteration: cudagraph trees may reuse the last one's outputs.
                torch.compiler.cudagraph_mark_step_begin()
            # Outside the compiled function: Dynamo does not trace zero_grad (a graph break).
            opt.zero_grad(set_to_none=True)
            return compiled(idx)

        def feed(i):
            j = i % batches
            idx_buf.copy_(perm[j * batch:(j + 1) * batch])

        def sync():
            if dev.type == "cuda":
                torch.cuda.synchronize()

        compile_s = capture_s = None
        warm_s = 0.0
        warm_steps = 0
        i = 0
        if variant in COMPILE_MODES:
            if args.compile_scope == "step":
                for t in static + [idx_buf] + ([scale, shift] if scale is not None else []):
                    try:  # the data never moves: tell cudagraph trees not to copy it each replay
                        torch._dynamo.mark_static_address(t)
                    except Exception:
                        pass
                compiled = torch.compile(train_step, mode=COMPILE_MODES[variant])
            else:
                compiled = train_step
            step = eager_step
            stage = "compile"
            t0 = time.perf_counter()
            feed(i)
            loss = step(idx_buf)
            sync()
            compile_s = time.perf_counter() - t0
            i += 1
        elif variant == "cudagraph":
            # As in PyTorch's "whole-network capture" example: warm up on a side stream (this
            # also creates Adam's state), drop the gradients so that backward allocates them
            # from the graph's pool, capture one step, and replay it.
            stage = "warmup"
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            t0 = time.perf_counter()
            with torch.cuda.stream(s):
                for _ in range(3):
                    feed(i)
                    opt.zero_grad(set_to_none=True)
                    train_step(idx_buf)
                    i += 1
            torch.cuda.current_stream().wait_stream(s)
            sync()
            warm_s += time.perf_counter() - t0
            warm_steps += 3
            stage = "capture"
            opt.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            feed(i)
            t0 = time.perf_counter()
            with torch.cuda.graph(graph):
                static_loss = train_step(idx_buf)
            sync()
            capture_s = time.perf_counter() - t0

            def step(idx):
                graph.replay()
                return static_loss
        else:
            compiled = train_step
            step = eager_step

        stage = "warmup"
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            feed(i)
            loss = step(idx_buf)
            i += 1
        sync()
        warm_s += time.perf_counter() - t0
        warm_steps += args.warmup

        stage = "timed"
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        runs = []
        for _ in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                feed(i)
                loss = step(idx_buf)
                i += 1
            sync()
            runs.append((time.perf_counter() - t0) / args.steps)
        per_step = statistics.median(runs)
        member_losses = loss.float().tolist() if loss.dim() else None
        loss_value = statistics.fmean(member_losses) if member_losses else float(loss.float().item())
        out = {
            "dtype": str(dtype).replace("torch.", ""),
            "grad_scaler": use_scaler,
            "compile_seconds": compile_s,
            "capture_seconds": capture_s,
            "warmup_steps": warm_steps,
            "warmup_seconds": warm_s,
            "seconds_per_step": per_step,
            "seconds_per_epoch": per_step * -(-EPOCH_IMAGES // batch),
            "images_per_second": batch / per_step,
            "seconds_per_step_runs": runs,
            "loss": loss_value,
            "loss_finite": bool(np.all(np.isfinite(member_losses or [loss_value]))),
            "optimizer": opt_desc,
        }
        if args.models > 1:
            # As `gpu-train bench --seeds` reports them: a member-step, all K models' epoch,
            # and the shared batch's images per second of K-model steps.
            k = args.models
            member = per_step / k if route == "vmap" else per_step
            out["seconds_per_member_step"] = member
            out["seconds_per_epoch"] = member * k * -(-EPOCH_IMAGES // batch)
            out["images_per_second"] = batch / (member * k)
        if member_losses:
            out["member_losses"] = member_losses
        if variant in COMPILE_MODES:
            out["compile_scope"] = args.compile_scope
            out["dynamo"] = dynamo_counters()
        if dev.type == "cuda":
            out["peak_memory_bytes"] = torch.cuda.max_memory_allocated(dev)
        return out
    except Exception as e:
        raise Failed(stage, e) from e


def describe_device(dev):
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--arch", default="cnn4")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=200, help="timed steps per repeat")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps after compiling or capturing")
    ap.add_argument("--repeats", type=int, default=1, help="timed sections per variant (median reported)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--variants", nargs="+", choices=ALL_VARIANTS, default=None,
                    help="default: " + "; ".join(f"{k}: {' '.join(v)}" for k, v in DEFAULT_VARIANTS.items()))
    ap.add_argument("--precision", choices=["fp32", "amp", "both"], default="fp32")
    ap.add_argument("--skip", nargs="*", default=[], metavar="VARIANT:PRECISION", help="combinations to leave out")
    ap.add_argument("--compile-scope", choices=["step", "model"], default="step",
                    help="torch.compile the whole step (default) or only the network")
    ap.add_argument("--adam", choices=["default", "foreach", "fused", "for-loop"], default="default",
                    help="Adam implementation (default: PyTorch's choice, foreach on CUDA)")
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="set torch.backends.cudnn.benchmark (off by default in PyTorch, and here)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=1, help="the (first) model's initialisation and the batch order")
    ap.add_argument("--models", type=int, default=1, metavar="K",
                    help="K > 1: train K models (seeds --seed .. --seed+K-1) by each route of --routes")
    ap.add_argument("--routes", nargs="+", choices=ROUTES, default=None,
                    help="with --models K > 1: sequential and/or vmap (default: both)")
    ap.add_argument("--data-dir", default=os.path.join(ROOT, "data", "mnist"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0:
        sys.exit("--steps and --repeats must be at least 1, --warmup at least 0")
    if args.models < 1:
        sys.exit("--models must be at least 1")
    if args.routes and args.models == 1:
        sys.exit("--routes needs --models K with K > 1")
    routes = [None] if args.models == 1 else (args.routes or ROUTES)
    dev = torch.device(args.device)
    variants = args.variants or DEFAULT_VARIANTS.get(dev.type, ["eager"])
    precisions = ["fp32", "amp"] if args.precision == "both" else [args.precision]

    with open(model_file(args.arch), "rb") as f:
        spec = tomllib.load(f)
    images, labels, data_kind = load_data(spec, args.data_dir, args.seed)
    if images.shape[0] < args.batch:
        sys.exit(f"batch {args.batch} is larger than the data set ({images.shape[0]} images)")
    channels = images.shape[1]
    mean, std = normalization(spec, channels)
    images, labels = images.to(dev), labels.to(dev)
    g = torch.Generator().manual_seed(args.seed)
    perm = torch.randperm(images.shape[0], generator=g).to(dev)
    if all(m == 0.0 for m in mean) and all(s == 1.0 for s in std):
        scale = shift = None  # plain pixel / 255
    else:
        scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=dev).view(1, -1, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=dev).view(1, -1, 1, 1)
    data = (images, labels, perm, scale, shift)

    common = {
        "system": "pytorch",
        "torch": torch.__version__,
        "arch": spec["name"],
        "device": describe_device(dev),
        "batch": args.batch,
        "steps": args.steps,
        "repeats": args.repeats,
        "input": list(images.shape[1:]),
        "data": data_kind.split(" ")[0],
        "data_images": int(images.shape[0]),
        "data_note": data_kind if data_kind != "mnist" else None,
        "normalize": {"mean": mean, "std": std},
    }
    if dev.type == "cuda":
        common["tf32"] = tf32_state()
        common["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        common["cuda"] = torch.version.cuda
        common["cudnn"] = torch.backends.cudnn.version()
    else:
        common["threads"] = torch.get_num_threads()
    if args.models > 1:
        common["models"] = args.models
    vmap_checked = None
    if "vmap" in routes:
        loss_kind = spec.get("train", {}).get("loss", "cross_entropy")
        try:
            vmap_checked = check_vmap(spec, dev, args.seed, args.models, data, args.batch, loss_kind)
        except Exception as e:
            vmap_checked = {"error": f"{type(e).__name__}: {e}"[:2000]}
            print("".join(traceback.format_exception(e)[-6:]), file=sys.stderr)
        cleanup(dev)
        print(f"vmap check: {json.dumps(vmap_checked)}", file=sys.stderr, flush=True)

    ok = 0
    for route, variant, precision in [(r, v, p) for r in routes for v in variants for p in precisions]:
        combination = ":".join(([route] if route else []) + [variant, precision])
        if combination in args.skip:
            continue
        rec = dict(common, variant=variant, precision=precision)
        if route:
            rec["route"] = route
        if route == "vmap":
            rec["vmap_randomness"] = "different"
            rec["vmap_check"] = vmap_checked
        try:
            rec.update(run_variant(args, spec, dev, data, variant, precision, route))
            ok += rec["loss_finite"]
        except Failed as e:
            rec["failed_in"] = e.stage
            rec["error"] = f"{type(e.exc).__name__}: {e.exc}"[:2000]
            print("".join(traceback.format_exception(e.exc)[-6:]), file=sys.stderr)
        # The variant's frame (its graphs, compiled code, model) is gone by now, unless
        # the exception held it: free what it left before the next variant.
        cleanup(dev)
        print(json.dumps(rec), flush=True)
        line = f"{combination.replace(':', ' ')}: " + (
            f"{1e3 * rec['seconds_per_step']:.3f} ms/step" if "seconds_per_step" in rec else f"FAILED in {rec['failed_in']}: {rec['error'][:200]}")
        if "seconds_per_member_step" in rec:
            line += f", {1e3 * rec['seconds_per_member_step']:.3f} ms/member-step"
        print(line, file=sys.stderr, flush=True)
        if any(m in rec.get("error", "") for m in STICKY_ERRORS):
            # The CUDA context may be unusable now: stop, and let the caller start a fresh
            # process for the variants not yet run (bench/compare.py does).
            print(f"stopping after a CUDA error; exit status {EXIT_CUDA_ERROR}", file=sys.stderr, flush=True)
            sys.exit(EXIT_CUDA_ERROR)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
