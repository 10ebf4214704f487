"""Tests of latentvid/nn/attention.py: backends vs an independent float64 reference, backend
selection and fallback, the relative position bias, and the attention modules vs torch's
nn.MultiheadAttention."""

from __future__ import annotations

import logging
import sys
import types

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

import latentvid.nn.attention as attn_mod
from latentvid.nn.attention import (
    CrossAttention,
    RelativePositionBias,
    SpatialSelfAttention,
    TemporalAttention,
    attention,
    select_backend,
)

B, HEADS, LQ, LK, D = 2, 3, 5, 7, 8


@pytest.fixture(autouse=True)
def fresh_backend_cache():
    attn_mod.reset_backend_cache()
    yield
    attn_mod.reset_backend_cache()


def reference_attention(q, k, v, mask=None, bias=None) -> np.ndarray:
    """float64 numpy attention; rows with no allowed key give zeros."""
    q, k, v = (t.detach().double().numpy() for t in (q, k, v))
    scores = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias.detach().double().numpy()
    allowed = np.ones(scores.shape, bool) if mask is None else np.broadcast_to(mask.numpy(), scores.shape)
    scores = np.where(allowed, scores, -np.inf)
    row_max = np.max(np.where(allowed, scores, -1e300), axis=-1, keepdims=True)
    weights = np.where(allowed, np.exp(scores - row_max), 0.0)
    denom = weights.sum(-1, keepdims=True)
    weights = np.divide(weights, denom, out=np.zeros_like(weights), where=denom > 0)
    return weights @ v


def make_inputs(seed: int = 0, requires_grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, HEADS, LQ, D, generator=g)
    k = torch.randn(B, HEADS, LK, D, generator=g)
    v = torch.randn(B, HEADS, LK, D, generator=g)
    mask = torch.rand(B, 1, LQ, LK, generator=g) > 0.4  # broadcast over heads
    mask[0, 0, 1] = False  # fully masked query rows
    mask[1, 0, 3] = False
    bias = torch.randn(1, HEADS, LQ, LK, generator=g)
    if requires_grad:
        q, k, v = (t.requires_grad_() for t in (q, k, v))
    return q, k, v, mask, bias


CASES = {"plain": (False, False), "mask": (True, False), "bias": (False, True), "mask+bias": (True, True)}


