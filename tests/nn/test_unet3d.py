"""Tests of latentvid/nn/unet3d.py: space-time factorization, frame masks, checkpointing, shapes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import latentvid.nn.unet3d as unet_mod
from latentvid.nn.attention import TemporalAttention
from latentvid.nn.layers import PseudoConv3d
from latentvid.nn.unet3d import UNet3D

B, C, T, S = 2, 3, 4, 8  # batch, channels, frames, pixels
CTX_LEN, CTX_DIM = 5, 12


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tensors here are tiny: extra threads cost more in sync than they save (far more on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_unet(**overrides) -> UNet3D:
    kwargs = dict(
        in_channels=C,
        out_channels=C,
        model_channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_levels=(1,),
        head_dim=8,
        context_dim=CTX_DIM,
        max_temporal_distance=2,
        norm_groups=4,
    )
    kwargs.update(overrides)
    model = UNet3D(**kwargs)
    with torch.no_grad():  # the output conv starts at zero; make it non-trivial so outputs say something
        nn.init.normal_(model.out_conv.weight, std=0.2)
        nn.init.normal_(model.out_conv.bias, std=0.2)
    return model.eval()


def randomise_temporal(model: nn.Module) -> None:
    """Make every temporal layer active (non-identity conv, non-zero attention output, position bias)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, PseudoConv3d) and m.temporal is not None:
                nn.init.normal_(m.temporal.weight, std=0.2)
                nn.init.normal_(m.temporal.bias, std=0.2)
            elif isinstance(m, TemporalAttention):
                nn.init.normal_(m.attn.to_out.weight, std=0.3)
                nn.init.normal_(m.attn.to_out.bias, std=0.3)
                nn.init.normal_(m.rel_bias.table)


