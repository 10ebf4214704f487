"""SSR / TSR stages: the conditioning the U-Net sees (against PIL and closed forms), conditioning
augmentation reaching the network, same-noise initialisation, exact chunked sampling, training."""

import numpy as np
import pytest
import torch
from PIL import Image

from latentvid.conditioning.text import OpenCLIPTextEncoder
from latentvid.diffusion import ConditioningAugmentation
from latentvid.diffusion.schedule import CosineSchedule, cosine_t_from_logsnr
from latentvid.models.super_resolution import (
    SpatialSuperResolution,
    TemporalSuperResolution,
    chunked_denoiser,
    downsample_space,
    expand_frames,
    temporal_radius,
    time_windows,
    upsample_space,
)
from latentvid.nn.unet3d import UNet3D

from .test_latent_diffusion import loss_before_and_after, shapes_batch


def tiny_unet(in_channels: int, context_dim: int | None = None, temporal_attention: bool = False) -> UNet3D:
    torch.manual_seed(0)
    return UNet3D(in_channels=in_channels, out_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                  attention_levels=(), head_dim=8, context_dim=context_dim, temporal_attention=temporal_attention,
                  fps_conditioning=False, num_extra_conditions=1, norm_groups=4)


def ssr(**kwargs) -> SpatialSuperResolution:
    return SpatialSuperResolution(tiny_unet(6), None, sample_steps=3, clip_sample=1.0, caption_dropout=0.0, **kwargs)


def tsr(fill: str = "repeat", **kwargs) -> TemporalSuperResolution:
    return TemporalSuperResolution(tiny_unet(7 if fill == "blank" else 6), None, fill=fill, sample_steps=3,
                                   clip_sample=1.0, caption_dropout=0.0, **kwargs)


def randomize(model) -> None:
    """Break the zero-init output and identity-init temporal convs, so every input matters."""
    g = torch.Generator().manual_seed(5)
    for name, p in model.unet.named_parameters():
        if "temporal" in name or "out_conv" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.3


def unet_inputs(model) -> dict:
    """Record what the U-Net receives: its input x and its extra conditions."""
    seen: dict = {}

    def hook(module, args, kwargs):
        seen["x"], seen["extra"] = args[0].detach().clone(), kwargs["extra"].detach().clone()

    model.unet.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


# ---- the transforms -------------------------------------------------------------------------------


def test_antialiased_downsampling_matches_pil_bilinear():
    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, 3, 3, 16, 12, generator=g)
    ours = downsample_space(video, 2)
    assert ours.shape == (2, 3, 3, 8, 6)
    ref = np.empty(ours.shape, dtype=np.float32)
    for b in range(2):
        for c in range(3):
            for t in range(3):
                img = Image.fromarray(video[b, c, t].numpy().astype(np.float32), mode="F")
                ref[b, c, t] = np.asarray(img.resize((6, 8), Image.BILINEAR))
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5)
    with pytest.raises(ValueError, match="scale_factor 3"):
        downsample_space(video, 3)


def test_bilinear_upsampling_is_the_half_pixel_closed_form():
    g = torch.Generator().manual_seed(1)
    low = torch.rand(1, 1, 2, 4, 4, generator=g)
    ours = upsample_space(low, (8, 8), "bilinear").numpy()
    x = low.numpy()

    def up1d(a: np.ndarray, axis: int) -> np.ndarray:
        # output 2i samples input i - 1/4, output 2i + 1 samples i + 1/4 (edges clamp)
        prev = np.concatenate([np.take(a, [0], axis), np.take(a, range(a.shape[axis] - 1), axis)], axis)
        nxt = np.concatenate([np.take(a, range(1, a.shape[axis]), axis), np.take(a, [-1], axis)], axis)
        even, odd = 0.75 * a + 0.25 * prev, 0.75 * a + 0.25 * nxt
        return np.stack([even, odd], axis + 1).reshape(*a.shape[:axis], -1, *a.shape[axis + 1:])

    np.testing.assert_allclose(ours, up1d(up1d(x, 3), 4), atol=1e-6)
    assert upsample_space(low, (8, 8), "bicubic").shape == (1, 1, 2, 8, 8)
    with pytest.raises(ValueError, match="upsample_mode"):
        upsample_space(low, (8, 8), "nearest")


