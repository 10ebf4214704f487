"""Our 3D U-Net against diffusers' UNet3DConditionModel, measured in one process and one run.

    python tools/benchmark.py unet                  # full comparison (needs a GPU: 1.4 B parameters)
    python tools/benchmark.py unet --tiny           # the same comparison scaled down, < 1 min on CPU
    python tools/benchmark.py unet --profile --out runs/bench/unet.json

The reference is diffusers' ``UNet3DConditionModel`` with the configuration of ModelScope's
text-to-video model (``damo-vilab/text-to-video-ms-1.7b``, ``unet/config.json``: block_out_channels
320/640/1280/1280, layers_per_block 2, cross_attention_dim 1024, attention_head_dim 64, 4 latent
channels; 1.41 B parameters), built with random weights (nothing downloads). Ours is
``latentvid.nn.unet3d.UNet3D`` at the same channel widths, depth, head size and text width, with
attention at every level and the feed-forward width (``ff_mult``) chosen so that its parameter
count is within 5 % of the reference. Both see the same latents (16 x 32 x 32 x 4 channels,
256 px video) and text context (77 x 1024).

Measured for each model (and each of our variants: gradient checkpointing per block or per
attention layer, ``torch.compile``, the (B, C, T, H, W) layout):

- training step (forward, MSE loss, backward, AdamW; bf16 autocast on CUDA, float32 on CPU):
  median seconds per step, videos/s, model FLOPs per step (``torch.utils.flop_counter``; a
  checkpointed step recomputes more, reported separately as counted FLOPs), achieved TFLOP/s
  and MFU against a matmul peak measured in the same run (bf16 on CUDA, float32 on CPU), and
  peak memory (``torch.cuda.max_memory_allocated``; not measured on CPU, reported as null);
- sampling: milliseconds per DDIM step with classifier-free guidance, the conditional and
  unconditional halves in ONE batched forward (batch 2; float16 weights and autocast on CUDA).

Prints a table with ours / diffusers ratios and writes everything to a JSON file.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from latentvid.diffusion import CosineSchedule, classifier_free_guidance, cosine_t_from_logsnr, prediction_to_x0
from latentvid.diffusion import alpha_sigma, sample_ddim
from latentvid.nn.layers import FrameGroupNorm
from latentvid.nn.unet3d import UNet3D
from latentvid.files import write_json_atomic

# diffusers' UNet3DConditionModel arguments of damo-vilab/text-to-video-ms-1.7b (unet/config.json)
MODELSCOPE = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=1024,
    attention_head_dim=64,
    norm_num_groups=32,
    norm_eps=1e-5,
)
# the same architecture scaled down for --tiny (CPU, seconds)
TINY = {**MODELSCOPE, "sample_size": 8, "block_out_channels": (32, 64, 64, 64), "layers_per_block": 1,
        "cross_attention_dim": 32, "attention_head_dim": 16}


class Shape(NamedTuple):
    """One training example: latents (channels, frames, height, width) and text context (length, width)."""

    channels: int
    frames: int
    height: int
    width: int
    context_len: int
    context_dim: int


FULL_SHAPE = Shape(4, 16, 32, 32, 77, 1024)
TINY_SHAPE = Shape(4, 4, 8, 8, 8, 32)

# variants: which network, and how ours is configured (attribute values set on the one built model)
VARIANTS: dict[str, tuple[str, dict]] = {
    "diffusers": ("diffusers", {}),
    "diffusers-ckpt": ("diffusers", {"gradient_checkpointing": True}),
    "diffusers-compile": ("diffusers", {"compile": True}),
    "ours": ("ours", {}),
    "ours-ckpt": ("ours", {"gradient_checkpointing": "block"}),
    "ours-ckpt-attn": ("ours", {"gradient_checkpointing": "attention"}),
    "ours-nchw": ("ours", {"channels_last": False}),
    "ours-gn-native": ("ours", {"group_norm": "native"}),  # CUDA's GroupNorm kernel on channels-last
    "ours-compile": ("ours", {"use_compile": True}),
    "ours-compile-ckpt": ("ours", {"use_compile": True, "gradient_checkpointing": "block"}),
}
DEFAULT_VARIANTS = ("diffusers", "diffusers-ckpt", "ours", "ours-ckpt", "ours-ckpt-attn")
TINY_VARIANTS = ("diffusers", "diffusers-ckpt", "ours", "ours-ckpt")
PARAM_TOLERANCE = 0.05  # |ours / diffusers - 1| allowed for the parameter counts


# ---------------------------------------------------------------------------------------------- models
def ours_config(reference: dict, ff_mult: int) -> dict:
    """UNet3D arguments mirroring a diffusers UNet3DConditionModel config (widths, depth, heads, text)."""
    widths = reference["block_out_channels"]
    if any(w % widths[0] for w in widths):
        raise ValueError(f"block_out_channels {widths} must be multiples of the first")
    return dict(
        in_channels=reference["in_channels"],
        out_channels=reference["out_channels"],
        model_channels=widths[0],
        channel_mult=tuple(w // widths[0] for w in widths),
        num_res_blocks=reference["layers_per_block"],
        attention_levels=tuple(range(len(widths))),
        head_dim=reference["attention_head_dim"],
        context_dim=reference["cross_attention_dim"],
        norm_groups=reference["norm_num_groups"],
        fps_conditioning=False,  # ModelScope has no frame-rate input
        ff_mult=ff_mult,
        attention_backend="sdpa",
    )


def count_params(build: Callable[[], torch.nn.Module]) -> int:
    """Parameters of a model built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def build_diffusers(config: dict) -> torch.nn.Module:
    from diffusers import UNet3DConditionModel

    return UNet3DConditionModel(**config)


