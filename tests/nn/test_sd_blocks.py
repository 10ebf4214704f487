"""Tests of latentvid/nn/sd_blocks.py: each SD-layout layer loads the state dict of diffusers' own layer
of the same name and computes the same function; the temporal layers start as identities and respect frame masks."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from latentvid.nn.attention import TemporalAttention
from latentvid.nn.sd_blocks import ClipLayout, ResnetBlock, SDAttention, TemporalConv, TemporalLayer, Transformer2D


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convs: one thread is faster (tests/conftest.py)


def load_same(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """Load diffusers' weights into ours by key; the spatial key sets must be identical."""
    spatial = {k for k in ours.state_dict() if "temporal" not in k}
    assert spatial == set(theirs.state_dict()), sorted(spatial ^ set(theirs.state_dict()))
    ours.load_state_dict({**ours.state_dict(), **theirs.state_dict()})


def test_attention_equals_diffusers_attention():
    torch.manual_seed(0)
    ref = Attention(query_dim=32, cross_attention_dim=24, heads=4, dim_head=8, out_bias=True).eval()
    ours = SDAttention(32, 4, context_dim=24, backend="math").eval()
    load_same(ours, ref)
    x, ctx = torch.randn(3, 10, 32), torch.randn(3, 5, 24)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] + [False] * 4])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, ctx), ref(x, ctx), atol=1e-6, rtol=1e-5)
        # diffusers takes the key mask as an additive bias of -10000 on dropped tokens
        bias = (1.0 - mask.float())[:, None, :] * -10000.0  # (B, 1, L)
        torch.testing.assert_close(ours(x, ctx, mask[:, None, None, :]), ref(x, ctx, attention_mask=bias),
                                   atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("c_in,c_out", [(16, 16), (16, 32)])
def test_resnet_block_equals_resnet_block_2d(c_in, c_out):
    torch.manual_seed(0)
    ref = ResnetBlock2D(in_channels=c_in, out_channels=c_out, temb_channels=20, groups=8, eps=1e-5).eval()
    ours = ResnetBlock(c_in, c_out, 20, groups=8, eps=1e-5, dropout=0.0, temporal_conv=True, mix_init=0.5).eval()
    load_same(ours, ref)
    b, t = 2, 3
    x, emb = torch.randn(b * t, c_in, 8, 8), torch.randn(b * t, 20)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, emb, ClipLayout(b, t, None, False)), ref(x, emb), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("linear", [False, True])
def test_transformer_equals_transformer_2d_model(linear):
    torch.manual_seed(0)
    ref = Transformer2DModel(num_attention_heads=4, attention_head_dim=8, in_channels=32, num_layers=2,
                             cross_attention_dim=24, norm_num_groups=8, use_linear_projection=linear).eval()
    ours = Transformer2D(32, 4, 24, layers=2, groups=8, linear_projection=linear, dropout=0.0, backend="math").eval()
    load_same(ours, ref)
    b, t = 2, 3  # cross-attention runs per clip over all its frames at once
    x, ctx = torch.randn(b * t, 32, 4, 4), torch.randn(b, 6, 24)
    with torch.no_grad():
        theirs = ref(x, encoder_hidden_states=ctx.repeat_interleave(t, dim=0), return_dict=False)[0]
        torch.testing.assert_close(ours(x, ctx, None, b), theirs, atol=1e-5, rtol=1e-5)


def test_temporal_conv_starts_as_identity_and_ignores_masked_frames():
    conv = TemporalConv(4)
    x = torch.randn(2, 4, 5, 3, 3)
    assert torch.equal(conv(x), x)
    with torch.no_grad():
        conv.weight.normal_()
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    out = conv(x, mask)
    garbage = x.clone()
    garbage[0, :, 3:] = 1e4
    torch.testing.assert_close(conv(garbage, mask)[0, :, :3], out[0, :, :3])
    # a masked frame is exactly the zero padding at the clip's end
    torch.testing.assert_close(out[0, :, :3], conv(x[:1, :, :3])[0], atol=1e-5, rtol=1e-5)


def test_temporal_layer_blends_with_a_learned_alpha():
    torch.manual_seed(0)
    attn = TemporalAttention(8, head_dim=4, backend="math")
    layer = TemporalLayer(attn, mix_init=0.3)
    b, t = 2, 4
    frames = torch.randn(b * t, 8, 3, 3)
    with torch.no_grad():
        assert torch.allclose(layer(frames, ClipLayout(b, t, None, False)), frames, atol=1e-6)  # identity at init
        for p in attn.parameters():
            p.normal_()
        clip = frames.view(b, t, 8, 3, 3).transpose(1, 2)  # (B, C, T, H, W)
        expected = 0.3 * clip + 0.7 * attn(clip)
        got = layer(frames, ClipLayout(b, t, None, False)).view(b, t, 8, 3, 3).transpose(1, 2)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