def test_expand_frames_repeat_and_blank_modes():
    low = torch.arange(3.0).reshape(1, 1, 3, 1, 1).expand(1, 3, 3, 2, 2)  # frame i holds the value i
    rep = expand_frames(low, 2, "repeat")
    assert rep.shape == (1, 3, 6, 2, 2)
    assert rep[0, 0, :, 0, 0].tolist() == [0, 0, 1, 1, 2, 2]
    blank = expand_frames(low + 1, 2, "blank")
    assert blank.shape == (1, 4, 6, 2, 2)
    assert blank[0, 0, :, 0, 0].tolist() == [1, 0, 2, 0, 3, 0]
    assert blank[0, 3, :, 0, 0].tolist() == [1, 0, 1, 0, 1, 0]  # the mask channel


# ---- what the U-Net sees ------------------------------------------------------------------------


def test_ssr_concatenates_the_upsampled_low_resolution_clip():
    model = ssr(augmentation=ConditioningAugmentation(train_min=0.0, train_max=0.0)).train()
    seen = unet_inputs(model)
    batch = shapes_batch(n=2, t=3, size=16)
    model.diffusion_loss(batch, generator=torch.Generator().manual_seed(0))
    assert seen["x"].shape == (2, 6, 3, 16, 16)
    ref = torch.nn.functional.interpolate(
        torch.nn.functional.interpolate(batch["video"].transpose(1, 2).reshape(6, 3, 16, 16), size=(8, 8),
                                        mode="bilinear", antialias=True),
        size=(16, 16), mode="bicubic").reshape(2, 3, 3, 16, 16).transpose(1, 2)
    # s = 0 is logSNR 20: sigma = 5e-5
    torch.testing.assert_close(seen["x"][:, 3:], ref, atol=1e-3, rtol=0)
    assert model.trained_shape == (3, 16, 16)


