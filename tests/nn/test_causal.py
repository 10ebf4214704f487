"""Tests of latentvid/nn/causal.py: causal convolution against conv3d, streaming, per-frame GroupNorm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from latentvid.nn.causal import CausalConv3d, group_count, make_norm
from latentvid.nn.layers import FrameGroupNorm


# ---- CausalConv3d ------------------------------------------------------------------------------


@pytest.mark.parametrize("pad_mode", ["replicate", "zeros"])
@pytest.mark.parametrize("stride", [1, (2, 2, 2)])
def test_causal_conv_equals_conv3d_on_past_padded_input(pad_mode: str, stride) -> None:
    torch.manual_seed(0)
    conv = CausalConv3d(3, 5, kernel_size=3, stride=stride, pad_mode=pad_mode)
    x = torch.randn(2, 3, 7, 8, 8)
    past = x[:, :, :1].repeat(1, 1, 2, 1, 1)  # two frames before frame 0
    if pad_mode == "zeros":
        past = torch.zeros_like(past)
    ref = F.conv3d(torch.cat([past, x], dim=2), conv.conv.weight, conv.conv.bias, stride=stride, padding=(0, 1, 1))
    y, _ = conv(x)
    torch.testing.assert_close(y, ref)
    assert y.shape[2] == (7 if stride == 1 else 4)  # stride 2 in time: 1 + 2m -> 1 + m frames


@pytest.mark.parametrize(("stride", "chunks"), [(1, [1, 1, 3, 2]), ((2, 1, 1), [1, 2, 4, 2])])
def test_causal_conv_streaming_equals_one_pass(stride, chunks: list[int]) -> None:
    torch.manual_seed(0)
    conv = CausalConv3d(2, 3, kernel_size=3, stride=stride)
    x = torch.randn(1, 2, sum(chunks), 5, 5)
    full, _ = conv(x)
    cache, outs, start = None, [], 0
    for n in chunks:
        y, cache = conv(x[:, :, start : start + n], cache)
        outs.append(y)
        start += n
    torch.testing.assert_close(torch.cat(outs, dim=2), full, atol=1e-6, rtol=0)



# ---- norms -------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [4, 8, 96])
def test_group_norm_is_the_layers_one_and_per_frame(channels: int) -> None:
    """The VAE's "group" norm is nn.layers' FrameGroupNorm (one class, with its channels-last CUDA
    path), eps 1e-6, and equals F.group_norm applied to each frame alone."""
    norm = make_norm("group", channels)
    assert type(norm) is FrameGroupNorm and norm.eps == 1e-6
    assert norm.num_groups == group_count(channels) and channels // norm.num_groups >= 2
    torch.manual_seed(1)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, channels, 3, 5, 5) * 3 + 1
    ref = torch.stack([F.group_norm(x[:, :, i], norm.num_groups, norm.weight, norm.bias, 1e-6) for i in range(3)], 2)
    torch.testing.assert_close(norm(x), ref)