def matched_config(reference: dict, max_ff_mult: int = 8) -> tuple[dict, int, int]:
    """Our config whose parameter count is closest to the reference's: (config, ours, reference)."""
    ref_params = count_params(lambda: build_diffusers(reference))
    best = None
    for ff_mult in range(max_ff_mult + 1):
        cfg = ours_config(reference, ff_mult)
        n = count_params(lambda: UNet3D(**cfg))
        if best is None or abs(n / ref_params - 1) < abs(best[1] / ref_params - 1):
            best = (cfg, n)
    return best[0], best[1], ref_params


def make_forward(kind: str) -> Callable:
    """``forward(model, z, logsnr, context) -> prediction`` for either network."""
    if kind == "diffusers":
        def forward(model, z, logsnr, context):
            timestep = cosine_t_from_logsnr(logsnr.float()) * 999  # ModelScope's discrete time axis
            return model(z, timestep, encoder_hidden_states=context).sample
    else:
        def forward(model, z, logsnr, context):
            return model(z, logsnr, context=context)
    return forward


def configure(model: torch.nn.Module, kind: str, settings: dict, compile_mode: str | None) -> str | None:
    """Apply a variant's settings to a built model; returns an error text if the model refuses one."""
    if kind == "diffusers":
        if getattr(model, "_supports_gradient_checkpointing", False):
            model.disable_gradient_checkpointing()
        if settings.get("gradient_checkpointing"):
            try:
                model.enable_gradient_checkpointing()
            except (ValueError, NotImplementedError) as err:  # ModelScope's U-Net refuses it
                return f"{type(err).__name__}: {err}"
        return None
    FrameGroupNorm.cuda_channels_last_kernel = settings.get("group_norm", "decomposed")
    model.gradient_checkpointing = settings.get("gradient_checkpointing", "none")
    model.use_compile = settings.get("use_compile", False)
    model.compile_mode = compile_mode
    layout = settings.get("channels_last", True)
    if layout != model.channels_last:
        model.channels_last = layout
        model.to(memory_format=torch.channels_last_3d if layout else torch.contiguous_format)
    return None