@pytest.mark.parametrize("backend", ["math", "sdpa"])
@pytest.mark.parametrize("case", list(CASES))
def test_backend_matches_reference(backend, case):
    use_mask, use_bias = CASES[case]
    q, k, v, mask, bias = make_inputs()
    mask, bias = (mask if use_mask else None), (bias if use_bias else None)
    out = attention(q, k, v, mask=mask, bias=bias, backend=backend)
    assert out.shape == (B, HEADS, LQ, D)
    np.testing.assert_allclose(out.numpy(), reference_attention(q, k, v, mask, bias), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_sdpa_and_math_agree_including_gradients(case):
    use_mask, use_bias = CASES[case]
    results = {}
    for backend in ("math", "sdpa"):
        q, k, v, mask, bias = make_inputs(requires_grad=True)
        out = attention(q, k, v, mask if use_mask else None, bias if use_bias else None, backend=backend)
        (out * torch.linspace(-1, 1, D)).sum().backward()
        results[backend] = (out.detach(), q.grad, k.grad, v.grad)
    for a, b in zip(results["math"], results["sdpa"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_fully_masked_rows_are_zero_with_finite_gradients(backend):
    q, k, v, mask, bias = make_inputs(requires_grad=True)
    out = attention(q, k, v, mask=mask, bias=bias, backend=backend)
    assert torch.isfinite(out).all()
    assert (out[0, :, 1] == 0).all() and (out[1, :, 3] == 0).all()
    out.sum().backward()
    for grad in (q.grad, k.grad, v.grad):
        assert torch.isfinite(grad).all()
    assert (q.grad[0, :, 1] == 0).all()  # a query that sees nothing gets no gradient


def test_bad_inputs_raise_clear_errors():
    q, k, v, mask, bias = make_inputs()
    with pytest.raises(ValueError, match="bool"):
        attention(q, k, v, mask=mask.float())
    with pytest.raises(ValueError, match="does not broadcast"):
        attention(q, k, v, bias=bias[..., :3])
    with pytest.raises(ValueError, match="backend"):
        attention(q, k, v, backend="flash")
    with pytest.raises(ValueError, match="expects q"):
        attention(q, k[..., :4], v)


def spy(monkeypatch, name: str, calls: list[str], fail: bool = False, wrong: bool = False):
    """Replace backend `name` by a wrapper that records calls and can raise or return garbage."""
    real = attn_mod._IMPLS[name]

    def impl(q, k, v, mask, bias):
        calls.append(name)
        if fail:
            raise RuntimeError(f"{name} has no kernel here")
        out = real(q, k, v, mask, bias)
        return out + 1.0 if wrong else out

    monkeypatch.setitem(attn_mod._IMPLS, name, impl)


def test_auto_probe_skips_a_raising_backend(monkeypatch, caplog):
    calls: list[str] = []
    spy(monkeypatch, "sdpa", calls, fail=True)
    spy(monkeypatch, "math", calls)
    q, k, v, mask, bias = make_inputs()
    with caplog.at_level(logging.INFO, logger=attn_mod.__name__):
        out = attention(q, k, v, mask=mask, bias=bias)
        attention(q, k, v, mask=mask, bias=bias)
    assert select_backend(q.device, q.dtype, True, True) == "math"
    assert calls.count("sdpa") == 1  # probed once, then never tried again for this setting
    np.testing.assert_allclose(out.numpy(), reference_attention(q, k, v, mask, bias), atol=1e-5)
    chosen = [r for r in caplog.records if "attention backend for" in r.getMessage()]
    assert len(chosen) == 1 and chosen[0].getMessage().endswith("math")


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_auto_probe_from_inside_no_grad_still_picks_sdpa(mode):
    q, k, v, mask, _ = make_inputs()
    with mode():
        out = attention(q, k, v, mask=mask)
    assert select_backend(q.device, q.dtype, True, False) == "sdpa"  # the probe's backward did not fail
    np.testing.assert_allclose(out.numpy(), reference_attention(q, k, v, mask), atol=1e-5)


def test_auto_probe_rejects_a_backend_that_disagrees_with_math(monkeypatch):
    spy(monkeypatch, "sdpa", [], wrong=True)
    assert select_backend(torch.device("cpu"), torch.float32, False, False) == "math"


def test_auto_falls_back_when_the_chosen_backend_raises_at_call_time(monkeypatch, caplog):
    q, k, v, mask, _ = make_inputs()
    assert select_backend(q.device, q.dtype, True, False) == "sdpa"  # no xformers in this venv
    calls: list[str] = []
    spy(monkeypatch, "sdpa", calls, fail=True)
    with caplog.at_level(logging.WARNING, logger=attn_mod.__name__):
        out = attention(q, k, v, mask=mask)
        out_again = attention(q, k, v, mask=mask)
    np.testing.assert_allclose(out.numpy(), reference_attention(q, k, v, mask), atol=1e-5)
    torch.testing.assert_close(out, out_again)
    assert calls == ["sdpa"]  # marked broken after the first failure
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'sdpa' failed" in warnings[0]


@pytest.mark.parametrize("forced", ["math", "sdpa"])
def test_forced_backend_is_honoured(monkeypatch, forced):
    calls: list[str] = []
    for name in ("sdpa", "math"):
        spy(monkeypatch, name, calls)
    q, k, v, mask, bias = make_inputs()
    attention(q, k, v, mask=mask, bias=bias, backend=forced)
    assert calls == [forced]  # no probing, no other backend


def test_forced_xformers_without_xformers_falls_back(caplog):
    if "xformers" in sys.modules or _importable("xformers"):
        pytest.skip("xformers is installed; the fallback path is covered by the fake-module test")
    q, k, v, mask, bias = make_inputs()
    with caplog.at_level(logging.WARNING, logger=attn_mod.__name__):
        out = attention(q, k, v, mask=mask, bias=bias, backend="xformers")
    np.testing.assert_allclose(out.numpy(), reference_attention(q, k, v, mask, bias), atol=1e-5)
    assert any("'xformers' failed" in r.getMessage() for r in caplog.records)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def fake_xformers(monkeypatch, seen: list) -> None:
    """Install a stand-in `xformers.ops` that computes attention in xformers' (B, L, heads, d) layout."""

    def memory_efficient_attention(q, k, v, attn_bias=None):
        seen.append((tuple(q.shape), attn_bias))
        scores = torch.einsum("bmhk,bnhk->bhmn", q, k) / q.shape[-1] ** 0.5
        if attn_bias is not None:
            assert isinstance(attn_bias, torch.Tensor) and attn_bias.shape == scores.shape
            assert attn_bias.stride(-2) % 8 == 0  # rows aligned as the real kernels require
            scores = scores + attn_bias
        return torch.einsum("bhmn,bnhk->bmhk", scores.softmax(-1), v)

    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention
    package = types.ModuleType("xformers")
    package.ops = ops
    monkeypatch.setitem(sys.modules, "xformers", package)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)


@pytest.mark.parametrize("case", list(CASES))
def test_xformers_backend_layout_and_dense_bias(monkeypatch, case):
    use_mask, use_bias = CASES[case]
    seen: list = []
    fake_xformers(monkeypatch, seen)
    q, k, v, mask, bias = make_inputs()
    mask, bias = (mask if use_mask else None), (bias if use_bias else None)
    out = attention(q, k, v, mask=mask, bias=bias, backend="xformers")
    assert len(seen) == 1
    q_shape, attn_bias = seen[0]
    assert q_shape == (B, LQ, HEADS, D)  # xformers layout
    assert (attn_bias is None) == (mask is None and bias is None)
    np.testing.assert_allclose(out.numpy(), reference_attention(q, k, v, mask, bias), atol=1e-5)
    assert select_backend(q.device, q.dtype, use_mask, use_bias) == "xformers"  # auto prefers it when it works


def test_relative_position_bias_is_clipped_toeplitz():
    torch.manual_seed(0)
    heads, max_distance, length = 2, 3, 9
    rpb = RelativePositionBias(heads, max_distance)
    nn.init.normal_(rpb.table)
    bias = rpb(length).detach()
    assert bias.shape == (heads, length, length)
    table = rpb.table.detach().numpy()
    clip = np.clip(np.arange(length), 0, max_distance)
    for h in range(heads):
        # first column: offsets j - i = -i; first row: offsets +j; both clipped at max_distance.
        expected = scipy.linalg.toeplitz(table[max_distance - clip, h], table[max_distance + clip, h])
        np.testing.assert_array_equal(bias[h].numpy(), expected)
    torch.testing.assert_close(bias[:, 1:, 1:], bias[:, :-1, :-1])  # depends on i - j only
    assert (bias[:, 0, max_distance:] == bias[:, 0, -1:]).all()  # clipped beyond max_distance
    assert not torch.equal(bias[:, 0, 1], bias[:, 1, 0])  # signed: before != after
    assert len(torch.unique(bias[0])) == 2 * max_distance + 1


def mha_like(module_attn, embed_dim: int, kdim: int) -> nn.MultiheadAttention:
    """torch's nn.MultiheadAttention with the weights of our MultiHeadAttention."""
    ref = nn.MultiheadAttention(embed_dim, module_attn.heads, kdim=kdim, vdim=kdim, batch_first=True)
    wq, wk, wv = module_attn.projection_weights()
    with torch.no_grad():
        if ref._qkv_same_embed_dim:
            ref.in_proj_weight.copy_(torch.cat([wq, wk, wv]))
        else:
            ref.q_proj_weight.copy_(wq)
            ref.k_proj_weight.copy_(wk)
            ref.v_proj_weight.copy_(wv)
        ref.in_proj_bias.zero_()
        ref.out_proj.weight.copy_(module_attn.to_out.weight)
        ref.out_proj.bias.copy_(module_attn.to_out.bias)
    return ref


def test_spatial_self_attention_matches_torch_per_frame():
    torch.manual_seed(0)
    b, c, t, h, w = 2, 16, 3, 4, 5
    block = SpatialSelfAttention(c, head_dim=8, norm_groups=4, backend="auto")
    x = torch.randn(b, c, t, h, w)
    ref = mha_like(block.attn, c, c)
    for bi in range(b):
        for ti in range(t):
            frame = x[bi : bi + 1, :, ti]  # (1, C, H, W)
            normed = nn.functional.group_norm(frame, 4, block.norm.weight, block.norm.bias)
            tokens = normed.flatten(2).transpose(1, 2)  # (1, H*W, C)
            expected = frame + ref(tokens, tokens, tokens, need_weights=False)[0].transpose(1, 2).reshape(1, c, h, w)
            torch.testing.assert_close(block(x)[bi : bi + 1, :, ti], expected, atol=1e-5, rtol=1e-5)


def test_cross_attention_matches_torch_with_context_repeated_per_frame():
    torch.manual_seed(0)
    b, c, t, h, w, length, dim = 2, 16, 3, 2, 3, 6, 12
    block = CrossAttention(c, dim, head_dim=4)
    x, context = torch.randn(b, c, t, h, w), torch.randn(b, length, dim)
    context_mask = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    out = block(x, context, context_mask)
    ref = mha_like(block.attn, c, dim)
    tokens = x.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)  # (B*T, H*W, C)
    ctx = context.repeat_interleave(t, dim=0)  # (B*T, L, D): every frame reads the same caption
    pad = ~context_mask.repeat_interleave(t, dim=0)
    normed = nn.functional.layer_norm(tokens, (c,), block.norm.weight, block.norm.bias)
    expected = tokens + ref(normed, ctx, ctx, key_padding_mask=pad, need_weights=False)[0]
    torch.testing.assert_close(out.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c), expected, atol=1e-5, rtol=1e-5)
    # the padded tokens really are ignored
    context2 = context.clone()
    context2[1, 3:] += 5.0
    torch.testing.assert_close(block(x, context2, context_mask), out)


