"""Image-to-video, extension and interpolation on a tiny latent model with the real causal shapes VAE:
shapes, given frames kept (exactly where pasted, through the VAE where generated), every method, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latentvid.conditioning.text import OpenCLIPTextEncoder
from latentvid.models.autoencoder import PretrainedCausalVAE
from latentvid.models.latent_diffusion import LatentDiffusion
from latentvid.nn.unet3d import UNet3D
from latentvid.pipelines.frames import (
    FrameOptions,
    default_overlap,
    extend_video,
    given_prefix,
    image_to_video,
    interpolate_video,
    sample_with_frames,
)

VAE = Path(__file__).resolve().parents[2] / "data" / "vae" / "shapes-vae.ckpt"
CAPTION = ["a red circle moving left"]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(frame_conditioning: bool) -> LatentDiffusion:
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="RANDOM"):
        text = OpenCLIPTextEncoder(random_width=32, random_layers=1, random_heads=2, max_length=16)
    unet = UNet3D(in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                  attention_levels=(1,), head_dim=16, context_dim=32, norm_groups=4,
                  frame_conditioning=frame_conditioning)
    with torch.no_grad():  # as after training: zero-initialised layers open, so frames mix
        for p in unet.parameters():
            if p.abs().sum() == 0:
                p.normal_(std=0.1)
    return LatentDiffusion(unet, text, first_stage=PretrainedCausalVAE(str(VAE)), sample_steps=3).eval()


@pytest.fixture(scope="module")
def models() -> dict[str, LatentDiffusion]:
    return {"conditioned": tiny(True), "plain": tiny(False)}


def clip(t: int = 9, seed: int = 0) -> torch.Tensor:
    """(1, 3, t, 32, 32): a shapes clip, so the VAE reproduces it well."""
    import numpy as np

    from latentvid.data.shapes import render_clip
    from latentvid.data.video import from_uint8

    frames = render_clip("red", "circle", "left", num_frames=t, size=32, rng=np.random.default_rng(seed))
    return from_uint8(frames)[None]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4.0 / (a - b).pow(2).mean()))


def test_given_prefix_counts_whole_latent_frames():
    as_mask = lambda bits: torch.tensor([c == "1" for c in bits])  # noqa: E731
    assert given_prefix(as_mask("100000000"), 4) == 1
    assert given_prefix(as_mask("111111000"), 4) == 5  # 6 given: only 5 make whole latent frames
    assert given_prefix(as_mask("101010101"), 4) == 1
    assert given_prefix(as_mask("011111111"), 4) == 0


@pytest.mark.parametrize("kind,method", [("conditioned", "trained"), ("conditioned", "guidance"),
                                         ("plain", "replacement"), ("plain", "guidance")])
def test_image_to_video_starts_from_the_image(models, kind, method):
    model = models[kind]
    image = clip()[:, :, 0]
    opts = FrameOptions(method=method, weight=3.0, guidance=2.0)
    video = image_to_video(model, image, CAPTION, 9, opts, torch.Generator().manual_seed(0))
    assert video.shape == (1, 3, 9, 32, 32)
    # the image is latent frame 0 exactly, so frame 0 is the VAE's reconstruction of the image
    with torch.no_grad():
        recon = model.first_stage.decode(model.first_stage.encode(image[:, :, None]))[:, :, 0].clamp(-1, 1)
    torch.testing.assert_close(video[:, :, 0], recon, atol=1e-4, rtol=0)
    assert psnr(video[:, :, 0], image) > 20.0


@pytest.mark.parametrize("method", ["trained", "replacement", "guidance"])
def test_extension_keeps_the_clip_and_conditions_each_window_on_the_last_frames(models, method, monkeypatch):
    model = models["conditioned"]
    given = clip(9)
    assert default_overlap(model, 9) == 5
    calls = []
    import latentvid.pipelines.frames as frames

    real = frames.sample_with_frames

    def spy(m, captions, pixels, mask, options, generator):
        calls.append((pixels.clone(), mask.clone()))
        return real(m, captions, pixels, mask, options, generator)

    monkeypatch.setattr(frames, "sample_with_frames", spy)
    out = extend_video(model, given, CAPTION, 17, window=9, options=FrameOptions(method=method, weight=2.0),
                       generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 17, 32, 32)
    assert torch.equal(out[:, :, :9], given)  # the input frames, as given
    assert len(calls) == 2  # 9 -> 13 -> 17: one new latent frame (4 frames) per window
    for i, (pixels, mask) in enumerate(calls):
        assert mask.tolist() == [True] * 5 + [False] * 4
        torch.testing.assert_close(pixels[:, :, :5], out[:, :, 4 * i + 4: 4 * i + 9])  # the last 5 frames so far


def test_keyframe_extension_extends_every_sth_frame_then_fills_in(models, monkeypatch):
    model = models["conditioned"]
    given = clip(17)
    calls = []
    import latentvid.pipelines.frames as frames

    real = frames.sample_with_frames

    def spy(m, captions, pixels, mask, options, generator):
        out = real(m, captions, pixels, mask, options, generator)
        calls.append((pixels.clone(), mask.clone(), options.fps, out))
        return out

    monkeypatch.setattr(frames, "sample_with_frames", spy)
    out = extend_video(model, given, CAPTION, 33, window=9, options=FrameOptions(method="trained", fps=8.0),
                       generator=torch.Generator().manual_seed(0), stride=4)
    assert out.shape == (1, 3, 33, 32, 32)
    assert torch.equal(out[:, :, :17], given)  # the input frames, as given
    # keyframes 0, 4, ..., 16 (5, the overlap) -> 9 keyframes (frame 32) in one window at 8 / 4 fps
    (keys_in, keys_mask, keys_fps, keys_out), *fills = calls
    assert keys_fps == 2.0 and keys_mask.tolist() == [True] * 5 + [False] * 4
    torch.testing.assert_close(keys_in[:, :, :5], given[:, :, ::4])
    # then x4 interpolation from the clip's last frame over the new keyframes, a window (9 frames, 3
    # keyframes) at a time: frames 16-24, then 24-32; the output keeps the keyframes
    tail = torch.cat([given[:, :, 16:17], keys_out[:, :, 5:].to(given)], 2)  # keyframes 16, 20, ..., 32
    assert len(fills) == 2
    for i, (fill_in, fill_mask, fill_fps, _) in enumerate(fills):
        assert fill_fps == 8.0 and fill_mask.tolist() == [k % 4 == 0 for k in range(9)]
        torch.testing.assert_close(fill_in[:, :, ::4], tail[:, :, 2 * i: 2 * i + 3].to(fill_in))
    torch.testing.assert_close(out[:, :, 16::4], tail.to(out))
    # 3 new keyframes do not split into whole 3-keyframe pieces: the last piece overlaps the first and only
    # its frames after keyframe 2 are kept, so every keyframe still lands on its frame
    calls.clear()
    out = extend_video(model, given, CAPTION, 29, window=9, options=FrameOptions(method="trained"),
                       generator=torch.Generator().manual_seed(0), stride=4)
    (_, _, _, keys_out), *fills = calls
    tail = torch.cat([given[:, :, 16:17], keys_out[:, :, 5:8].to(given)], 2)  # keyframes 16, 20, 24, 28
    assert out.shape == (1, 3, 29, 32, 32) and len(fills) == 2
    torch.testing.assert_close(fills[1][0][:, :, ::4], tail[:, :, 1:].to(fills[1][0]))
    torch.testing.assert_close(out[:, :, 16::4], tail.to(out))
    # the keyframes end at the clip's last frame; too few of them for the overlap is one line naming both
    with pytest.raises(ValueError, match="9 frames give 3 keyframes at stride 4.*at least 17 frames"):
        extend_video(model, clip(9), CAPTION, 33, window=9, stride=4)
    with pytest.raises(ValueError, match="stride = 0"):
        extend_video(model, clip(9), CAPTION, 33, window=9, stride=0)


@pytest.mark.parametrize("kind,method", [("conditioned", "trained"), ("plain", "replacement"), ("plain", "guidance")])
def test_interpolation_keeps_the_given_frames_and_fills_between(models, kind, method):
    model = models[kind]
    given = clip(5, seed=1)
    opts = FrameOptions(method=method, weight=3.0, steps=8)
    out = interpolate_video(model, given, CAPTION, 2, opts, torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 9, 32, 32)
    assert torch.equal(out[:, :, ::2], given)
    assert torch.isfinite(out).all()
    # the generated clip itself (before the given frames are pasted) is pulled towards them: closer than
    # the same sampler without any given frame
    pixels = torch.zeros(1, 3, 9, 32, 32)
    pixels[:, :, ::2] = given
    mask = torch.zeros(9, dtype=torch.bool)
    mask[::2] = True
    raw = sample_with_frames(model, CAPTION, pixels, mask, opts, torch.Generator().manual_seed(0))
    free = sample_with_frames(model, CAPTION, pixels, torch.zeros(9, dtype=torch.bool) | (torch.arange(9) == 0),
                              opts, torch.Generator().manual_seed(0))
    near, far = psnr(raw[:, :, 2::2], given[:, :, 1:]), psnr(free[:, :, 2::2], given[:, :, 1:])
    assert near > far + 1.0


def test_bad_inputs_name_the_value(models):
    model = models["conditioned"]
    with pytest.raises(ValueError, match="--frames = 8 does not fit the VAE"):
        image_to_video(model, clip()[:, :, 0], CAPTION, 8)
    with pytest.raises(ValueError, match="30x30"):
        image_to_video(model, torch.zeros(1, 3, 30, 30), CAPTION, 9)
    with pytest.raises(ValueError, match=r"interpolated length \(4 - 1\) x 2 \+ 1"):
        interpolate_video(model, clip(4), CAPTION, 2)
    with pytest.raises(ValueError, match="--factor = 1"):
        interpolate_video(model, clip(5), CAPTION, 1)
    with pytest.raises(ValueError, match="must exceed"):
        extend_video(model, clip(9), CAPTION, 9, window=9)
    with pytest.raises(ValueError, match="overlap = 4 does not fit"):
        extend_video(model, clip(9), CAPTION, 17, window=9, overlap=4)
    with pytest.raises(ValueError, match="fewer than the overlap"):
        extend_video(model, clip(1), CAPTION, 17, window=9)
    with pytest.raises(ValueError, match="frame-conditioned"):
        image_to_video(models["plain"], clip()[:, :, 0], CAPTION, 9, FrameOptions(method="trained"))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*RANDOMLY INITIALISED")
def test_the_cascade_chains_the_frames_functions(tiny_cascade, tmp_path):
    import subprocess
    import sys

    from latentvid.data.video import video_info, write_png
    from latentvid.pipelines.cascade import ChainError, CascadePipeline

    config = {"base": {"ckpt": str(tiny_cascade["base"]), "steps": 2, "guidance": 2.0},
              "stages": [{"name": "tsr", "ckpt": str(tiny_cascade["tsr"]), "steps": 2},
                         {"name": "ssr", "ckpt": str(tiny_cascade["ssr"]), "steps": 2}]}
    pipe = CascadePipeline.from_config(config)
    image = torch.rand(1, 3, 8, 8) * 2 - 1
    opts = FrameOptions(steps=2, weight=2.0)
    base = image_to_video(pipe.base, image, CAPTION, 2, opts, torch.Generator().manual_seed(0))
    assert base.shape == (1, 3, 2, 8, 8)
    torch.testing.assert_close(base[:, :, 0], image.clamp(-1, 1))  # pixel space: the image itself
    final = pipe.upsample(base, CAPTION, seed=0, progress=False)
    assert final.shape == (1, 3, 4, 16, 16)  # TSR x2 frames, SSR x2 pixels
    longer = extend_video(pipe.base, base, CAPTION, 3, window=2, overlap=1, options=opts)
    assert longer.shape == (1, 3, 3, 8, 8)
    with pytest.raises(ChainError, match="expects 2 input frames"):  # the TSR was trained on 2 frames
        pipe.upsample(longer, CAPTION, progress=False)
    # and through the tool: --cascade with --image
    import yaml

    (tmp_path / "cascade.yaml").write_text(yaml.safe_dump(config))
    write_png(tmp_path / "first.png", image[0])
    out = tmp_path / "i2v.mp4"
    res = subprocess.run([sys.executable, str(VAE.parents[2] / "tools" / "sample.py"), "--cascade",
                          str(tmp_path / "cascade.yaml"), "--image", str(tmp_path / "first.png"), "--prompt", CAPTION[0],
                          "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    info = video_info(out)
    assert (info["num_frames"], info["height"], info["width"]) == (4, 16, 16) and info["fps"] == pytest.approx(16.0)


def test_trained_method_imposes_frames_past_the_latent_prefix_by_replacement(models, monkeypatch):
    # the frame input takes whole latent frames only; the other given frames (interpolation: every
    # other frame) are imposed by decode -> replace -> encode, which beat decoder guidance there
    # (README: 23.8 against 16.9 dB on shapes)
    import latentvid.pipelines.frames as frames

    seen = []
    real = frames.pixel_replacement

    def spy(denoise, model, pixels, mask):
        seen.append(mask.clone())
        return real(denoise, model, pixels, mask)

    monkeypatch.setattr(frames, "pixel_replacement", spy)
    guard = _forbid_reconstruction(frames.known_frames_denoiser)
    monkeypatch.setattr(frames, "known_frames_denoiser", guard)
    out = interpolate_video(models["conditioned"], clip(5, seed=2), CAPTION, 2, FrameOptions(method="trained", steps=4),
                            torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 9, 32, 32) and guard.calls  # the prefix is still kept by latent replacement
    assert len(seen) == 1 and seen[0].tolist() == [False, False, True, False, True, False, True, False, True]


def _forbid_reconstruction(real):
    def wrapper(*args, **kwargs):
        assert kwargs.get("mode") != "reconstruction", "trained interpolation must not guide through the decoder"
        wrapper.calls += 1
        return real(*args, **kwargs)

    wrapper.calls = 0
    return wrapper