# ------------------------------------------------------------------------------------------ measuring
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of fn (device work included)."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def register_cpu_attention_flops() -> None:
    """FlopCounterMode knows CUDA's SDPA kernels; give it PyTorch's CPU flash kernel too."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    pairs = [
        (getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None), "forward"),
        (getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None), "backward"),
    ]
    for op, kind in pairs:
        if op is None or op in fc.flop_registry:
            continue
        if kind == "forward":
            def formula(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
                return fc.sdpa_flop_count(query_shape, key_shape, value_shape)
        else:
            def formula(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
                return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)
        fc.register_flop_formula(op)(formula)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """TFLOP/s of an n x n x n matmul on random data (median of ``repeats`` after warm-up)."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    for _ in range(3):
        a @ b
    times = timed(lambda: a @ b, device, repeats)
    return 2 * n**3 / statistics.median(times) / 1e12


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def inputs_for(shape: Shape, batch: int, device: torch.device, seed: int) -> tuple[torch.Tensor, ...]:
    """Noisy latents (B, C, T, H, W), logSNR (B,), text context (B, L, D), target (B, C, T, H, W)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(batch, shape.channels, shape.frames, shape.height, shape.width, generator=gen)
    logsnr = torch.empty(batch).uniform_(-8, 8, generator=gen)
    context = torch.randn(batch, shape.context_len, shape.context_dim, generator=gen)
    target = torch.randn(z.shape, generator=gen)
    return tuple(t.to(device) for t in (z, logsnr, context, target))


def autocast_for(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def loss_and_backward(model, forward, inputs, device, amp_dtype) -> torch.Tensor:
    """Forward under autocast, float32 MSE against the target, backward; returns the loss."""
    z, logsnr, context, target = inputs
    with autocast_for(device, amp_dtype):
        pred = forward(model, z, logsnr, context)
    loss = F.mse_loss(pred.float(), target)
    loss.backward()
    return loss


def step_flops(model, forward, inputs, device, amp_dtype) -> int:
    """FLOPs of one forward + backward (matmuls, convolutions, attention) counted by FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        loss = loss_and_backward(model, forward, inputs, device, amp_dtype)
    model.zero_grad(set_to_none=True)
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"non-finite loss {loss.item()}")
    return counter.get_total_flops()


def measure_train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    forward: Callable,
    inputs: tuple[torch.Tensor, ...],
    device: torch.device,
    amp_dtype: torch.dtype | None,
    steps: int,
    warmup: int,
) -> dict:
    """One variant at one batch size: median step time and peak memory."""
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_and_backward(model, forward, inputs, device, amp_dtype)
        optimizer.step()

    for _ in range(warmup):  # compilation, cuDNN autotuning, optimiser state allocation
        step()
    optimizer.zero_grad(set_to_none=True)
    reset_peak_memory(device)
    times = timed(step, device, steps)
    batch = inputs[0].shape[0]
    return dict(
        batch=batch,
        step_s=statistics.median(times),
        step_s_all=times,
        videos_per_s=batch / statistics.median(times),
        peak_mem_gib=peak_memory_gib(device),
    )


@contextlib.contextmanager
def eager(model: torch.nn.Module):
    """Run our U-Net without torch.compile inside the block (no-op for other models)."""
    if not isinstance(model, UNet3D):
        yield
        return
    use_compile, model.use_compile = model.use_compile, False
    try:
        yield
    finally:
        model.use_compile = use_compile