def randomise_temporal(block: TemporalAttention) -> None:
    with torch.no_grad():
        nn.init.normal_(block.attn.to_out.weight, std=0.3)
        nn.init.normal_(block.attn.to_out.bias, std=0.3)
        nn.init.normal_(block.rel_bias.table)


def test_temporal_attention_is_identity_at_init():
    torch.manual_seed(0)
    block = TemporalAttention(16, head_dim=8, max_distance=2)
    x = torch.randn(2, 16, 5, 3, 3)
    assert torch.equal(block(x), x)


def test_temporal_attention_matches_torch_with_relative_bias():
    torch.manual_seed(0)
    b, c, t, h, w = 2, 16, 6, 2, 3
    block = TemporalAttention(c, head_dim=8, max_distance=2)
    randomise_temporal(block)
    x = torch.randn(b, c, t, h, w)
    ref = mha_like(block.attn, c, c)
    tokens = x.permute(0, 3, 4, 2, 1).reshape(b * h * w, t, c)  # (B*H*W, T, C)
    normed = nn.functional.layer_norm(tokens, (c,), block.norm.weight, block.norm.bias)
    bias = block.rel_bias(t).detach().repeat(b * h * w, 1, 1)  # (N*heads, T, T) as torch expects
    expected = tokens + ref(normed, normed, normed, attn_mask=bias, need_weights=False)[0]
    out = block(x).permute(0, 3, 4, 2, 1).reshape(b * h * w, t, c)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_temporal_attention_frame_mask():
    torch.manual_seed(0)
    b, c, t, h, w = 3, 16, 5, 2, 2
    block = TemporalAttention(c, head_dim=8, max_distance=3)
    randomise_temporal(block)
    frame_mask = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    x = torch.randn(b, c, t, h, w, requires_grad=True)
    out = block(x, frame_mask)
    valid = frame_mask[:, None, :, None, None].expand_as(x)
    # changing masked frames leaves valid frames untouched
    x2 = torch.where(valid, x.detach(), 10 * torch.randn_like(x))
    torch.testing.assert_close(block(x2, frame_mask)[valid], out[valid], atol=0, rtol=0)
    # control: without the mask the same change does reach the valid frames
    assert not torch.allclose(block(x2)[valid], block(x.detach())[valid])
    # masked frames attend to nothing: output = input + output-projection bias, no NaN anywhere
    expected_masked = x + block.attn.to_out.bias[None, :, None, None, None]
    torch.testing.assert_close(out[~valid], expected_masked[~valid])
    (out * valid).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[~valid] == 0).all() and (x.grad[valid] != 0).any()
    # a lone valid frame sees only itself: same as running it as a one-frame clip
    torch.testing.assert_close(out[1:2, :, :1], block(x[1:2, :, :1]), atol=1e-6, rtol=1e-6)


