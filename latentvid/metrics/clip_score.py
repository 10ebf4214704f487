"""CLIPSIM: mean per-frame CLIP similarity between generated videos and their captions.

Per frame: ``max(100 * cos(image_embedding, text_embedding), 0)`` (the CLIPScore of Hessel et
al. without its 2.5 rescale, as used for text-to-video by GODIVA / Make-A-Video); averaged over
the (valid) frames of a video, then over videos. Frames go through the open_clip model's own
evaluation transform (resize, centre crop, its mean/std), taken from the model's
``visual.preprocess_cfg``; the transform runs on tensors, so no uint8 round trip happens.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import open_clip
import torch
from open_clip.transform import PreprocessCfg
from torch import nn
from torchmetrics import Metric

__all__ = ["VideoCLIPScore", "clip_preprocess_cfg"]

_PREPROCESS_KEYS = {f.name for f in fields(PreprocessCfg)}


def clip_preprocess_cfg(model: nn.Module) -> dict[str, Any]:
    """The open_clip model's evaluation preprocessing config (size, mean, std, interpolation,
    resize_mode, ...), open_clip's defaults filling whatever the model does not set."""
    cfg = {f.name: getattr(PreprocessCfg(), f.name) for f in fields(PreprocessCfg)}
    model_cfg = open_clip.get_model_preprocess_cfg(model)
    cfg.update({k: v for k, v in model_cfg.items() if k in _PREPROCESS_KEYS and v is not None})
    return cfg


def _load_open_clip(arch: str, checkpoint: str | None) -> nn.Module:
    if arch.startswith("local-dir:"):
        # open_clip reads the config and weights from the folder itself.
        return open_clip.create_model(arch)
    if checkpoint is None:
        raise ValueError(
            f"VideoCLIPScore needs local open_clip weights for arch {arch!r}: download the "
            "checkpoint (e.g. open_clip_pytorch_model.bin of laion/CLIP-ViT-B-32-laion2B-s34B-b79K "
            "from the Hugging Face hub) and set `checkpoint: /path/to/file` in the metric's "
            "init_args, or use arch='local-dir:/path/to/folder'. Nothing is downloaded at run time."
        )
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"open_clip checkpoint not found: {checkpoint!r} (arch {arch!r})")
    return open_clip.create_model(arch, pretrained=checkpoint)