def measure_sampling(
    model: torch.nn.Module,
    kind: str,
    shape: Shape,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    steps: int,
    seed: int,
) -> dict:
    """Milliseconds per DDIM step with CFG: batch 1 guided as one batch-2 forward per step."""
    forward = make_forward(kind)
    target = "eps" if kind == "diffusers" else "v"  # ModelScope predicts eps; ours is a v model
    z, _, context, _ = inputs_for(shape, 1, device, seed)
    empty = torch.zeros_like(context)  # stands in for the empty caption's tokens
    model.eval()

    def model_fn(zt, logsnr, context):
        alpha, sigma = alpha_sigma(logsnr)
        return prediction_to_x0(forward(model, zt, logsnr, context).float(), zt, alpha, sigma, target)

    denoise = classifier_free_guidance(model_fn, {"context": context}, {"context": empty}, scale=5.0)
    schedule = CosineSchedule()

    def run(n):
        with torch.inference_mode(), autocast_for(device, amp_dtype):
            out = sample_ddim(denoise, z, schedule.sampling_logsnrs(n).to(device))
        if not bool(torch.isfinite(out).all()):
            raise FloatingPointError("sampling produced non-finite values")

    run(2)  # warm-up (and compilation)
    (seconds,) = timed(lambda: run(steps), device, 1)
    return dict(batch=2, steps=steps, ms_per_step=1e3 * seconds / steps)


# ------------------------------------------------------------------------------------------ profiling
CATEGORIES = (
    ("attention", ("attention", "flash", "fmha", "sdpa", "softmax")),
    ("conv", ("conv", "fprop", "dgrad", "wgrad", "implicit_gemm", "cudnn")),
    ("matmul", ("gemm", "aten::mm", "aten::bmm", "addmm", "matmul", "linear", "cutlass", "xmma", "gemv")),
    ("norm", ("norm", "var_mean", "welford")),
    ("copy/layout", ("copy", "clone", "contiguous", "aten::cat", "catarray")),
    ("optimizer", ("adam", "foreach")),
    ("fused (compiled)", ("triton",)),
    ("elementwise", ("elementwise", "vectorized", "add", "mul", "silu", "gelu", "where", "fill", "sub", "div",
                     "sigmoid", "masked", "reduce", "sum", "mean", "exp", "neg", "pow", "lerp", "sqrt", "clamp",
                     "bernoulli", "dropout", "zero")),
)
# aten ops that move no data (views, allocation, scalar reads): their self time is host overhead
HOST_OPS = {
    "as_strided", "transpose", "t", "view", "reshape", "_reshape_alias", "permute", "squeeze", "unsqueeze",
    "select", "slice", "expand", "empty", "empty_strided", "resize_", "alias", "detach", "unflatten", "flatten",
    "split", "chunk", "unbind", "item", "_local_scalar_dense", "to", "lift_fresh", "_unsafe_view", "narrow",
}


def categorise(name: str) -> str:
    """Kind of work of a profiler entry (an aten op on CPU, a kernel on CUDA), from its name."""
    low = name.lower()
    if low.startswith("aten::") and low[len("aten::"):] in HOST_OPS:
        return "views/alloc (host)"
    for category, words in CATEGORIES:
        if any(w in low for w in words):
            return category
    return "other"


