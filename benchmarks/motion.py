"""Does the model move the shape the way the caption says? Direction accuracy against training steps.

``python tools/benchmark.py motion [options]`` trains one small variant of the base recipe in a
plain loop (the real ``LatentDiffusion`` loss, sampler and probe; no Trainer), and every
``--eval-every`` steps samples ``--seeds`` videos per prompt from its EMA weights and scores them
with the shapes probe. It prints one row per evaluation, then, for the final model:

* the denoising loss per logSNR band with each clip's own caption against the same clip with the
  direction word swapped (the gap is what the word is worth to the model at that noise level);
* where sampling decides the direction: start from a caption, switch its direction word at a
  given step, and count how often the video still moves the first way.

The variants are the diagnosis of README "What the demo shows" (issue "Text controls motion"):
``--data directions`` (one colour and shape, four directions), ``colours`` (five colours of one
shape, four directions) or ``full`` (the shapes grammar with
its held-out combinations), ``--clips-per-combo`` (a fixed pool like data/shapes, or 0: fresh
clips every step), ``--space latent|pixel``, ``--cond text|label`` (the caption through the random
text tower, or the words as a one-hot class label in the time embedding, no tower),
``--text-pooling`` (the pooled-text embedding path of UNet3D), ``--min-snr``.
Results go to stdout and, with ``--out``, to a JSON file.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latentvid.data.shapes import (  # noqa: E402
    COLOURS,
    DIRECTIONS,
    EVAL_TRAIN_COMBOS,
    HELD_OUT,
    SHAPES,
    render_clip,
    training_combos,
    video_caption,
)
from latentvid.data.video import from_uint8  # noqa: E402
from latentvid.diffusion import alpha_sigma, diffuse, masked_mse, snr_loss_weight, training_target  # noqa: E402
from latentvid.evaluation import probe_scores  # noqa: E402
from latentvid.files import write_json_atomic  # noqa: E402
from latentvid.metrics.shapes import classify_video  # noqa: E402

VOCAB = tuple(COLOURS) + SHAPES + DIRECTIONS
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
BANDS = ((-20.0, -4.0), (-4.0, -1.0), (-1.0, 1.0), (1.0, 4.0), (4.0, 20.0))


class LabelEncoder(nn.Module):
    """Captions -> one token (B, 1, D): the multi-hot of their grammar words (no text tower).

    With ``UNet3D(cross_attention=False, text_pooling="mean")`` this is a class-label embedding
    added to the time embedding. The empty caption (classifier-free guidance) is all zeros."""

    def __init__(self, dim: int = 128) -> None:
        super().__init__()
        self.dim = dim
        self.output_dim = dim
        self.is_random = True
        self.register_buffer("anchor", torch.zeros(0), persistent=False)  # follows .to(device)

    def forward(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        out = torch.zeros(len(captions), 1, self.dim)
        for i, caption in enumerate(captions):
            for word in caption.split():
                if word in VOCAB:
                    out[i, 0, VOCAB.index(word)] = 1.0
        return out.to(self.anchor.device), torch.ones(len(captions), 1, dtype=torch.bool, device=self.anchor.device)


def combos_for(data: str) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(training combos, evaluation combos) of a data variant."""
    if data == "directions":
        combos = [("red", "circle", d) for d in DIRECTIONS]
        return combos, combos
    if data == "colours":  # every colour, one shape: how direction learning scales with the contexts
        combos = [(c, "circle", d) for c in COLOURS for d in DIRECTIONS]
        return combos, combos
    return training_combos(), list(HELD_OUT) + list(EVAL_TRAIN_COMBOS)


