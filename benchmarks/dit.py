"""``tools/benchmark.py dit``: our spacetime DiT against diffusers' WanTransformer3DModel.

Both networks are built with random weights at the same width, depth, heads, MLP width, patch and
text width (Wan 2.1 1.3B's shape by default; ``--tiny`` is a CPU-sized pair) and measured in one
run on the same inputs: training step (forward + backward + AdamW) in videos/s, with and without
per-block gradient checkpointing, peak memory of each (CUDA only), and one sampling step (forward,
no grad). Prints a table and ratios (ours / diffusers); ``--out`` writes the JSON.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latentvid.nn.dit import DiT3D  # noqa: E402
from latentvid.files import write_json_atomic  # noqa: E402

# Wan 2.1 T2V 1.3B: 30 layers, 12 heads of 128 (dim 1536), FFN 8960, umT5 text (4096), 16 latent channels
WAN_1_3B = dict(num_layers=30, num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, text_dim=4096,
                in_channels=16, out_channels=16, patch_size=(1, 2, 2))
TINY = dict(num_layers=2, num_attention_heads=2, attention_head_dim=16, ffn_dim=128, text_dim=32,
            in_channels=4, out_channels=4, patch_size=(1, 2, 2))
FULL_LATENT = (13, 30, 52)  # (t, h, w): 49 frames at 240 x 416 px through Wan's VAE; 5070 tokens
TINY_LATENT = (3, 8, 8)


def configs(shape: dict) -> tuple[dict, dict]:
    """(Wan config, our DiT3D config) of the same width / depth / heads / MLP / patch / text width."""
    dim = shape["num_attention_heads"] * shape["attention_head_dim"]
    ours = dict(in_channels=shape["in_channels"], out_channels=shape["out_channels"], patch_size=shape["patch_size"],
                dim=dim, depth=shape["num_layers"], head_dim=shape["attention_head_dim"],
                mlp_ratio=shape["ffn_dim"] / dim, context_dim=shape["text_dim"], attention_mode="full",
                fps_conditioning=False)
    return dict(shape), ours


def build(wan_cfg: dict, ours_cfg: dict, checkpointing: bool, device: torch.device):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: a 1.3 B model's CPU init takes tens of seconds
        wan = WanTransformer3DModel(**wan_cfg)
        ours = DiT3D(**ours_cfg, gradient_checkpointing=checkpointing)
    if checkpointing:
        wan.enable_gradient_checkpointing()
    return wan, ours


def runner(name: str, net: torch.nn.Module, x: torch.Tensor, ctx: torch.Tensor):
    """A closure calling ``net`` on the shared inputs in its own conventions."""
    b = x.shape[0]
    if name == "diffusers":
        timestep = torch.full((b,), 500.0, device=x.device)
        return lambda: net(x, timestep, ctx, return_dict=False)[0]
    logsnr = torch.zeros(b, device=x.device)
    return lambda: net(x, logsnr, context=ctx)


def timed(fn, steps: int, device: torch.device) -> float:
    """Mean seconds per call of ``fn`` after one warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def measure(name: str, net, x, ctx, steps: int, device, autocast) -> dict:
    """Train-step s, videos/s, peak memory (CUDA) and sampling-step s for one network."""
    call = runner(name, net, x, ctx)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)

    def train_step():
        net.train()
        with autocast():
            loss = call().float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    train_s = timed(train_step, steps, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None

    def sample_step():
        net.eval()
        with torch.no_grad(), autocast():
            call()

    sample_s = timed(sample_step, steps, device)
    del opt
    return {"params": sum(p.numel() for p in net.parameters()), "train_step_s": train_s,
            "videos_per_s": x.shape[0] / train_s, "peak_gib": peak, "sample_step_s": sample_s}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="benchmark.py dit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU-sized pair and latents (CI)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--batch", type=int, default=None, help="videos per step (default: 1 full, 2 tiny)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default: 5 full, 2 tiny)")
    p.add_argument("--text-len", type=int, default=None, help="text tokens (default: 512 full, 8 tiny)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shape, (t, h, w) = (TINY, TINY_LATENT) if args.tiny else (WAN_1_3B, FULL_LATENT)
    batch = args.batch or (2 if args.tiny else 1)
    steps = args.steps or (2 if args.tiny else 5)
    text_len = args.text_len or (8 if args.tiny else 512)
    wan_cfg, ours_cfg = configs(shape)
    use_bf16 = device.type == "cuda"

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()

    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, shape["in_channels"], t, h, w, generator=g).to(device)
    ctx = torch.randn(batch, text_len, shape["text_dim"], generator=g).to(device)
    rows = {}
    for ckpt in (False, True):
        wan, ours = build(wan_cfg, ours_cfg, ckpt, device)
        for name, net in (("diffusers", wan), ("ours", ours)):
            rows[f"{name}{'_ckpt' if ckpt else ''}"] = measure(name, net, x, ctx, steps, device, autocast)
        del wan, ours
    import diffusers

    report = {
        "mode": "tiny" if args.tiny else "full", "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or "cpu", "torch": torch.__version__, "diffusers": diffusers.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"), "precision": "bf16-autocast" if use_bf16 else "float32",
        "latent": [shape["in_channels"], t, h, w], "batch": batch, "text_len": text_len, "steps": steps,
        "configs": {"diffusers": {**wan_cfg, "patch_size": list(wan_cfg["patch_size"])},
                    "ours": {**ours_cfg, "patch_size": list(ours_cfg["patch_size"])}},
        "rows": rows,
        "ratios": {  # ours / diffusers: > 1 is faster (videos/s), < 1 is less memory / time
            "train_videos_per_s": rows["ours"]["videos_per_s"] / rows["diffusers"]["videos_per_s"],
            "train_videos_per_s_ckpt": rows["ours_ckpt"]["videos_per_s"] / rows["diffusers_ckpt"]["videos_per_s"],
            "sample_step_time": rows["ours"]["sample_step_s"] / rows["diffusers"]["sample_step_s"],
            "peak_memory_ckpt": (rows["ours_ckpt"]["peak_gib"] / rows["diffusers_ckpt"]["peak_gib"]
                                 if rows["ours_ckpt"]["peak_gib"] else None),
        },
    }
    print(f"DiT benchmark ({report['mode']}, {report['device']}, {report['precision']}, batch {batch}, "
          f"latent {report['latent']}, {steps} steps)")
    print(f"{'row':16s} {'params':>12s} {'train s':>9s} {'videos/s':>9s} {'peak GiB':>9s} {'sample s':>9s}")
    for key, r in rows.items():
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        print(f"{key:16s} {r['params']:12,d} {r['train_step_s']:9.4f} {r['videos_per_s']:9.3f} {peak:>9s} "
              f"{r['sample_step_s']:9.4f}")
    print("ours / diffusers: " + ", ".join(f"{k} {v:.2f}" for k, v in report["ratios"].items() if v is not None))
    if args.out:
        write_json_atomic(args.out, report)
    return report


if __name__ == "__main__":
    main()