class VideoCLIPScore(Metric):
    """CLIPSIM of text-to-video samples (higher is better), on a 0-100 scale.

    ``update(videos, captions, frame_mask=None)`` takes ``videos (B, 3, T, H, W)`` in
    ``[-1, 1]``, ``B`` captions and optionally ``frame_mask (B, T)`` bool (True = valid frame,
    only those are averaged). ``compute()`` returns the mean over videos of the per-video mean
    over frames of ``max(100 * cos, 0)``.

    Args:
        arch: open_clip architecture name (``"ViT-B-32"``) or ``"local-dir:/path"``; also picks
            the tokenizer.
        checkpoint: local path of the CLIP weights for ``arch``.
        model: an already-built open_clip model (overrides ``arch``/``checkpoint``; tests).
        tokenizer: maps a list of captions to token ids ``(B, L)``; default: open_clip's
            tokenizer for ``arch``, or a SimpleTokenizer with the model's context length
            when ``model`` is given.
        frame_batch_size: frames encoded per forward pass of the image tower.
        kwargs: passed on to ``torchmetrics.Metric`` (``sync_on_compute``, ``process_group``, ...).
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    score_sum: torch.Tensor
    num_videos: torch.Tensor

    def __init__(
        self,
        arch: str = "ViT-B-32",
        checkpoint: str | None = None,
        model: nn.Module | None = None,
        tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
        frame_batch_size: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if model is None:
            model = _load_open_clip(arch, checkpoint)
            tokenizer = tokenizer or open_clip.get_tokenizer(arch)
        elif tokenizer is None:
            context_length = open_clip.get_model_tokenize_cfg(model).get("context_length", 77)
            tokenizer = open_clip.SimpleTokenizer(context_length=context_length)
        if frame_batch_size < 1:
            raise ValueError(f"frame_batch_size must be >= 1, got {frame_batch_size}")
        self.clip = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.frame_batch_size = frame_batch_size
        cfg = clip_preprocess_cfg(model)
        self.transform = open_clip.image_transform(
            cfg["size"],
            is_train=False,
            mean=cfg["mean"],
            std=cfg["std"],
            resize_mode=cfg["resize_mode"],
            interpolation=cfg["interpolation"],
            fill_color=cfg["fill_color"],
        )
        self.add_state("score_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_videos", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def train(self, mode: bool = True) -> "VideoCLIPScore":
        """Switch the metric's mode but keep the CLIP model in eval."""
        super().train(mode)
        self.clip.eval()
        return self

    def _param(self) -> torch.Tensor:
        return next(self.clip.parameters())

    @torch.no_grad()
    def frame_scores(self, videos: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """Per-frame CLIP scores.

        Args:
            videos: ``(B, 3, T, H, W)`` in ``[-1, 1]``.
            captions: ``B`` strings.

        Returns:
            ``(B, T)`` float32: ``max(100 * cos(frame, caption), 0)``.
        """
        if videos.ndim != 5 or videos.shape[1] != 3:
            raise ValueError(f"videos must be (B, 3, T, H, W); got shape {tuple(videos.shape)}")
        b, c, t, h, w = videos.shape
        if isinstance(captions, str) or len(captions) != b:
            raise ValueError(f"need one caption per video: {b} videos, captions={captions!r}")
        param = self._param()
        frames = videos.transpose(1, 2).reshape(b * t, c, h, w)  # (B*T, 3, H, W)
        frames = ((frames.float() + 1) / 2).clamp(0, 1)  # open_clip transforms expect [0, 1]
        image_emb = []
        for chunk in frames.split(self.frame_batch_size):
            pixels = self.transform(chunk.to(param.device)).to(param.dtype)  # (n, 3, S, S)
            image_emb.append(self.clip.encode_image(pixels, normalize=True).float())
        image_emb = torch.cat(image_emb).reshape(b, t, -1)  # (B, T, E)
        tokens = self.tokenizer(list(captions)).to(param.device)  # (B, L)
        text_emb = self.clip.encode_text(tokens, normalize=True).float()  # (B, E)
        cosine = torch.einsum("bte,be->bt", image_emb, text_emb)  # (B, T)
        return (100 * cosine).clamp_min(0)

    def update(
        self, videos: torch.Tensor, captions: list[str], frame_mask: torch.Tensor | None = None
    ) -> None:
        """Add videos and their captions.

        Args:
            videos: ``(B, 3, T, H, W)`` in ``[-1, 1]``.
            captions: ``B`` strings.
            frame_mask: optional ``(B, T)`` bool, True = frame counts; each video needs one.
        """
        scores = self.frame_scores(videos, captions).double()  # (B, T)
        if frame_mask is None:
            per_video = scores.mean(dim=1)
        else:
            if frame_mask.shape != scores.shape:
                raise ValueError(
                    f"frame_mask must be (B, T) = {tuple(scores.shape)}, got {tuple(frame_mask.shape)}"
                )
            mask = frame_mask.to(device=scores.device, dtype=torch.float64)
            counts = mask.sum(dim=1)
            if (counts == 0).any():
                empty = counts.eq(0).nonzero().flatten().tolist()
                raise ValueError(f"frame_mask has videos without valid frames: rows {empty}")
            per_video = (scores * mask).sum(dim=1) / counts
        self.score_sum += per_video.sum().to(self.score_sum.device)
        self.num_videos += per_video.numel()

    def compute(self) -> torch.Tensor:
        """Mean CLIPSIM over all videos seen (0-dim float64)."""
        if self.num_videos == 0:
            raise RuntimeError("VideoCLIPScore.compute() called before any update()")
        return self.score_sum / self.num_videos