class ClipSource:
    """Batches of shapes clips (B, 3, T, H, W) in [-1, 1] with captions, from a fixed pool of
    ``clips_per_combo`` clips per combination (0: a fresh clip for every draw)."""

    def __init__(self, combos, clips_per_combo: int, num_frames: int, size: int, seed: int,
                 device: str | torch.device = "cpu") -> None:
        self.combos, self.num_frames, self.size, self.device = combos, num_frames, size, torch.device(device)
        self.rng = np.random.default_rng(seed)
        self.pool = None
        if clips_per_combo:
            self.pool = [(c, self._render(c)) for c in combos for _ in range(clips_per_combo)]

    def _render(self, combo) -> np.ndarray:
        return render_clip(*combo, num_frames=self.num_frames, size=self.size, rng=self.rng)

    def batch(self, b: int) -> dict:
        if self.pool is None:
            items = [(c, self._render(c)) for c in (self.combos[i] for i in self.rng.integers(len(self.combos), size=b))]
        else:
            items = [self.pool[i] for i in self.rng.integers(len(self.pool), size=b)]
        video = torch.stack([from_uint8(f) for _, f in items]).to(self.device)  # (B, 3, T, H, W) in [-1, 1]
        return {"video": video, "caption": [video_caption(*c) for c, _ in items],
                "fps": torch.full((b,), 8.0, device=self.device),
                "frame_mask": torch.ones(b, self.num_frames, dtype=torch.bool, device=self.device)}


def build_model(args) -> torch.nn.Module:
    from latentvid.conditioning.text import OpenCLIPTextEncoder
    from latentvid.diffusion.schedule import CosineSchedule
    from latentvid.models.autoencoder import PretrainedCausalVAE
    from latentvid.models.latent_diffusion import LatentDiffusion
    from latentvid.nn.unet3d import UNet3D

    if args.cond == "label":
        text = LabelEncoder(128)
    else:
        text = OpenCLIPTextEncoder(checkpoint=None, random_width=128, random_layers=2, random_heads=4, max_length=16)
    latent = args.space == "latent"
    unet = UNet3D(
        in_channels=4 if latent else 3, out_channels=4 if latent else 3,
        model_channels=args.channels, channel_mult=(1, 2) if latent else (1, 2, 2),
        num_res_blocks=2, attention_levels=(0, 1) if latent else (1, 2), head_dim=32, context_dim=128,
        cross_attention=args.cond == "text" and args.cross_attention,
        text_pooling=args.text_pooling if args.cond == "text" else "mean",
        fps_conditioning=True, norm_groups=16, position_embedding=args.position_embedding,
    )
    first_stage = PretrainedCausalVAE(str(ROOT / "data/vae/shapes-vae.ckpt")) if latent else None
    return LatentDiffusion(unet=unet, text_encoder=text, first_stage=first_stage,
                           schedule=CosineSchedule(shift=args.shift), target="v", caption_dropout=0.1,
                           min_snr_gamma=args.min_snr, snr_floor=args.snr_floor, lr=args.lr, warmup_steps=50,
                           guidance_scale=args.guidance, clip_sample=None if latent else 1.0)


@torch.no_grad()
def probe(model, combos, seeds: int, steps: int, seed: int, num_frames: int, size: int) -> dict:
    """Shapes-probe accuracies (colour, shape, direction, all) of ``seeds`` samples per combination,
    and how often each direction (or "static") was seen."""
    captions = [video_caption(*c) for c in combos for _ in range(seeds)]
    g = torch.Generator(device=model.device).manual_seed(seed)
    videos = model.sample(captions, num_frames, size, size, steps=steps, generator=g).float().cpu()
    seen: dict[str, int] = {}
    got = []
    for video in videos:  # what the wrong ones do instead: static, or which other way
        direction = str(classify_video(video)["direction"])
        seen[direction] = seen.get(direction, 0) + 1
        got.append(direction)
    wanted = [c[2] for c in combos for _ in range(seeds)]
    return {**probe_scores(videos, captions), **axis_and_sign(got, wanted), "directions_seen": seen}


def axis_and_sign(got: list[str], wanted: list[str]) -> dict[str, float]:
    """Direction accuracy split in two: ``axis``, the share of videos moving along the caption's
    axis (horizontal / vertical; chance 0.5 among moving videos), and ``sign``, the share of those
    that also move the caption's way (chance 0.5). The axis needs no frame order (a left and a right
    clip are the same streak); the sign does (each is the other's time reversal)."""
    on_axis = [g for g, w in zip(got, wanted) if g in OPPOSITE and (g == w or OPPOSITE[g] == w)]
    right = sum(g == w for g, w in zip(got, wanted))
    return {"axis": len(on_axis) / max(len(got), 1), "sign": right / max(len(on_axis), 1)}


