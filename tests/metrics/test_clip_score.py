"""Tests for latentvid/metrics/clip_score.py against a by-hand open_clip computation."""

from __future__ import annotations

import copy
import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from latentvid.metrics.clip_score import VideoCLIPScore

IMAGE_SIZE = 32
CONTEXT = 16
# Deliberately not OpenAI's statistics, so the test sees whether the model's own are used.
PREPROCESS = {
    "size": IMAGE_SIZE,
    "mode": "RGB",
    "mean": (0.3, 0.4, 0.5),
    "std": (0.2, 0.25, 0.3),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
    "fill_color": 0,
}
MODEL_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"layers": 1, "width": 32, "head_width": 16, "patch_size": 8, "image_size": IMAGE_SIZE},
    "text_cfg": {"context_length": CONTEXT, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CAPTIONS = ["a red circle moving left", "a blue square", "a white triangle moving up"]


@pytest.fixture(scope="module")
def tiny_clip() -> open_clip.CLIP:
    torch.manual_seed(0)
    model = open_clip.CLIP(**MODEL_CFG).eval()
    open_clip.set_model_preprocess_cfg(model, PREPROCESS)
    return model


def uint8_videos(b: int, t: int, h: int, w: int, seed: int) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 clips with some structure (random blocks), for PIL and for us."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 256, (b, t, h // 4 + 1, w // 4 + 1, 3), generator=gen, dtype=torch.uint8)
    return coarse.repeat_interleave(4, 2).repeat_interleave(4, 3)[:, :, :h, :w]


def to_model_input(clips_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> (B, 3, T, H, W) in [-1, 1]."""
    return clips_u8.permute(0, 4, 1, 2, 3).float() / 127.5 - 1


def manual_frame_scores(model, clips_u8: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """open_clip's documented route: PIL frames -> its eval transform -> encode; cos x 100, clamp."""
    transform = open_clip.image_transform(
        PREPROCESS["size"], is_train=False, mean=PREPROCESS["mean"], std=PREPROCESS["std"]
    )
    tokenizer = open_clip.SimpleTokenizer(context_length=CONTEXT)
    scores = []
    with torch.no_grad():
        text = model.encode_text(tokenizer(captions))
        text = text / text.norm(dim=-1, keepdim=True)
        for clip, t_emb in zip(clips_u8, text):
            frames = torch.stack([transform(Image.fromarray(f.numpy())) for f in clip])
            img = model.encode_image(frames)
            img = img / img.norm(dim=-1, keepdim=True)
            scores.append((100 * img @ t_emb).clamp(min=0))
    return torch.stack(scores)  # (B, T)


def test_matches_manual_open_clip_computation(tiny_clip) -> None:
    clips = uint8_videos(3, 5, IMAGE_SIZE, IMAGE_SIZE, seed=1)
    expected = manual_frame_scores(tiny_clip, clips, CAPTIONS)
    assert (expected > 0).all()

    metric = VideoCLIPScore(model=tiny_clip, frame_batch_size=4)
    got = metric.frame_scores(to_model_input(clips), CAPTIONS)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    metric.update(to_model_input(clips), CAPTIONS)
    assert metric.compute().item() == pytest.approx(expected.mean(dim=1).mean().item(), abs=1e-4)


def test_negative_similarity_is_clamped_to_zero(tiny_clip) -> None:
    # Negating the final text LayerNorm (the projection has no bias) flips every text embedding,
    # so every cosine becomes negative and CLIPSIM must be exactly 0.
    flipped = copy.deepcopy(tiny_clip)
    with torch.no_grad():
        flipped.ln_final.weight.neg_()
        flipped.ln_final.bias.neg_()
    videos = to_model_input(uint8_videos(3, 2, IMAGE_SIZE, IMAGE_SIZE, seed=5))
    positive = VideoCLIPScore(model=tiny_clip).frame_scores(videos, CAPTIONS)
    assert (positive > 0).all()
    metric = VideoCLIPScore(model=flipped)
    metric.update(videos, CAPTIONS)
    assert metric.compute().item() == 0.0


def test_resizing_follows_open_clip_transform(tiny_clip) -> None:
    # Non-square 48 x 40 frames: shortest side -> 32, then a centre crop, as open_clip does on
    # PIL images. PIL's and torch's bicubic kernels differ slightly, hence the looser bound.
    clips = uint8_videos(3, 4, 48, 40, seed=2)
    expected = manual_frame_scores(tiny_clip, clips, CAPTIONS)
    got = VideoCLIPScore(model=tiny_clip).frame_scores(to_model_input(clips), CAPTIONS)
    torch.testing.assert_close(got, expected, rtol=0, atol=0.3)


def test_frame_mask_and_accumulation(tiny_clip) -> None:
    clips = uint8_videos(3, 4, IMAGE_SIZE, IMAGE_SIZE, seed=3)
    videos = to_model_input(clips)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    expected = manual_frame_scores(tiny_clip, clips, CAPTIONS)
    per_video = torch.stack([expected[i][mask[i]].mean() for i in range(3)])

    metric = VideoCLIPScore(model=tiny_clip)
    metric.update(videos[:1], CAPTIONS[:1], frame_mask=mask[:1])
    metric.update(videos[1:], CAPTIONS[1:], frame_mask=mask[1:])
    assert metric.compute().item() == pytest.approx(per_video.mean().item(), abs=1e-4)

    with pytest.raises(ValueError, match="without valid frames"):
        metric.update(videos[:1], CAPTIONS[:1], frame_mask=torch.zeros(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="one caption per video"):
        metric.update(videos, CAPTIONS[:2])


def test_loads_local_open_clip_folder(tiny_clip, tmp_path) -> None:
    # Round trip through real files: open_clip's local-dir layout (config JSON + weights).
    folder = tmp_path / "tiny-clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS})
    )
    torch.save(tiny_clip.state_dict(), folder / "open_clip_pytorch_model.bin")
    clips = uint8_videos(2, 3, IMAGE_SIZE, IMAGE_SIZE, seed=4)
    loaded = VideoCLIPScore(arch=f"local-dir:{folder}")
    direct = VideoCLIPScore(model=tiny_clip)
    torch.testing.assert_close(
        loaded.frame_scores(to_model_input(clips), CAPTIONS[:2]),
        direct.frame_scores(to_model_input(clips), CAPTIONS[:2]),
    )


def test_missing_weights_are_explained(tmp_path) -> None:
    with pytest.raises(ValueError, match="checkpoint"):
        VideoCLIPScore(arch="ViT-B-32")
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        VideoCLIPScore(arch="ViT-B-32", checkpoint=str(tmp_path / "nope.bin"))