# ---- fused projections, legacy weights, layouts without copies ------------------------------------


def separate_weights(dim: int, kv_dim: int, seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "to_q.weight": torch.randn(dim, dim, generator=g) / dim**0.5,
        "to_k.weight": torch.randn(dim, kv_dim, generator=g) / kv_dim**0.5,
        "to_v.weight": torch.randn(dim, kv_dim, generator=g) / kv_dim**0.5,
        "to_out.weight": torch.randn(dim, dim, generator=g) / dim**0.5,
        "to_out.bias": torch.randn(dim, generator=g),
    }


def mha_from_separate(weights: dict[str, torch.Tensor], heads: int) -> nn.MultiheadAttention:
    dim, kv_dim = weights["to_k.weight"].shape
    ref = nn.MultiheadAttention(dim, heads, kdim=kv_dim, vdim=kv_dim, batch_first=True)
    with torch.no_grad():
        if ref._qkv_same_embed_dim:
            ref.in_proj_weight.copy_(torch.cat([weights[f"to_{r}.weight"] for r in "qkv"]))
        else:
            for r in "qkv":
                getattr(ref, f"{r}_proj_weight").copy_(weights[f"to_{r}.weight"])
        ref.in_proj_bias.zero_()
        ref.out_proj.weight.copy_(weights["to_out.weight"])
        ref.out_proj.bias.copy_(weights["to_out.bias"])
    return ref