@torch.no_grad()
def loss_gap(model, source: ClipSource, n: int = 64, seed: int = 7) -> list[dict]:
    """Per logSNR band: loss with the clip's caption, and with its direction word swapped."""
    g = torch.Generator().manual_seed(seed)
    batch = source.batch(n)
    z0 = model.first_stage.encode(batch["video"])
    rows = []
    for lo, hi in BANDS:
        lam = lo + (hi - lo) * torch.rand(n, generator=g)
        alpha, sigma = alpha_sigma(lam)
        eps = torch.randn(z0.shape, generator=g)
        z = diffuse(z0, eps, alpha, sigma)
        target = training_target(z0, eps, alpha, sigma, "v")
        out = {}
        for name, captions in (("own", batch["caption"]),
                               ("swapped", [c.rsplit(" ", 1)[0] + " " + OPPOSITE[c.rsplit(" ", 1)[1]]
                                            for c in batch["caption"]])):
            ctx, mask = model.encode_text(captions)
            pred = model(z, lam, ctx, mask, batch["fps"])
            # x0-space error, so bands are comparable (v error = (SNR + 1) x0 error)
            w = 1.0 / (lam.exp() + 1.0)
            out[name] = float(masked_mse(pred, target, weight=w))
        rows.append({"band": f"[{lo:g}, {hi:g})", **out, "gap": out["swapped"] / out["own"] - 1.0})
    return rows


