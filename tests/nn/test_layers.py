"""Tests of latentvid/nn/layers.py against per-frame 2D references and explicit temporal sums."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentvid.nn.layers import (
    Downsample,
    FrameGroupNorm,
    PseudoConv3d,
    ResBlock3D,
    ScalarEmbedding,
    Upsample,
    sinusoidal_embedding,
)


def per_frame(fn, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D function to each frame of (B, C, T, H, W) by an explicit loop over T."""
    return torch.stack([fn(x[:, :, t]) for t in range(x.shape[2])], dim=2)


def temporal_reference(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """out[:, :, t] = bias + sum_k W[:, :, k] . h[:, :, t + k - 1] with zeros outside the clip.

    h (B, C, T, H, W), weight (C_out, C, 3), bias (C_out,).
    """
    padded = F.pad(h, (0, 0, 0, 0, 1, 1))  # zero frame before and after
    t = h.shape[2]
    out = sum(torch.einsum("oc,bcthw->bothw", weight[:, :, k], padded[:, :, k : k + t]) for k in range(3))
    return out + bias[None, :, None, None, None]


def spatial_conv2d(layer: nn.Conv3d) -> nn.Conv2d:
    """A plain Conv2d with the weights of a 1x3x3 Conv3d."""
    conv = nn.Conv2d(layer.in_channels, layer.out_channels, 3, stride=layer.stride[1:], padding=1)
    with torch.no_grad():
        conv.weight.copy_(layer.weight[:, :, 0])
        conv.bias.copy_(layer.bias)
    return conv


def randomise_temporal(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, PseudoConv3d) and m.temporal is not None:
            with torch.no_grad():
                nn.init.normal_(m.temporal.weight, std=0.3)
                nn.init.normal_(m.temporal.bias, std=0.3)


@pytest.mark.parametrize("temporal", [True, False])
def test_pseudo_conv_at_init_is_the_spatial_conv_per_frame(temporal):
    torch.manual_seed(0)
    layer = PseudoConv3d(4, 6, temporal=temporal)
    x = torch.randn(2, 4, 5, 7, 6)
    expected = per_frame(spatial_conv2d(layer.spatial), x)
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-6)
    assert (layer.temporal is None) == (not temporal)


def test_pseudo_conv_temporal_part_is_a_conv_over_time():
    torch.manual_seed(0)
    layer = PseudoConv3d(4, 6)
    randomise_temporal(layer)
    x = torch.randn(2, 4, 5, 3, 4)
    spatial = per_frame(spatial_conv2d(layer.spatial), x)
    expected = temporal_reference(spatial, layer.temporal.weight[:, :, :, 0, 0], layer.temporal.bias)
    out = layer(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, spatial, atol=1e-2)  # the perturbed temporal conv really mixes frames
    # same thing as a Conv1d over T at every pixel
    conv1d = nn.Conv1d(6, 6, 3, padding=1)
    with torch.no_grad():
        conv1d.weight.copy_(layer.temporal.weight[:, :, :, 0, 0])
        conv1d.bias.copy_(layer.temporal.bias)
    b, c, t, h, w = spatial.shape
    per_pixel = conv1d(spatial.permute(0, 3, 4, 1, 2).reshape(b * h * w, c, t))  # (B*H*W, C, T)
    torch.testing.assert_close(out, per_pixel.reshape(b, h, w, c, t).permute(0, 3, 4, 1, 2), atol=1e-5, rtol=1e-5)


def test_pseudo_conv_frame_mask_treats_masked_frames_as_padding():
    torch.manual_seed(0)
    layer = PseudoConv3d(3, 4)
    randomise_temporal(layer)
    frame_mask = torch.tensor([[True, False, True, True], [True, False, False, False]])
    x = torch.randn(2, 3, 4, 5, 5, requires_grad=True)
    out = layer(x, frame_mask)
    spatial = per_frame(spatial_conv2d(layer.spatial), x.detach()) * frame_mask[:, None, :, None, None]
    expected = temporal_reference(spatial, layer.temporal.weight[:, :, :, 0, 0], layer.temporal.bias)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    valid = frame_mask[:, None, :, None, None].expand(2, 4, 4, 5, 5)
    x2 = torch.where(frame_mask[:, None, :, None, None], x.detach(), torch.randn_like(x) * 100)
    assert torch.equal(layer(x2, frame_mask)[valid], out[valid])
    assert not torch.allclose(layer(x2)[valid], layer(x.detach())[valid])  # control: no mask, it leaks
    (out * valid).sum().backward()
    grad = x.grad.transpose(1, 2)  # (B, T, C, H, W)
    assert (grad[~frame_mask] == 0).all() and (grad[frame_mask] != 0).any()
    # the image (one valid frame) equals the same image run as a one-frame clip
    torch.testing.assert_close(out[1:, :, :1], layer(x[1:, :, :1]), atol=1e-6, rtol=1e-6)


def test_frame_group_norm_normalises_each_frame_alone():
    torch.manual_seed(0)
    norm = FrameGroupNorm(2, 4)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(2, 4, 3, 5, 5) * torch.tensor([1.0, 10.0, 0.1])[None, None, :, None, None]
    expected = per_frame(lambda f: F.group_norm(f, 2, norm.weight, norm.bias, eps=norm.eps), x)
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(F.group_norm(x, 2, norm.weight, norm.bias), expected, atol=1e-2)  # frames would mix
    with pytest.raises(ValueError, match="norm_groups=3"):
        FrameGroupNorm(3, 4)