@pytest.mark.parametrize("kv_dim", [None, 12])
def test_separate_qkv_weights_of_older_checkpoints_load_into_the_fused_projection(kv_dim):
    dim, heads = 16, 4
    weights = separate_weights(dim, kv_dim or dim)
    module = attn_mod.MultiHeadAttention(dim, context_dim=kv_dim, head_dim=dim // heads)
    module.load_state_dict(weights)  # strict: every old key is consumed, no fused key is missing
    assert ("to_kv.weight" if kv_dim else "to_qkv.weight") in module.state_dict()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, dim, generator=g)
    context = torch.randn(2, 7, kv_dim, generator=g) if kv_dim else None
    source = x if context is None else context
    expected = mha_from_separate(weights, heads)(x, source, source, need_weights=False)[0]
    torch.testing.assert_close(module(x, context), expected, atol=1e-5, rtol=1e-5)
    for name, w in zip("qkv", module.projection_weights()):
        torch.testing.assert_close(w, weights[f"to_{name}.weight"])  # the split view gives them back


def test_fuse_and_split_projections_are_inverse_and_group_rows_by_head():
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(12, 5, generator=g) for _ in range(3)]
    fused = attn_mod.fuse_projections(weights, heads=3)
    assert fused.shape == (36, 5)
    torch.testing.assert_close(fused[4:8], weights[1][0:4])  # head 0: rows q0, k0, v0 (4 rows each)
    torch.testing.assert_close(fused[12:16], weights[0][4:8])  # head 1 starts with its q rows
    for a, b in zip(attn_mod.split_projections(fused, heads=3, roles=3), weights):
        assert torch.equal(a, b)


def test_self_attention_module_given_a_context_attends_to_it():
    dim, heads = 16, 2
    weights = separate_weights(dim, dim)
    module = attn_mod.MultiHeadAttention(dim, head_dim=dim // heads)
    module.load_state_dict(weights)
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 5, dim, generator=g), torch.randn(2, 3, dim, generator=g)
    expected = mha_from_separate(weights, heads)(x, context, context, need_weights=False)[0]
    torch.testing.assert_close(module(x, context), expected, atol=1e-5, rtol=1e-5)