@torch.no_grad()
def decision_curve(model, combos, seeds: int, steps: int, num_frames: int, size: int, switches) -> list[dict]:
    """Sample with a caption, swap its direction word for the opposite one after ``k`` of
    ``steps`` steps; the share of videos moving the first caption's way, per k."""
    rows = []
    logsnrs = model.schedule.sampling_logsnrs(steps)
    for k in switches:
        first = [video_caption(*c) for c in combos for _ in range(seeds)]
        second = [f"a {c[0]} {c[1]} moving {OPPOSITE[c[2]]}" for c in combos for _ in range(seeds)]
        d1 = model.guided_denoiser(first, 8.0, model.hparams.guidance_scale)
        d2 = model.guided_denoiser(second, 8.0, model.hparams.guidance_scale)
        calls = {"n": 0}

        def denoise(z, lam):
            calls["n"] += 1
            return (d1 if calls["n"] <= k else d2)(z, lam)

        g = torch.Generator().manual_seed(99)
        fs = model.first_stage
        z = torch.randn((len(first), fs.latent_channels, fs.latent_frames(num_frames),
                         size // fs.spatial_factor, size // fs.spatial_factor), generator=g)
        video = fs.decode(model.run_sampler(denoise, z, steps, "ddim")).clamp(-1, 1)
        got = [classify_video(v)["direction"] for v in video]
        share = float(np.mean([d == c[2] for d, c in zip(got, (c for c in combos for _ in range(seeds)))]))
        lam_switch = float(logsnrs[k]) if k < steps else math.inf
        rows.append({"switch_after": k, "logsnr_at_switch": lam_switch, "first_direction": share})
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="benchmark.py motion", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=("directions", "colours", "full"), default="directions",
                   help="one colour and shape in four directions, five colours of one shape, or the full grammar")
    p.add_argument("--clips-per-combo", type=int, default=0, help="fixed pool size per combination; 0 = fresh clips")
    p.add_argument("--space", choices=("latent", "pixel"), default="latent")
    p.add_argument("--cond", choices=("text", "label"), default="text")
    p.add_argument("--text-pooling", choices=("none", "mean", "last"), default="none")
    p.add_argument("--no-cross-attention", dest="cross_attention", action="store_false")
    p.add_argument("--position-embedding", choices=("none", "frame", "spacetime"), default="none",
                   help="UNet3D(position_embedding=...): absolute frame (and row / column) indices")
    p.add_argument("--min-snr", type=float, default=5.0, help="Min-SNR gamma; <= 0 for the plain v loss")
    p.add_argument("--snr-floor", type=float, default=None,
                   help="lower clamp of the x0-space loss weight (LatentDiffusion.snr_floor)")
    p.add_argument("--shift", type=float, default=1.0, help="cosine schedule shift")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--seeds", type=int, default=8, help="samples per prompt at each evaluation")
    p.add_argument("--sample-steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--analyse", action="store_true", help="loss gap per logSNR band and decision curve at the end")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="torch device (cuda: see benchmarks/gpu_motion.sh)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the training step (cuda)")
    p.add_argument("--ema-decay", type=float, default=0.99, help="final EMA decay (warmed up as (1+s)/(10+s))")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop training after this many minutes (then evaluate once more)")
    p.add_argument("--out", type=Path, help="write the results here (JSON)")
    p.add_argument("--save", type=Path, help="save the EMA U-Net's state dict here")
    p.add_argument("--mean-clips", action="store_true",
                   help="no training: what the direction word is worth at pure noise, per frame or not")
    args = p.parse_args(argv)
    if args.mean_clips:
        torch.set_num_threads(args.threads)
        from latentvid.models.autoencoder import PretrainedCausalVAE

        rows = mean_clip_errors(PretrainedCausalVAE(str(ROOT / "data/vae/shapes-vae.ckpt")), seed=args.seed)
        for r in rows:
            print(f"{r['direction']:>5s}: x0 error at pure noise (sum over the latent clip): caption's mean clip "
                  f"{r['own']:.1f}, mean over all directions {r['any']:.1f}, caption's mean with one frame for "
                  f"all frames {r['frame_blind']:.1f}", flush=True)
        return {"mean_clips": rows}
    args.min_snr = args.min_snr if args.min_snr > 0 else None
    args.text_pooling = None if args.text_pooling == "none" else args.text_pooling
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    num_frames, size = 9, 32

    train_combos, eval_combos = combos_for(args.data)
    source = ClipSource(train_combos, args.clips_per_combo, num_frames, size, args.seed, args.device)
    model = build_model(args).to(args.device)
    ema = copy.deepcopy(model).eval()
    params = [q for q in model.unet.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    print(f"motion: {vars(args)}", flush=True)
    rows, start, losses = [], time.time(), []
    for step in range(1, args.steps + 1):
        model.train()
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = model.diffusion_loss(source.batch(args.batch_size))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        with torch.no_grad():
            decay = min(args.ema_decay, (1 + step) / (10 + step))
            for pe, pm in zip(ema.unet.parameters(), model.unet.parameters()):
                pe.lerp_(pm, 1.0 - decay)
        out_of_time = args.max_minutes is not None and time.time() - start > 60 * args.max_minutes
        if step % args.eval_every == 0 or step == args.steps or out_of_time:
            acc = probe(ema, eval_combos, args.seeds, args.sample_steps, 1000 + args.seed, num_frames, size)
            row = {"step": step, "loss": float(np.mean(losses[-50:])), **acc, "minutes": (time.time() - start) / 60}
            rows.append(row)
            print(f"step {step:5d}  loss {row['loss']:.4f}  direction {acc['direction']:.2f}  (axis {acc['axis']:.2f}, "
                  f"sign {acc['sign']:.2f})  colour "
                  f"{acc['colour']:.2f}  shape {acc['shape']:.2f}  seen {acc['directions_seen']}  ({row['minutes']:.1f} min)",
                  flush=True)
        if out_of_time:
            break
    result = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "curve": rows}
    if args.analyse:
        result["loss_gap"] = loss_gap(ema, source)
        for r in result["loss_gap"]:
            print(f"logSNR {r['band']:>12s}: x0 loss own {r['own']:.4f}  swapped direction {r['swapped']:.4f}  "
                  f"gap {100 * r['gap']:+.1f}%", flush=True)
        switches = [0, 3, 6, 9, 12, 15, 20, args.sample_steps]
        result["decision"] = decision_curve(ema, eval_combos[:4], 4, args.sample_steps, num_frames, size, switches)
        for r in result["decision"]:
            print(f"switch after {r['switch_after']:2d} steps (logSNR {r['logsnr_at_switch']:+.2f}): "
                  f"{r['first_direction']:.2f} keep the first caption's direction", flush=True)
    if args.save:
        torch.save(ema.unet.state_dict(), args.save)
    if args.out:
        write_json_atomic(args.out, result)
    return result