@pytest.mark.parametrize("fill", ["repeat", "blank"])
def test_tsr_concatenates_the_low_frame_rate_clip(fill):
    model = tsr(fill, augmentation=ConditioningAugmentation(train_min=0.0, train_max=0.0)).train()
    seen = unet_inputs(model)
    batch = shapes_batch(n=2, t=6, size=16)
    model.diffusion_loss(batch, generator=torch.Generator().manual_seed(0))
    video, cond = batch["video"], seen["x"][:, 3:]
    assert seen["x"].shape == (2, 6 if fill == "repeat" else 7, 6, 16, 16)
    for j in range(6):
        if fill == "repeat":  # frame j carries input frame j // 2 = clip frame 2 (j // 2)
            torch.testing.assert_close(cond[:, :, j], video[:, :, 2 * (j // 2)], atol=1e-3, rtol=0)
        elif j % 2 == 0:
            torch.testing.assert_close(cond[:, :3, j], video[:, :, j], atol=1e-3, rtol=0)
            assert bool((cond[:, 3, j] == 1).all())
        else:
            assert bool((cond[:, :, j] == 0).all())
    with pytest.raises(ValueError, match="clip length 5 is not divisible by the TSR frame_factor 2"):
        model.diffusion_loss(shapes_batch(n=2, t=5, size=16))


def test_training_levels_and_sampling_level_reach_the_network():
    schedule = CosineSchedule()
    model = ssr(augmentation=ConditioningAugmentation(train_min=0.2, train_max=0.3, sample_level=0.7)).train()
    seen = unet_inputs(model)
    batch = shapes_batch(n=4, t=2, size=16)
    model.diffusion_loss(batch, generator=torch.Generator().manual_seed(0))
    s = cosine_t_from_logsnr(seen["extra"][:, 0].double())
    assert seen["extra"].shape == (4, 1) and bool(((s > 0.2 - 1e-6) & (s < 0.3 + 1e-6)).all())
    assert len(set(s.tolist())) == 4  # drawn per sample
    # the noise in the conditioning is the one the level says: cond = alpha up + sigma eps
    up = upsample_space(downsample_space(batch["video"], 2), (16, 16), "bicubic")
    lam = seen["extra"][:, 0]
    alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
    eps = (seen["x"][:, 3:] - alpha[:, None, None, None, None] * up) / sigma[:, None, None, None, None]
    assert abs(eps.mean().item()) < 0.05 and abs(eps.std().item() - 1) < 0.05
    # sampling: the fixed level, or the one asked for
    model.eval()
    low = downsample_space(batch["video"][:1], 2)
    model.sample(low, steps=1)
    torch.testing.assert_close(seen["extra"], schedule.logsnr(torch.tensor([[0.7]])))
    model.sample(low, steps=1, aug_level=0.1)
    torch.testing.assert_close(seen["extra"], schedule.logsnr(torch.tensor([[0.1]])))


def test_the_network_output_depends_on_the_augmentation_level():
    model = ssr().eval()
    randomize(model)
    g = torch.Generator().manual_seed(0)
    z, cond = torch.randn(2, 3, 2, 16, 16, generator=g), torch.randn(2, 3, 2, 16, 16, generator=g)
    logsnr = torch.zeros(2)
    a = model(z, logsnr, cond=cond, aug_logsnr=torch.full((2,), 5.0))
    b = model(z, logsnr, cond=cond, aug_logsnr=torch.full((2,), -5.0))
    assert (a - b).abs().mean() > 1e-3


@pytest.mark.parametrize("same_noise", [True, False])
def test_same_noise_initialisation(same_noise, monkeypatch):
    model = ssr().eval()
    starts = []
    run = model.run_sampler
    monkeypatch.setattr(model, "run_sampler", lambda d, z, *a, **k: starts.append(z.clone()) or run(d, z, *a, **k))
    low = torch.rand(2, 3, 5, 8, 8) * 2 - 1
    model.sample(low, steps=2, same_noise=same_noise, generator=torch.Generator().manual_seed(0))
    z = starts[0]
    assert z.shape == (2, 3, 5, 16, 16)
    identical = all(torch.equal(z[:, :, k], z[:, :, 0]) for k in range(5))
    assert identical == same_noise
    assert not torch.equal(z[0], z[1])  # still different across videos
    assert abs(z.std().item() - 1) < 0.1


# ---- chunked sampling ---------------------------------------------------------------------------


def test_time_windows_cover_every_frame_once():
    windows = time_windows(10, 4, 2)
    assert windows == [(0, 6, 0, 4), (2, 10, 4, 8), (6, 10, 8, 10)]


def test_chunked_sampling_equals_whole_clip_sampling():
    model = tsr("repeat").eval()
    randomize(model)  # temporal convs that really mix frames
    radius = temporal_radius(model.unet)
    assert radius == 2 * (2 + 2 + 4)  # ResBlocks: 2 down, 2 middle, 4 up; two kernel-3 temporal convs each
    low = torch.rand(1, 3, 16, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    whole = model.sample(low, steps=2, generator=torch.Generator().manual_seed(1))
    chunked = model.sample(low, steps=2, chunk_frames=4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
    # guard: without enough context frames the chunks do differ
    cond = torch.randn(1, 3, 32, 8, 8)
    full = lambda lo, hi: lambda z, lam: model.denoise(z, lam, None, None, cond=cond[:, :, lo:hi],  # noqa: E731
                                                       aug_logsnr=torch.zeros(1))
    z = torch.randn(1, 3, 32, 8, 8)
    ref = full(0, 32)(z, torch.zeros(1))
    assert (chunked_denoiser(full, 32, 4, 0)(z, torch.zeros(1)) - ref).abs().max() > 1e-3
    torch.testing.assert_close(chunked_denoiser(full, 32, 4, radius)(z, torch.zeros(1)), ref, atol=1e-5, rtol=0)


def test_chunking_needs_a_unet_without_temporal_attention():
    model = SpatialSuperResolution(tiny_unet(6, temporal_attention=True), None, sample_steps=2)
    assert temporal_radius(model.unet) is None
    with pytest.raises(ValueError, match="temporal attention"):
        model.sample(torch.zeros(1, 3, 4, 8, 8), chunk_frames=2)


# ---- wiring, text, training ---------------------------------------------------------------------


def test_mismatched_configs_fail_at_construction():
    with pytest.raises(ValueError, match="in_channels=6 but a TSR stage feeds 3 video \\+ 4"):
        TemporalSuperResolution(tiny_unet(6), None, fill="blank")
    with pytest.raises(ValueError, match="num_extra_conditions"):
        SpatialSuperResolution(UNet3D(in_channels=6, model_channels=8, channel_mult=(1,), attention_levels=(),
                                      head_dim=8, context_dim=None, norm_groups=4), None)
    with pytest.raises(ValueError, match="text_encoder and unet.context_dim"):
        SpatialSuperResolution(tiny_unet(6, context_dim=32), None)
    with pytest.raises(ValueError, match="sample from a video"):
        ssr().sample(["a red circle"])


def test_an_ssr_stage_with_text_uses_the_caption():
    with pytest.warns(UserWarning, match="RANDOM"):
        text = OpenCLIPTextEncoder(random_width=32, random_layers=1, random_heads=2, max_length=16)
    model = SpatialSuperResolution(tiny_unet(6, context_dim=32), text, sample_steps=2, clip_sample=1.0).eval()
    randomize(model)
    low = torch.rand(1, 3, 2, 8, 8) * 2 - 1
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = model.sample(low, ["a red circle"], generator=g(), guidance_scale=1.0)
    b = model.sample(low, ["a blue square"], generator=g(), guidance_scale=1.0)
    assert a.shape == (1, 3, 2, 16, 16) and not torch.equal(a, b)


def test_trained_shape_survives_a_checkpoint_round_trip():
    model = tsr()
    model.trained_shape = (18, 32, 32)
    ckpt = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(ckpt)
    fresh = tsr()
    fresh.on_load_checkpoint(ckpt)
    assert fresh.expected_input() == (9, 32, 32) and fresh.output_shape((9, 32, 32)) == (18, 32, 32)
    fresh_ssr = ssr()
    fresh_ssr.on_load_checkpoint({"sr_trained_shape": [4, 64, 64]})
    assert fresh_ssr.expected_input() == (None, 32, 32) and fresh_ssr.output_shape((9, 32, 32)) == (9, 64, 64)


@pytest.mark.parametrize("make", [ssr, lambda: tsr("blank")], ids=["ssr", "tsr_blank"])
def test_a_few_training_steps_reduce_the_loss(make):
    torch.manual_seed(0)
    model = make()
    model.hparams.lr, model.hparams.warmup_steps = 3e-3, 1
    before, after = loss_before_and_after(model, shapes_batch(n=4, t=4, size=16), steps=40, eval_draws=3)
    # measured: SSR 0.82 -> 0.54, TSR (blank) 0.82 -> 0.47 after 40 steps
    assert after < 0.75 * before, f"loss {before:.4f} -> {after:.4f}"


# ---- residual mode ------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda **k: ssr(**k), lambda **k: tsr("blank", **k)], ids=["ssr", "tsr_blank"])
def test_residual_mode_diffuses_the_scaled_residual_over_the_plain_upsampling(make):
    clean = ConditioningAugmentation(train_min=0.0, train_max=0.0)  # s = 0: sigma = 5e-5
    model = make(residual_scale=4.0, augmentation=clean).train()
    batch = shapes_batch(n=2, t=4, size=16)
    target, extra = model.conditioning(batch, batch["video"], batch["frame_mask"], torch.Generator().manual_seed(0))
    if isinstance(model, SpatialSuperResolution):
        plain = upsample_space(downsample_space(batch["video"], 2), (16, 16), "bicubic")
    else:
        plain = batch["video"][:, :, [0, 0, 2, 2]]  # frames repeated
    torch.testing.assert_close(target, 4.0 * (batch["video"] - plain), atol=2e-3, rtol=0)
    assert extra["cond"].shape[2:] == batch["video"].shape[2:]


def test_residual_mode_removes_the_augmentation_noise_it_is_shown():
    # the reference is the augmented input: the residual target holds minus that noise, so the
    # model learns to clean up its input (the previous stage's errors at sampling time)
    noisy = ConditioningAugmentation(train_min=0.5, train_max=0.5)
    model = ssr(residual_scale=1.0, augmentation=noisy).train()
    batch = shapes_batch(n=2, t=2, size=16)
    target, extra = model.conditioning(batch, batch["video"], batch["frame_mask"], torch.Generator().manual_seed(0))
    torch.testing.assert_close(target, batch["video"] - extra["cond"], atol=1e-6, rtol=0)
    clean = upsample_space(downsample_space(batch["video"], 2), (16, 16), "bicubic")
    alpha, sigma = np.cos(np.pi / 4), np.sin(np.pi / 4)  # the cosine schedule at s = 1/2
    assert abs((extra["cond"] - alpha * clean).std().item() - sigma) < 0.03


def test_residual_mode_starts_from_the_plain_upsampling():
    # an untrained x0-predicting network outputs zero: a zero residual, so the sample IS the
    # bicubic upsampling (clipped to [-1, 1]), whatever the noise
    model = SpatialSuperResolution(tiny_unet(6), None, target="x0", residual_scale=4.0, sample_steps=3,
                                   clip_sample=1.0).eval()
    low = torch.rand(2, 3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2.4 - 1.2  # overshoots too
    out = model.sample(low, aug_level=0.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, upsample_space(low, (16, 16), "bicubic").clamp(-1, 1), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="residual_scale"):
        SpatialSuperResolution(tiny_unet(6), None, residual_scale=0.0)
