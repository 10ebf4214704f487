"""Tests of latentvid/nn/layers.py against per-frame 2D references and explicit temporal sums, and of\nthe channels-last execution paths against the standard (B, C, T, H, W) ones (forward and backward)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentvid.nn.layers import (
    Downsample,
    FeedForward,
    FrameGroupNorm,
    PseudoConv3d,
    ResBlock3D,
    ScalarEmbedding,
    Upsample,
    conv_over_time,
    conv_per_frame,
    group_norm_channels_last,
    is_channels_last,
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


# ---- channels-last execution: the same function as the standard layout, forward and backward ----

CL = torch.channels_last_3d


def run_with_grads(module: nn.Module, x: torch.Tensor, *args):
    """Output, input gradient and parameter gradients of sum(out * fixed weights)."""
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    out = module(x, *args)
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    (out * weights).sum().backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def assert_same_results(a, b, tol=1e-5):
    """Outputs and gradients equal up to float32 rounding (relative to each tensor's magnitude)."""
    pairs = [("output", a[0], b[0]), ("input grad", a[1], b[1])]
    assert a[2].keys() == b[2].keys() and a[2]
    pairs += [(name, a[2][name], b[2][name]) for name in a[2]]
    for name, x, y in pairs:
        scale = max(1.0, x.abs().max().item())
        err = (x - y).abs().max().item()
        assert err <= tol * scale, f"{name}: max difference {err:.3g} at magnitude {scale:.3g}"


def layer_cases():
    mask = torch.tensor([[True, False, True, True], [True, False, False, False]])
    emb = torch.randn(2, 10, generator=torch.Generator().manual_seed(5))
    return {
        "pseudo_conv": (lambda: PseudoConv3d(6, 8), ()),
        "pseudo_conv_masked": (lambda: PseudoConv3d(6, 8), (mask,)),
        "resblock": (lambda: ResBlock3D(6, 8, emb_dim=10, norm_groups=2), (emb, mask)),
        "resblock_same_width": (lambda: ResBlock3D(6, 6, emb_dim=10, norm_groups=3), (emb, None)),
        "group_norm": (lambda: FrameGroupNorm(3, 6), ()),
        "downsample": (lambda: Downsample(6), ()),
        "upsample": (lambda: Upsample(6), ()),
        "feed_forward": (lambda: FeedForward(6, mult=2), ()),
    }


@pytest.mark.parametrize("case", list(layer_cases()))
def test_channels_last_input_gives_the_standard_results(case):
    """The channels-last path (2D convs on views) against the (B, C, T, H, W) path (Conv3d kernels)."""
    build, args = layer_cases()[case]
    torch.manual_seed(0)
    module = build()
    randomise_temporal(module)
    with torch.no_grad():  # non-trivial affine parameters everywhere
        for m in module.modules():
            if isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
                nn.init.normal_(m.weight)
                nn.init.normal_(m.bias)
    x = torch.randn(2, 6, 4, 6, 4)
    standard = run_with_grads(module, x, *args)
    fast = run_with_grads(module, x.contiguous(memory_format=CL), *args)
    assert_same_results(standard, fast)
    assert is_channels_last(fast[0])  # the layout is kept: no copy back to (B, C, T, H, W)


def test_conv_helpers_match_conv3d_and_reject_other_kernels():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 6, 5).contiguous(memory_format=CL)
    strided = nn.Conv3d(4, 5, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
    torch.testing.assert_close(conv_per_frame(strided, x), strided(x.contiguous()), atol=1e-5, rtol=1e-5)
    temporal = nn.Conv3d(4, 4, (3, 1, 1), padding=(1, 0, 0))
    torch.testing.assert_close(conv_over_time(temporal, x), temporal(x.contiguous()), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="conv_per_frame"):
        conv_per_frame(temporal, x)
    with pytest.raises(ValueError, match="conv_over_time"):
        conv_over_time(strided, x)


@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_channels_last_matches_torch(affine):
    """The layout-keeping GroupNorm (CUDA's channels-last path) against F.group_norm, run here on CPU."""
    torch.manual_seed(0)
    x = (torch.randn(6, 8, 5, 4) * 3 + 2).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(8, requires_grad=True) if affine else None
    bias = torch.randn(8, requires_grad=True) if affine else None
    out = group_norm_channels_last(x, 4, weight, bias, eps=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)
    x_ref = x.detach().double().contiguous().requires_grad_()
    w_ref = None if weight is None else weight.detach().double().requires_grad_()
    b_ref = None if bias is None else bias.detach().double().requires_grad_()
    ref = F.group_norm(x_ref, 4, w_ref, b_ref, eps=1e-5)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    g = torch.randn(out.shape, dtype=torch.float64)
    out.backward(g.float())
    ref.backward(g)
    torch.testing.assert_close(x.grad.double(), x_ref.grad, atol=1e-4, rtol=1e-4)
    if affine:
        torch.testing.assert_close(weight.grad.double(), w_ref.grad, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(bias.grad.double(), b_ref.grad, atol=1e-4, rtol=1e-4)


def test_group_norm_channels_last_low_precision_accumulates_in_float32():
    torch.manual_seed(0)
    x = (torch.randn(4, 16, 8, 8) * 2 + 5).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(16), torch.randn(16)
    out = group_norm_channels_last(x.bfloat16(), 4, weight.bfloat16(), bias.bfloat16())
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    ref = F.group_norm(x.bfloat16().double(), 4, weight.bfloat16().double(), bias.bfloat16().double())
    err = (out.double() - ref).norm() / ref.norm()
    assert err < 1e-2  # bf16 output rounding, not a bf16-accumulated mean (which would be off by ~5 %)


def test_feed_forward_is_a_per_token_geglu_with_residual():
    torch.manual_seed(0)
    ff = FeedForward(6, mult=3)
    with torch.no_grad():
        nn.init.normal_(ff.norm.weight)
        nn.init.normal_(ff.norm.bias)
    x = torch.randn(2, 6, 3, 4, 5)
    tokens = x.permute(0, 2, 3, 4, 1).double().numpy()  # (B, T, H, W, C)
    mean = tokens.mean(-1, keepdims=True)
    normed = (tokens - mean) / np.sqrt(tokens.var(-1, keepdims=True) + ff.norm.eps)
    normed = normed * ff.norm.weight.detach().double().numpy() + ff.norm.bias.detach().double().numpy()
    hidden = normed @ ff.proj_in.weight.detach().double().numpy().T + ff.proj_in.bias.detach().double().numpy()
    value, gate = hidden[..., :18], hidden[..., 18:]
    gelu = 0.5 * gate * (1 + np.vectorize(math.erf)(gate / math.sqrt(2)))
    out = (value * gelu) @ ff.proj_out.weight.detach().double().numpy().T + ff.proj_out.bias.detach().double().numpy()
    expected = torch.from_numpy(tokens + out).permute(0, 4, 1, 2, 3).float()
    torch.testing.assert_close(ff(x), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="mult"):
        FeedForward(6, mult=0)


@pytest.mark.gpu
def test_frame_group_norm_on_cuda_keeps_channels_last_and_matches_torch():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    norm = FrameGroupNorm(4, 32).cuda()
    with torch.no_grad():
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
    x = (torch.randn(2, 32, 3, 8, 8, device="cuda") * 2 + 1).contiguous(memory_format=CL)
    out = norm(x)  # the layout-keeping decomposition (CUDA's own kernel would copy)
    assert is_channels_last(out)
    ref = per_frame(lambda f: F.group_norm(f.contiguous(), 4, norm.weight, norm.bias, norm.eps), x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = norm(x.bfloat16())
    assert low.dtype == torch.bfloat16 and ((low.float() - ref).norm() / ref.norm()) < 1e-2
    FrameGroupNorm.cuda_channels_last_kernel = "native"  # the kernel switch the benchmark measures
    try:
        torch.testing.assert_close(norm(x), ref, atol=1e-5, rtol=1e-5)
    finally:
        FrameGroupNorm.cuda_channels_last_kernel = "decomposed"