@torch.no_grad()
def ideal_gap(first_stage, combos, n_ref: int = 2048, n_eval: int = 128, seed: int = 3) -> list[dict]:
    """What the direction word is worth to the *ideal* denoiser, per logSNR band (no training).

    The posterior mean E[z0 | z_t] over ``n_ref`` fresh reference clips (a Gaussian-kernel average
    of their latents) with all directions against only the clip's own direction, for ``n_eval``
    other clips: the x0 errors of the two, and the share of the error the word removes."""
    source = ClipSource(combos, 0, 9, 32, seed)
    ref, ref_dir = [], []
    while len(ref_dir) < n_ref:
        batch = source.batch(64)
        ref.append(first_stage.encode(batch["video"]).flatten(1))
        ref_dir += [c.rsplit(" ", 1)[1] for c in batch["caption"]]
    ref, ref_dir = torch.cat(ref)[:n_ref].double(), np.array(ref_dir[:n_ref])
    batch = source.batch(n_eval)
    x0 = first_stage.encode(batch["video"]).flatten(1).double()
    own = np.array([c.rsplit(" ", 1)[1] for c in batch["caption"]])
    same = torch.from_numpy(own[:, None] == ref_dir[None, :])  # (n_eval, n_ref)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for lo, hi in BANDS:
        lam = torch.full((1,), (lo + hi) / 2, dtype=torch.float64)
        alpha, sigma = alpha_sigma(lam)
        z = alpha * x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        # log N(z; alpha x_ref, sigma^2): (n_eval, n_ref)
        logits = -torch.cdist(z, alpha * ref).pow(2) / (2 * sigma**2)
        err = {}
        for name, allowed in (("any direction", torch.ones_like(same)), ("own direction", same)):
            w = torch.softmax(logits.masked_fill(~allowed, -math.inf), dim=1)
            err[name] = float((w @ ref - x0).pow(2).mean())
        rows.append({"logsnr": (lo + hi) / 2, **err,
                     "removed_by_word": 1.0 - err["own direction"] / err["any direction"],
                     "min_snr5_weight": float(snr_loss_weight(lam, "x0", 5.0)),
                     })
    return rows


@torch.no_grad()
def mean_clip_errors(first_stage, n: int = 256, seed: int = 3) -> list[dict]:
    """At pure noise the ideal prediction is the caption's mean clip. Per direction of one colour and
    shape, the x0 error (summed over the latent clip, averaged over ``n`` fresh clips) of: that
    direction's mean clip, the mean over all directions, and the direction's mean averaged over
    frames (the best a network can do if it gives every frame the same prediction)."""
    rng = np.random.default_rng(seed)
    latents = {d: first_stage.encode(torch.stack([from_uint8(render_clip("red", "circle", d, 9, 32, rng))
                                                  for _ in range(n)]))
               for d in DIRECTIONS}  # each (n, C, t, h, w)
    mean_any = torch.cat(list(latents.values())).mean(0)
    rows = []
    for d, z in latents.items():
        own = z.mean(0)  # (C, t, h, w)
        blind = own.mean(1, keepdim=True).expand_as(own)  # one prediction for every frame
        err = {name: float((z - m).pow(2).sum((1, 2, 3, 4)).mean())
               for name, m in (("own", own), ("any", mean_any), ("frame_blind", blind))}
        rows.append({"direction": d, **err})
    return rows


if __name__ == "__main__":
    main()