def conditions(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return dict(
        logsnr=torch.tensor([-3.0, 5.0]),
        context=torch.randn(B, CTX_LEN, CTX_DIM, generator=g),
        context_mask=torch.tensor([[True] * 5, [True, True, True, False, False]]),
        fps=torch.tensor([8.0, 24.0]),
    )


def per_frame(model: UNet3D, x: torch.Tensor, **cond) -> torch.Tensor:
    """The model applied to each frame alone, as a one-frame clip."""
    return torch.cat([model(x[:, :, t : t + 1], **cond) for t in range(x.shape[2])], dim=2)


@torch.no_grad()
def test_at_init_the_video_model_is_the_image_model_per_frame():
    torch.manual_seed(0)
    model = tiny_unet()
    x, cond = torch.randn(B, C, T, S, S), conditions()
    out = model(x, **cond)
    assert out.abs().mean() > 1e-2  # not trivially zero
    torch.testing.assert_close(out, per_frame(model, x, **cond), atol=1e-5, rtol=1e-5)
    # the comparison detects frame mixing once the temporal layers are active
    randomise_temporal(model)
    assert (model(x, **cond) - per_frame(model, x, **cond)).abs().max() > 1e-2


@torch.no_grad()
def test_without_temporal_layers_frames_never_mix():
    torch.manual_seed(0)
    model = tiny_unet(temporal_attention=False, temporal_conv=False)
    assert not any(isinstance(m, TemporalAttention) for m in model.modules())
    assert all(m.temporal is None for m in model.modules() if isinstance(m, PseudoConv3d))
    x, cond = torch.randn(B, C, T, S, S), conditions()
    torch.testing.assert_close(model(x, **cond), per_frame(model, x, **cond), atol=1e-5, rtol=1e-5)


def test_valid_frames_ignore_masked_frames():
    torch.manual_seed(0)
    model = tiny_unet()
    randomise_temporal(model)
    cond = conditions()
    frame_mask = torch.tensor([[True, False, True, True], [True, False, False, False]])  # video with a hole, image
    valid = frame_mask[:, None, :, None, None].expand(B, C, T, S, S)
    x = torch.randn(B, C, T, S, S, requires_grad=True)
    out = model(x, frame_mask=frame_mask, **cond)
    x2 = torch.where(valid, x.detach(), 5 * torch.randn(B, C, T, S, S)).requires_grad_()  # same kernels as `out`
    torch.testing.assert_close(model(x2, frame_mask=frame_mask, **cond)[valid], out[valid], atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        # control: without the mask the same change reaches the valid frames
        assert (model(x2, **cond)[valid] - model(x.detach(), **cond)[valid]).abs().max() > 1e-3
        # the image padded to T frames equals the image as a one-frame clip, temporal layers and all
        image_cond = {k: v[1:] for k, v in cond.items()}
        torch.testing.assert_close(out[1:, :, :1], model(x[1:, :, :1], **image_cond), atol=1e-5, rtol=1e-5)
    # a loss on valid frames sends no gradient to masked frames' inputs
    out[valid].square().sum().backward()
    grad = x.grad.transpose(1, 2)  # (B, T, C, H, W)
    assert torch.isfinite(grad).all()
    assert (grad[~frame_mask] == 0).all() and (grad[frame_mask] != 0).any()


def test_gradient_checkpointing_gives_identical_results(monkeypatch):
    torch.manual_seed(0)
    plain = tiny_unet(dropout=0.1)
    randomise_temporal(plain)
    ckpt = tiny_unet(dropout=0.1, gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    real_checkpoint = unet_mod.checkpoint
    monkeypatch.setattr(unet_mod, "checkpoint", lambda *a, **k: calls.append(1) or real_checkpoint(*a, **k))
    x, cond = torch.randn(B, C, T, S, S), conditions()
    frame_mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    results = []
    for model in (plain, ckpt):
        model.train()
        torch.manual_seed(123)  # same dropout masks
        out = model(x, frame_mask=frame_mask, **cond)
        loss = out.square().mean()
        loss.backward()
        results.append((out.detach(), loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    assert len(calls) == len(ckpt.down) + 1 + len(ckpt.up)  # every stage was checkpointed
    (out_a, loss_a, grads_a), (out_b, loss_b, grads_b) = results
    torch.testing.assert_close(out_a, out_b, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(loss_a, loss_b, atol=1e-6, rtol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize(
    "overrides, extra_cond",
    [
        (dict(), dict()),
        (dict(context_dim=None), dict()),
        (dict(temporal_attention=False), dict()),
        (dict(temporal_conv=False, fps_conditioning=False), dict()),
        (dict(num_extra_conditions=2, out_channels=5), dict(extra=torch.tensor([[0.5, -1.0], [3.0, 0.0]]))),
        (dict(channel_mult=(1, 2, 2), attention_levels=(0, 2), head_dim=16), dict()),
    ],
)
def test_shapes_and_finite_outputs(overrides, extra_cond):
    torch.manual_seed(0)
    model = tiny_unet(**overrides)
    cond = conditions()
    if overrides.get("context_dim", CTX_DIM) is None:
        del cond["context"], cond["context_mask"]
    if not overrides.get("fps_conditioning", True):
        del cond["fps"]
    cond["logsnr"] = torch.tensor([-math.inf, math.inf])
    x = torch.randn(B, C, T, S, S)
    with torch.no_grad():
        out = model(x, **cond, **extra_cond)
    assert out.shape == (B, model.out_channels, T, S, S)
    assert torch.isfinite(out).all()


def test_bad_inputs_raise_clear_errors():
    model = tiny_unet(channel_mult=(1, 2, 2))
    cond = conditions()
    with pytest.raises(ValueError, match=r"H=10 and W=8 must be divisible by .* = 4"):
        model(torch.randn(B, C, T, 10, 8), **cond)
    x = torch.randn(B, C, T, S, S)
    with pytest.raises(ValueError, match="context must be"):
        model(x, logsnr=cond["logsnr"])
    with pytest.raises(ValueError, match="frame_mask must be bool"):
        model(x, frame_mask=torch.ones(B, T), **cond)
    with pytest.raises(ValueError, match="extra must be"):
        model(x, extra=torch.zeros(B, 1), **cond)
    with pytest.raises(ValueError, match="attention_levels"):
        tiny_unet(attention_levels=(2,))
    with pytest.raises(ValueError, match="head_dim=12"):
        tiny_unet(head_dim=12)
    with pytest.raises(ValueError, match="attention_backend must be"):
        tiny_unet(attention_backend="flash")