def test_temporal_attention_loads_old_keys_under_a_prefix():
    torch.manual_seed(0)
    block = TemporalAttention(16, head_dim=8, max_distance=2)
    randomise_temporal(block)
    wq, wk, wv = (w.detach().clone() for w in block.attn.projection_weights())
    legacy = {k: v.clone() for k, v in block.state_dict().items() if "to_qkv" not in k}
    legacy.update({"attn.to_q.weight": wq, "attn.to_k.weight": wk, "attn.to_v.weight": wv})
    fresh = TemporalAttention(16, head_dim=8, max_distance=2)
    fresh.load_state_dict(legacy)
    x = torch.randn(2, 16, 5, 2, 3)
    torch.testing.assert_close(fresh(x), block(x))


@pytest.mark.parametrize("with_mask", [False, True])
def test_temporal_attention_channels_last_equals_standard_layout_with_gradients(with_mask):
    torch.manual_seed(0)
    block = TemporalAttention(16, head_dim=8, max_distance=2)
    randomise_temporal(block)
    frame_mask = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0]], dtype=torch.bool) if with_mask else None
    x = torch.randn(2, 16, 5, 3, 2)
    results = []
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        block.zero_grad(set_to_none=True)
        xi = x.clone(memory_format=layout).requires_grad_()
        out = block(xi, frame_mask)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        results.append((out.detach(), xi.grad, {n: p.grad.clone() for n, p in block.named_parameters()}))
    (a, ga, pa), (b, gb, pb) = results
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-5)
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], atol=1e-5, rtol=1e-4, msg=name)
    assert pa["rel_bias.table"].abs().sum() > 0  # the position bias is trained through the expanded copy


def test_temporal_attention_passes_views_and_a_compact_mask(monkeypatch):
    """Channels-last video: q, k, v are views of the projection, the frame mask is (B, 1, T, T)."""
    seen = []
    real = attn_mod.attention

    def recording(q, k, v, mask=None, bias=None, backend="auto"):
        seen.append((q, mask, bias))
        return real(q, k, v, mask=mask, bias=bias, backend=backend)

    monkeypatch.setattr(attn_mod, "attention", recording)
    b, c, t, h, w = 2, 16, 5, 3, 2
    block = TemporalAttention(c, head_dim=8, max_distance=2)
    x = torch.randn(b, c, t, h, w).contiguous(memory_format=torch.channels_last_3d)
    block(x, torch.ones(b, t, dtype=torch.bool))
    (q, mask, bias), = seen
    assert q.shape == (b, h * w * block.attn.heads, t, 8)
    assert q._base is not None  # a view (of the fused projection output), not a copy
    assert mask.shape == (b, 1, t, t) and bias.shape == (1, h * w * block.attn.heads, t, t)


def test_attention_inside_torch_compile_uses_sdpa_without_probing(monkeypatch):
    calls: list[str] = []
    for name in ("sdpa", "math"):
        spy(monkeypatch, name, calls)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    q, k, v, mask, bias = make_inputs()
    out = attention(q, k, v, mask=mask, bias=bias)
    assert calls == ["sdpa"] and not attn_mod._auto_choice  # no probe ran
    np.testing.assert_allclose(out.numpy(), reference_attention(q, k, v, mask, bias), atol=1e-5)


def test_temporal_attention_splits_more_groups_than_the_cuda_grid_takes(monkeypatch):
    torch.manual_seed(0)
    block = TemporalAttention(16, head_dim=8, max_distance=2)
    randomise_temporal(block)
    frame_mask = torch.tensor([[1, 1, 0, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    x = torch.randn(2, 16, 5, 3, 3).contiguous(memory_format=torch.channels_last_3d)
    whole = block(x, frame_mask)
    calls = []
    real = attn_mod.attention
    monkeypatch.setattr(attn_mod, "attention", lambda q, *a, **k: calls.append(q.shape[1]) or real(q, *a, **k))
    monkeypatch.setattr(attn_mod, "MAX_GROUPED_HEADS", 8)  # 9 positions x 2 heads -> chunks of 4 positions
    torch.testing.assert_close(block(x, frame_mask), whole, atol=1e-6, rtol=1e-6)
    assert calls == [8, 8, 2]