def profile_step(model, optimizer, forward, shape, batch, device, amp_dtype, seed, table_path: Path) -> dict:
    """Profile one training step; write the op table and return time shares by category."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    inputs = inputs_for(shape, batch, device, seed)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_and_backward(model, forward, inputs, device, amp_dtype)
        optimizer.step()

    model.train()
    step()
    synchronize(device)
    with profile(activities=activities) as prof:
        step()
        synchronize(device)
    events = prof.key_averages()
    on_device = device.type == "cuda"
    keys = ("self_device_time_total", "self_cuda_time_total") if on_device else ("self_cpu_time_total",)
    for key in keys:  # the device key's name changed across torch versions
        try:
            table = events.table(sort_by=key, row_limit=60)
            break
        except (AttributeError, KeyError, ValueError):
            table = events.table(row_limit=60)
    table_path.write_text(table)

    def self_time(evt) -> float:
        if on_device:
            return float(getattr(evt, "self_device_time_total", getattr(evt, "self_cuda_time_total", 0.0)))
        return float(evt.self_cpu_time_total)

    shares: dict[str, float] = {}
    top = []
    for evt in events:
        us = self_time(evt)
        if us <= 0 or (not on_device and not evt.key.startswith("aten::")):
            continue
        shares[categorise(evt.key)] = shares.get(categorise(evt.key), 0.0) + us
        top.append((us, evt.key))
    total = sum(shares.values()) or 1.0
    top.sort(reverse=True)
    return dict(
        timer="device kernels" if on_device else "CPU aten ops (self time)",
        total_ms=total / 1e3,
        shares={k: v / total for k, v in sorted(shares.items(), key=lambda kv: -kv[1])},
        top=[dict(name=name[:100], ms=us / 1e3) for us, name in top[:12]],
        table=str(table_path),
    )


# ------------------------------------------------------------------------------------------ reporting
def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def summarise(report: dict) -> dict:
    """Ratios ours / diffusers at each batch size, and the issue's targets at the largest batch."""
    train = {(r["variant"], r["batch"]): r for r in report["train"] if "error" not in r}
    batches = sorted({b for _, b in train})
    ratios: dict[str, dict] = {}
    for (variant, batch), row in train.items():
        ref = train.get(("diffusers", batch))
        if ref is None or variant == "diffusers":
            continue
        ratios.setdefault(variant, {})[str(batch)] = dict(
            videos_per_s=ratio(row["videos_per_s"], ref["videos_per_s"]),
            peak_mem=ratio(row["peak_mem_gib"], ref["peak_mem_gib"]),
            model_flops=ratio(row["model_flops"], ref["model_flops"]),
        )
    samples = {r["variant"]: r for r in report["sample"] if "error" not in r}
    sample_ratios = {
        v: ratio(r["ms_per_step"], samples["diffusers"]["ms_per_step"])
        for v, r in samples.items() if v != "diffusers" and "diffusers" in samples
    }
    big = str(max(batches)) if batches else None

    def at(variant, key):
        return ratios.get(variant, {}).get(big, {}).get(key) if big else None

    def best(variants, key, lower=False):
        values = [at(v, key) for v in variants if at(v, key) is not None]
        return (min(values) if lower else max(values)) if values else None

    plain = [v for v in ratios if "ckpt" not in v]
    ckpt = [v for v in ratios if v.startswith("ours") and "ckpt" in v]
    best_train = best([v for v in plain if v.startswith("ours")], "videos_per_s")
    ckpt_rows = [(at(v, "peak_mem"), at(v, "videos_per_s")) for v in ckpt]
    ckpt_ok = [m <= 0.5 and s >= 1.2 for m, s in ckpt_rows if m is not None and s is not None]
    best_sample = min(sample_ratios.values()) if sample_ratios else None
    return dict(
        train=ratios,
        sample_ms_per_step=sample_ratios,
        targets={
            "note": "the issue's targets are for the full configuration on a GPU; elsewhere they are indicative only",
            "batch": int(big) if big else None,
            "train_videos_per_s_ratio": best_train,
            "train_>=2x": None if best_train is None else best_train >= 2.0,
            "ckpt_peak_mem_ratio": best(ckpt, "peak_mem", lower=True),
            "ckpt_videos_per_s_ratio": best(ckpt, "videos_per_s"),
            "ckpt_mem<=0.5x_and_speed>=1.2x": (any(ckpt_ok) if ckpt_ok else None),
            "sample_ms_ratio": best_sample,
            "sample_<=0.5x": None if best_sample is None else best_sample <= 0.5,
        },
    )


def fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(report: dict, out=sys.stdout) -> None:
    s = report["summary"]
    head = report["models"]
    print(f"\nUNet benchmark ({report['mode']}) on {report['device']} | torch {report['torch']} | "
          f"diffusers {report['diffusers']} | {report['date']}", file=out)
    print(f"latents {report['latent_shape']} x batch, context {report['context_shape']}; "
          f"train dtype {report['train_dtype']}, sample dtype {report['sample_dtype']}; "
          f"matmul peak {report['peak']['tflops']:.1f} TFLOP/s ({report['peak']['dtype']}, n={report['peak']['n']})",
          file=out)
    print(f"params: diffusers {head['diffusers']['params'] / 1e6:.1f} M, ours {head['ours']['params'] / 1e6:.1f} M "
          f"(ratio {report['param_ratio']:.3f}, ff_mult={head['ours']['config']['ff_mult']})", file=out)
    cols = f"{'variant':20s} {'batch':>5s} {'s/step':>8s} {'videos/s':>9s} {'TFLOP/s':>8s} {'MFU':>6s} " \
           f"{'GFLOP/vid':>10s} {'peak GiB':>9s} {'x videos/s':>11s} {'x memory':>9s}"
    print("\ntraining step\n" + cols + "\n" + "-" * len(cols), file=out)
    for r in report["train"]:
        if "error" in r:
            print(f"{r['variant']:20s} {r['batch']:>5} refused: {r['error'][:70]}", file=out)
            continue
        rr = s["train"].get(r["variant"], {}).get(str(r["batch"]), {})
        print(f"{r['variant']:20s} {r['batch']:>5d} {r['step_s']:8.4f} {r['videos_per_s']:9.2f} "
              f"{fmt(r['tflops'], '8.2f')} {fmt(r['mfu'], '6.1%')} {r['model_flops'] / r['batch'] / 1e9:10.1f} "
              f"{fmt(r['peak_mem_gib'], '9.2f')} {fmt(rr.get('videos_per_s'), '11.2f')} {fmt(rr.get('peak_mem'), '9.2f')}",
              file=out)
    print("\nsampling (DDIM + CFG, cond and uncond in one batch-2 forward)", file=out)
    for r in report["sample"]:
        if "error" in r:
            print(f"{r['variant']:20s} failed: {r['error'][:80]}", file=out)
            continue
        x = s["sample_ms_per_step"].get(r["variant"])
        print(f"{r['variant']:20s} {r['ms_per_step']:9.2f} ms/step   x diffusers {fmt(x, '.2f')}", file=out)
    t = s["targets"]
    print(f"\ntargets at batch {t['batch']}: train videos/s x{fmt(t['train_videos_per_s_ratio'], '.2f')} (>= 2.0), "
          f"checkpointed memory x{fmt(t['ckpt_peak_mem_ratio'], '.2f')} (<= 0.5) at videos/s "
          f"x{fmt(t['ckpt_videos_per_s_ratio'], '.2f')} (>= 1.2), sampling x{fmt(t['sample_ms_ratio'], '.2f')} (<= 0.5)",
          file=out)
    if report.get("profile"):
        print("\nprofile (one training step, largest batch): time share by kind", file=out)
        for variant, p in report["profile"].items():
            shares = ", ".join(f"{k} {v:.0%}" for k, v in list(p["shares"].items())[:6])
            print(f"  {variant:18s} {p['total_ms']:8.1f} ms ({p['timer']}): {shares}", file=out)


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="tools/benchmark.py unet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tiny", action="store_true", help="scaled-down models and latents (CPU, under a minute)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4], help="training batch sizes (default 1 4)")
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=None,
                   help=f"what to measure (default {' '.join(DEFAULT_VARIANTS)}; --tiny: {' '.join(TINY_VARIANTS)})")
    p.add_argument("--compile", action="store_true", help="also measure ours-compile and diffusers-compile")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode for the compiled variants")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per measurement (default 10, tiny 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3, tiny 1)")
    p.add_argument("--sample-steps", type=int, default=None, help="timed DDIM steps (default 20, tiny 3)")
    p.add_argument("--no-sample", action="store_true", help="skip the sampling measurement")
    p.add_argument("--peak-n", type=int, default=None, help="matmul size for the peak (default 8192 CUDA, 1024 CPU)")
    p.add_argument("--profile", action="store_true", help="profile one step of each model at the largest batch")
    p.add_argument("--out", type=Path, default=Path("runs/benchmarks/unet.json"), help="JSON output path")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if min(args.batch_sizes) < 1:
        p.error(f"--batch-sizes must be positive, got {args.batch_sizes}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmark unet: --device cuda but CUDA is not available")
    on_cuda = device.type == "cuda"
    steps = args.steps or (3 if args.tiny else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    sample_steps = args.sample_steps or (3 if args.tiny else 20)
    variants = list(args.variants or (TINY_VARIANTS if args.tiny else DEFAULT_VARIANTS))
    if args.compile:
        variants += [v for v in ("diffusers-compile", "ours-compile") if v not in variants]
    if "diffusers" not in variants:
        variants.append("diffusers")  # every ratio needs the reference from the same run
    if not any(VARIANTS[v][0] == "ours" for v in variants):
        variants.append("ours")
    train_dtype = torch.bfloat16 if on_cuda else None  # autocast dtype; None = float32
    sample_dtype = torch.float16 if on_cuda else None
    shape = TINY_SHAPE if args.tiny else FULL_SHAPE
    reference = TINY if args.tiny else MODELSCOPE
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    register_cpu_attention_flops()

    import diffusers

    ours_cfg, ours_params, ref_params = matched_config(reference)
    report: dict = dict(
        benchmark="unet",
        mode="tiny" if args.tiny else "full",
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        device=torch.cuda.get_device_name(device) if on_cuda else f"CPU ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads)",
        host=platform.node(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        diffusers=diffusers.__version__,
        python=platform.python_version(),
        train_dtype="bfloat16 autocast" if train_dtype else "float32",
        sample_dtype="float16 weights + autocast" if sample_dtype else "float32",
        memory_note=None if on_cuda else "peak memory is CUDA's max_memory_allocated; n/a (null) on CPU",
        latent_shape=[shape.channels, shape.frames, shape.height, shape.width],
        context_shape=[shape.context_len, shape.context_dim],
        shape=shape._asdict(),
        models=dict(
            diffusers=dict(params=ref_params, config={k: list(v) if isinstance(v, tuple) else v
                                                      for k, v in reference.items()}),
            ours=dict(params=ours_params, config={k: list(v) if isinstance(v, tuple) else v
                                                  for k, v in ours_cfg.items()}),
        ),
        param_ratio=ours_params / ref_params,
        param_tolerance=PARAM_TOLERANCE,
        variants=variants,
        steps=steps,
        warmup=warmup,
        train=[],
        sample=[],
    )
    peak_dtype = torch.bfloat16 if on_cuda else torch.float32
    peak_n = args.peak_n or (8192 if on_cuda else 1024)
    report["peak"] = dict(dtype=str(peak_dtype).replace("torch.", ""), n=peak_n,
                          tflops=matmul_peak(device, peak_dtype, peak_n))
    peak = report["peak"]["tflops"]

    def save() -> None:
        """Rewrite the JSON after every measurement: a run cut short keeps what it measured."""
        report["summary"] = summarise(report)
        write_json_atomic(args.out, report, default=str)

    kinds = list(dict.fromkeys(VARIANTS[v][0] for v in variants))  # networks in the order first named
    plan = [(v, b) for kind in kinds for v in variants if VARIANTS[v][0] == kind for b in args.batch_sizes]
    bar = tqdm(total=len(plan) + (0 if args.no_sample else 2), desc="unet benchmark", file=sys.stderr,
               disable=None)  # a bar on terminals, quiet in logs
    model_flops: dict[tuple[str, int], float] = {}
    profiles: dict[str, dict] = {}
    for kind in kinds:
        kind_variants = [v for v in variants if VARIANTS[v][0] == kind]
        if not kind_variants:
            continue
        torch.manual_seed(args.seed)
        with torch.device(device):
            model = build_diffusers(reference) if kind == "diffusers" else UNet3D(**ours_cfg)
        forward = make_forward(kind)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=on_cuda)
        compiled_diffusers = None
        for variant in kind_variants:
            settings = VARIANTS[variant][1]
            layout = getattr(model, "channels_last", None)
            error = configure(model, kind, settings, args.compile_mode)
            if getattr(model, "channels_last", None) != layout:
                optimizer.state.clear()  # AdamW re-creates its moments in the parameters' new layout
            run_model = model
            if kind == "diffusers" and settings.get("compile"):
                compiled_diffusers = compiled_diffusers or torch.compile(model, mode=args.compile_mode)
                run_model = compiled_diffusers
            compiled = bool(settings.get("compile") or settings.get("use_compile"))
            for batch in args.batch_sizes:
                bar.set_postfix_str(f"{variant} b{batch}")
                row: dict = dict(variant=variant, model=kind, settings=settings)
                if error is not None:
                    report["train"].append(dict(row, batch=batch, error=error))
                    save()
                    bar.update()
                    continue
                inputs = inputs_for(shape, batch, device, args.seed)
                try:
                    # FLOPs are counted on the eager network (the counter does not look inside compiled graphs)
                    with eager(model):
                        model.train()
                        row["counted_flops"] = None if compiled else step_flops(model, forward, inputs, device,
                                                                                train_dtype)
                        if compiled and (kind, batch) not in model_flops:
                            configure(model, kind, {}, None)  # count the plain network's FLOPs
                            model_flops[(kind, batch)] = step_flops(model, forward, inputs, device, train_dtype)
                            configure(model, kind, settings, args.compile_mode)
                    row.update(measure_train(run_model, optimizer, forward, inputs, device, train_dtype, steps,
                                             warmup))
                except torch.OutOfMemoryError as err:
                    row.update(batch=batch, error=f"out of memory: {str(err)[:120]}")
                    optimizer.zero_grad(set_to_none=True)
                    gc.collect()
                    if on_cuda:
                        torch.cuda.empty_cache()
                    report["train"].append(row)
                    save()
                    bar.update()
                    continue
                # model FLOPs: those of the plain (not recomputing) step of the same network
                if not settings.get("gradient_checkpointing") and row["counted_flops"] is not None:
                    model_flops.setdefault((kind, batch), row["counted_flops"])
                row["model_flops"] = model_flops.get((kind, batch), row["counted_flops"])
                row["tflops"] = row["model_flops"] / row["step_s"] / 1e12
                row["mfu"] = row["tflops"] / peak if peak else None
                report["train"].append(row)
                save()
                bar.update()
        layout = getattr(model, "channels_last", None)
        configure(model, kind, {}, None)  # the default network for the profile and sampling
        if getattr(model, "channels_last", None) != layout:
            optimizer.state.clear()
        if args.profile:
            out_dir = args.out.parent
            out_dir.mkdir(parents=True, exist_ok=True)
            profiles[kind] = profile_step(model, optimizer, forward, shape, max(args.batch_sizes), device,
                                          train_dtype, args.seed, out_dir / f"profile_{kind}.txt")
            report["profile"] = profiles
            save()
        del optimizer
        gc.collect()
        if not args.no_sample:
            if sample_dtype is not None:
                model.to(sample_dtype)
            for variant in [v for v in ("diffusers", "ours", "ours-compile") if v in kind_variants]:
                bar.set_postfix_str(f"sample {variant}")
                configure(model, kind, VARIANTS[variant][1], args.compile_mode)
                try:
                    row = measure_sampling(model, kind, shape, device, sample_dtype, sample_steps, args.seed)
                    report["sample"].append(dict(variant=variant, model=kind, **row))
                    save()
                except (torch.OutOfMemoryError, FloatingPointError) as err:
                    report["sample"].append(dict(variant=variant, model=kind, error=str(err)[:200]))
                    save()
            bar.update()
        del model, run_model, compiled_diffusers
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()
    bar.close()
    save()
    print_table(report)
    print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