def resblock_reference(block: ResBlock3D, x, emb, frame_mask):
    """ResBlock3D written with per-frame 2D ops and explicit temporal sums."""

    def pseudo(layer: PseudoConv3d, h):
        h = per_frame(spatial_conv2d(layer.spatial), h)
        if frame_mask is not None:
            h = h * frame_mask[:, None, :, None, None]
        return temporal_reference(h, layer.temporal.weight[:, :, :, 0, 0], layer.temporal.bias)

    def norm(layer: FrameGroupNorm, h):
        return per_frame(lambda f: F.group_norm(f, layer.num_groups, layer.weight, layer.bias, layer.eps), h)

    h = pseudo(block.conv1, F.silu(norm(block.norm1, x)))
    film = F.linear(F.silu(emb), block.emb_proj.weight, block.emb_proj.bias)
    out_channels = h.shape[1]
    scale, shift = film[:, :out_channels], film[:, out_channels:]
    h = norm(block.norm2, h) * (1 + scale[:, :, None, None, None]) + shift[:, :, None, None, None]
    h = pseudo(block.conv2, F.silu(h))
    skip = x if isinstance(block.skip, nn.Identity) else F.conv3d(x, block.skip.weight, block.skip.bias)
    return skip + h


@pytest.mark.parametrize("in_channels, out_channels", [(8, 8), (8, 12)])
def test_resblock_matches_reference(in_channels, out_channels):
    torch.manual_seed(0)
    block = ResBlock3D(in_channels, out_channels, emb_dim=10, norm_groups=4)
    randomise_temporal(block)
    x, emb = torch.randn(2, in_channels, 4, 6, 6), torch.randn(2, 10)
    frame_mask = torch.tensor([[True, True, False, True], [True, False, False, False]])
    for mask in (None, frame_mask):
        torch.testing.assert_close(block(x, emb, mask), resblock_reference(block, x, emb, mask), atol=1e-5, rtol=1e-5)
    # the embedding is used: another embedding changes the output
    assert not torch.allclose(block(x, emb), block(x, emb.flip(0)), atol=1e-3)


def test_resblock_at_init_treats_frames_independently():
    torch.manual_seed(0)
    block = ResBlock3D(8, 16, emb_dim=10, norm_groups=4)
    x, emb = torch.randn(2, 8, 4, 6, 6), torch.randn(2, 10)
    per_frame_out = torch.cat([block(x[:, :, t : t + 1], emb) for t in range(4)], dim=2)
    torch.testing.assert_close(block(x, emb), per_frame_out, atol=1e-5, rtol=1e-5)


def test_sinusoidal_embedding_closed_form():
    values = torch.tensor([0.0, 1.5, -3.0, 999.0])
    dim, period = 6, 10000.0
    emb = sinusoidal_embedding(values, dim, period).numpy()
    freqs = np.array([period ** (-i / 3) for i in range(3)])
    angles = values.numpy()[:, None].astype(np.float64) * freqs
    np.testing.assert_allclose(emb, np.concatenate([np.cos(angles), np.sin(angles)], 1), atol=2e-4)
    with pytest.raises(ValueError, match="even"):
        sinusoidal_embedding(values, 5)


def test_scalar_embedding_clips_and_rescales():
    torch.manual_seed(0)
    embed = ScalarEmbedding(16, value_range=(-20.0, 20.0), freq_dim=8)
    logsnr = torch.tensor([-math.inf, -20.0, -25.0, 0.0, 20.0, math.inf, 1e6])
    out = embed(logsnr)
    assert out.shape == (7, 16) and torch.isfinite(out).all()
    torch.testing.assert_close(out[0], out[1])  # -inf clipped to -20
    torch.testing.assert_close(out[2], out[1])
    torch.testing.assert_close(out[5], out[4])  # +inf clipped to 20
    torch.testing.assert_close(out[6], out[4])
    assert not torch.allclose(out[1], out[3]) and not torch.allclose(out[3], out[4])
    # the MLP sees sinusoids of the value mapped affinely onto [0, 1000]
    first_layer_in = []
    embed.mlp[0].register_forward_hook(lambda m, inp, o: first_layer_in.append(inp[0]))
    embed(torch.tensor([-20.0, 0.0, 20.0]))
    torch.testing.assert_close(first_layer_in[0], sinusoidal_embedding(torch.tensor([0.0, 500.0, 1000.0]), 8))


def test_scalar_embedding_several_values():
    torch.manual_seed(0)
    embed = ScalarEmbedding(12, value_range=(0.0, 1.0), num_values=2, freq_dim=4)
    v = torch.tensor([[0.1, 0.9], [0.9, 0.1]])
    out = embed(v)
    assert out.shape == (2, 12)
    assert not torch.allclose(out[0], out[1])  # order of the scalars matters
    with pytest.raises(ValueError, match="2 scalar"):
        embed(torch.zeros(2, 3))


def test_downsample_and_upsample_are_spatial_per_frame():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 8, 6)
    down = Downsample(4)
    torch.testing.assert_close(down(x), per_frame(spatial_conv2d(down.conv), x), atol=1e-6, rtol=1e-6)
    assert down(x).shape == (2, 4, 3, 4, 3)
    up = Upsample(4)
    conv = spatial_conv2d(up.conv)
    expected = per_frame(lambda f: conv(f.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)), x)
    torch.testing.assert_close(up(x), expected, atol=1e-6, rtol=1e-6)
    assert up(x).shape == (2, 4, 3, 16, 12)
