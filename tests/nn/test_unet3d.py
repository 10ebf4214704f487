"""Tests of latentvid/nn/unet3d.py: space-time factorization, frame masks, checkpointing, shapes."""

from __future__ import annotations

import math
import os

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


def test_checkpointing_works_when_the_first_attention_call_probes_the_backend():
    """With "auto" the first attention call probes backends; inside a checkpointed block that probe
    must not be seen by the checkpoint's bookkeeping, and the checkpoint's early-stop signal during
    recomputation must not mark SDPA as broken."""
    from latentvid.nn import attention as attention_mod

    torch.manual_seed(0)
    ckpt = tiny_unet(gradient_checkpointing=True).train()
    x, cond = torch.randn(B, C, T, S, S), conditions()
    frame_mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    attention_mod.reset_backend_cache()  # the first call below probes, inside a checkpointed block
    out = ckpt(x, frame_mask=frame_mask, **cond)
    out.square().mean().backward()
    assert all(p.grad is not None for p in ckpt.parameters() if p.requires_grad)
    assert not attention_mod._broken, f"a backend was wrongly marked broken: {attention_mod._broken}"


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
    with pytest.raises(ValueError, match=r"UNet3D: H=10 and W=8 must be divisible by .* = 4"):
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


# ---- speed options: layouts, checkpointing granularity, frame-mask short cut, compile -------------


def train_step(model: UNet3D, x, cond, frame_mask=None, seed: int = 123):
    """Output, loss and parameter gradients of one training-mode forward and backward."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # same dropout masks
    out = model(x, frame_mask=frame_mask, **cond)
    loss = (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum()
    loss.backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_step(a, b, tol: float = 1e-5) -> None:
    torch.testing.assert_close(a[0], b[0], atol=tol, rtol=tol)
    assert a[1].keys() == b[1].keys() and len(a[1]) > 10
    for name in a[1]:
        scale = max(1.0, a[1][name].abs().max().item())
        err = (a[1][name] - b[1][name]).abs().max().item()
        assert err <= tol * scale, f"{name}: gradient differs by {err:.3g} (magnitude {scale:.3g})"


def twin(model_kwargs: dict, reference: UNet3D, **overrides) -> UNet3D:
    other = tiny_unet(**{**model_kwargs, **overrides})
    other.load_state_dict(reference.state_dict())
    return other


SPEED_KW = dict(ff_mult=2, dropout=0.1, num_extra_conditions=1)
EXTRA = torch.tensor([[0.5], [-2.0]])


def test_channels_last_network_equals_the_standard_layout_network():
    torch.manual_seed(0)
    kwargs = dict(SPEED_KW, dropout=0.0)  # dropout draws its mask in memory order: layouts differ there
    fast = tiny_unet(**kwargs)
    randomise_temporal(fast)
    standard = twin(kwargs, fast, channels_last=False)
    assert fast.input_conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert standard.input_conv.weight.is_contiguous()
    x, cond = torch.randn(B, C, T, S, S), dict(conditions(), extra=EXTRA)
    frame_mask = torch.tensor([[True, True, False, True], [True, False, False, False]])
    assert_same_step(train_step(standard, x, cond, frame_mask), train_step(fast, x, cond, frame_mask))
    out = fast.eval()(x, **cond)
    assert out.is_contiguous()  # callers get the usual layout back


def test_feed_forward_layers_follow_ff_mult():
    from latentvid.nn.layers import FeedForward

    plain, with_ff = tiny_unet(), tiny_unet(ff_mult=3)
    temporal = sum(isinstance(m, TemporalAttention) for m in with_ff.modules())
    ffs = [m for m in with_ff.modules() if isinstance(m, FeedForward)]
    assert not any(isinstance(m, FeedForward) for m in plain.modules())
    assert len(ffs) == 2 * temporal  # one after the cross-attention, one after the temporal attention
    extra = sum(p.numel() for p in with_ff.parameters()) - sum(p.numel() for p in plain.parameters())
    # each: LayerNorm (2C) + Linear C -> 6C (6C^2 + 6C) + Linear 3C -> C (3C^2 + C)
    assert extra == sum(9 * m.norm.normalized_shape[0] ** 2 + 9 * m.norm.normalized_shape[0] for m in ffs)


def test_all_valid_frame_mask_takes_the_mask_free_path(monkeypatch):
    import latentvid.nn.attention as attn_mod

    torch.manual_seed(0)
    model = tiny_unet()
    randomise_temporal(model)
    masks = []
    real = attn_mod.attention
    monkeypatch.setattr(attn_mod, "attention", lambda *a, **k: masks.append(k.get("mask")) or real(*a, **k))
    x, cond = torch.randn(B, C, T, S, S), conditions()
    with torch.no_grad():
        out_all_valid = model(x, frame_mask=torch.ones(B, T, dtype=torch.bool), **cond)
        temporal_masks = masks[:]
        masks.clear()
        out_none = model(x, **cond)
    torch.testing.assert_close(out_all_valid, out_none, atol=0, rtol=0)
    self_masks = [m for m in temporal_masks if m is None or m.shape[-1] == T]
    assert self_masks and all(m is None for m in self_masks)  # no frame mask reached the temporal layers


@pytest.mark.parametrize("mode", ["attention", "block"])
def test_checkpointing_granularities_give_identical_steps(monkeypatch, mode):
    torch.manual_seed(0)
    plain = tiny_unet(**SPEED_KW)
    randomise_temporal(plain)
    ckpt = twin(SPEED_KW, plain, gradient_checkpointing=mode)
    calls = []
    real_checkpoint = unet_mod.checkpoint
    monkeypatch.setattr(unet_mod, "checkpoint", lambda fn, *a, **k: calls.append(type(fn)) or real_checkpoint(fn, *a, **k))
    x, cond = torch.randn(B, C, T, S, S), dict(conditions(), extra=EXTRA)
    frame_mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    assert_same_step(train_step(plain, x, cond, frame_mask), train_step(ckpt, x, cond, frame_mask))
    if mode == "block":
        assert set(calls) == {unet_mod._Stage} and len(calls) == len(ckpt.down) + 1 + len(ckpt.up)
    else:
        expected = [type(m) for m in ckpt.modules() if isinstance(m, unet_mod._ATTENTION_LAYERS)]
        assert sorted(c.__name__ for c in calls) == sorted(c.__name__ for c in expected)
    calls.clear()
    with torch.no_grad():  # no recomputation where nothing is saved for backward
        ckpt(x, extra=EXTRA, **conditions())
    assert not calls


def test_old_checkpoint_keys_load_into_the_fused_network():
    from latentvid.nn.attention import MultiHeadAttention, split_projections

    torch.manual_seed(0)
    model = tiny_unet()
    randomise_temporal(model)
    legacy = {}
    for key, value in model.state_dict().items():
        prefix, found, _ = key.rpartition(".to_qkv.")
        if found:  # write the projection as the three matrices earlier versions stored
            heads = model.get_submodule(prefix).heads
            for role, w in zip("qkv", split_projections(value, heads, 3)):
                legacy[f"{prefix}.to_{role}.weight"] = w.clone()
        elif ".to_kv." in key:
            prefix = key.rpartition(".to_kv.")[0]
            for role, w in zip("kv", split_projections(value, model.get_submodule(prefix).heads, 2)):
                legacy[f"{prefix}.to_{role}.weight"] = w.clone()
        else:
            legacy[key] = value.clone()
    assert any(".to_k." in k for k in legacy) and not any("qkv" in k or "to_kv" in k for k in legacy)
    fresh = tiny_unet()
    assert any(isinstance(m, MultiHeadAttention) for m in fresh.modules())
    fresh.load_state_dict(legacy)  # strict
    x, cond = torch.randn(B, C, T, S, S), conditions()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, **cond), model(x, **cond))


def test_speed_options_are_validated():
    with pytest.raises(ValueError, match="gradient_checkpointing must be"):
        tiny_unet(gradient_checkpointing="layers")
    with pytest.raises(ValueError, match="compile_mode must be"):
        tiny_unet(compile_mode="fastest")
    with pytest.raises(ValueError, match="ff_mult must be"):
        tiny_unet(ff_mult=-1)
    assert tiny_unet(gradient_checkpointing=True).gradient_checkpointing == "block"
    assert tiny_unet(gradient_checkpointing=False).gradient_checkpointing == "none"


@pytest.mark.slow
def test_compiled_network_equals_eager_and_copies_cleanly(monkeypatch):
    """compile=True traces the whole body in one graph (AOTAutograd, eager kernels: quick on CPU)."""
    import copy

    real_compile = torch.compile
    compiled = []

    def aot_eager_compile(fn, **kwargs):
        compiled.append(kwargs)
        return real_compile(fn, backend="aot_eager", fullgraph=True)

    monkeypatch.setattr(torch, "compile", aot_eager_compile)
    torch.manual_seed(0)
    eager = tiny_unet(**SPEED_KW)
    randomise_temporal(eager)
    comp = twin(SPEED_KW, eager, compile=True, compile_mode="default")
    x, cond = torch.randn(B, C, T, S, S), dict(conditions(), extra=EXTRA)
    frame_mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    assert_same_step(train_step(eager, x, cond, frame_mask), train_step(comp, x, cond, frame_mask))
    assert compiled == [{"mode": "default"}]
    # deepcopy (EMA) gets its own network: it does not share the original's compiled function
    clone = copy.deepcopy(comp)
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(0.1)
        clone.eval(), comp.eval()
        assert not torch.allclose(clone(x, **cond), comp(x, **cond))


INDUCTOR_ON_CPU = os.environ.get("LATENTVID_TEST_INDUCTOR_CPU") == "1"


@pytest.mark.parametrize(
    "device",
    [
        pytest.param("cpu", marks=[pytest.mark.slow, pytest.mark.skipif(
            not INDUCTOR_ON_CPU, reason="inductor's CPU code generation took 280 s for this tiny U-Net on 2 shared "
            "cores (set LATENTVID_TEST_INDUCTOR_CPU=1 to run it); the aot_eager test above covers tracing")]),
        pytest.param("cuda", marks=pytest.mark.gpu),
    ],
)
def test_inductor_compiled_network_equals_eager(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    kwargs = dict(SPEED_KW, dropout=0.0)  # inductor draws dropout masks with its own generator
    with torch.device(device):
        eager = tiny_unet(**kwargs)
        randomise_temporal(eager)
        comp = twin(kwargs, eager, compile=True)
        x = torch.randn(B, C, T, S, S)
    cond = {k: v.to(device) for k, v in dict(conditions(), extra=EXTRA).items()}
    frame_mask = torch.tensor([[True, True, True, False], [True, False, False, False]], device=device)
    assert_same_step(train_step(eager, x, cond, frame_mask), train_step(comp, x, cond, frame_mask), tol=1e-4)


@pytest.mark.parametrize("recipe", ["base.yaml", "base-gpu.yaml"])
def test_recipes_unet_arguments_build_the_network(recipe):
    """The recipes' unet init_args mirror the constructor (the GPU one sets every speed knob)."""
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[2] / "configs" / recipe
    unet = yaml.safe_load(path.read_text())["model"]["init_args"]["unet"]
    assert unet["class_path"] == "latentvid.nn.unet3d.UNet3D"
    args = unet["init_args"]
    if recipe == "base-gpu.yaml":
        assert {"gradient_checkpointing", "compile", "compile_mode", "channels_last", "ff_mult"} <= set(args)
    with torch.device("meta"):
        model = UNet3D(**args)
    assert model.gradient_checkpointing in unet_mod.CHECKPOINTING


def test_pool_tokens_against_a_loop():
    g = torch.Generator().manual_seed(4)
    context = torch.randn(3, 6, 5, generator=g)
    mask = torch.tensor([[True] * 6, [True, True, True, False, False, False], [True, False, False, False, False, False]])
    for i, row in enumerate(mask):
        real = context[i, row]  # (n_real, D)
        torch.testing.assert_close(unet_mod.pool_tokens(context, mask, "mean")[i], real.mean(0))
        torch.testing.assert_close(unet_mod.pool_tokens(context, mask, "last")[i], real[-1])
    torch.testing.assert_close(unet_mod.pool_tokens(context, None, "mean"), context.mean(1))


@torch.no_grad()
def test_pooled_text_path_starts_as_the_network_without_it_then_conditions_every_block():
    torch.manual_seed(0)
    plain = tiny_unet()
    torch.manual_seed(0)
    pooled = tiny_unet(text_pooling="mean")
    missing = pooled.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("text_embed.") for k in missing)
    x = torch.randn(B, C, T, S, S, generator=torch.Generator().manual_seed(2))
    cond = conditions()
    torch.testing.assert_close(pooled(x, **cond), plain(x, **cond))  # zero-initialised output layer
    # trained (non-zero) pooled path, no cross-attention: the caption still changes every frame's output
    text_only = tiny_unet(text_pooling="mean", cross_attention=False)
    nn.init.normal_(text_only.text_embed[-1].weight, std=0.5)
    other = dict(cond, context=cond["context"] + 1.0)
    delta = (text_only(x, **cond) - text_only(x, **other)).abs().amax(dim=(0, 1, 3, 4))  # (T,)
    assert (delta > 1e-3).all()
    assert not any(isinstance(m, unet_mod.CrossAttention) for m in text_only.modules())


def test_text_options_are_validated():
    with pytest.raises(ValueError, match="text_pooling"):
        tiny_unet(text_pooling="max")
    with pytest.raises(ValueError, match="needs text"):
        tiny_unet(context_dim=None, text_pooling="mean")
    with pytest.raises(ValueError, match="ignore the text"):
        tiny_unet(cross_attention=False)


def test_position_embedding_starts_as_the_network_without_it():
    torch.manual_seed(0)
    plain = tiny_unet()
    for mode in ("frame", "spacetime"):
        model = tiny_unet(position_embedding=mode)
        missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
        assert unexpected == [] and missing and all(k.startswith("position_embed.") for k in missing)
        x, logsnr = torch.randn(B, C, T, S, S), torch.randn(B)
        ctx = torch.randn(B, CTX_LEN, CTX_DIM)
        with torch.no_grad():
            torch.testing.assert_close(model(x, logsnr, ctx), plain(x, logsnr, ctx))


def test_spacetime_positions_vary_along_every_axis_and_frame_positions_only_along_time():
    torch.manual_seed(0)
    for mode, varying in (("frame", {2}), ("spacetime", {2, 3, 4})):
        model = tiny_unet(position_embedding=mode)
        for embed in model.position_embed.axes:  # as after training: non-zero output layers
            nn.init.normal_(embed.mlp[-1].weight)
        pos = model.position_embed((3, 4, 5), torch.float32, torch.device("cpu")).expand(1, 16, 3, 4, 5)
        for dim in (2, 3, 4):
            spread = float((pos - pos.mean(dim, keepdim=True)).abs().max())
            assert (spread > 1e-3) == (dim in varying), (mode, dim, spread)


def _fit_pure_noise_motion(position_embedding: str, steps: int = 60) -> tuple[float, float]:
    """Train on pure noise (logSNR -20) to predict a bar moving right for one caption and left for the
    other; return (final x0 error, error of the best prediction that is the same in every frame)."""
    torch.manual_seed(0)
    model = UNet3D(in_channels=1, out_channels=1, model_channels=16, channel_mult=(1,), num_res_blocks=1,
                   attention_levels=(0,), head_dim=8, context_dim=8, norm_groups=4, temporal_conv=False,
                   fps_conditioning=False, position_embedding=position_embedding)
    t, s = 3, 4
    x0 = torch.zeros(2, 1, t, s, s)
    for k in range(t):
        x0[0, 0, k, :, k] = 1.0  # caption 0: the bar moves right ...
        x0[1, 0, k, :, s - 1 - k] = 1.0  # ... caption 1: the same clip played backwards
    context = torch.randn(2, 2, 8, generator=torch.Generator().manual_seed(1))
    which = torch.arange(16) % 2
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        pred = model(torch.randn(16, 1, t, s, s), torch.full((16,), -20.0), context[which])
        loss = (pred - x0[which]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        err = float((model(torch.randn(16, 1, t, s, s), torch.full((16,), -20.0), context[which]) - x0[which]).pow(2).mean())
    return err, float((x0 - x0.mean(2, keepdim=True)).pow(2).mean())


def test_frame_positions_let_a_caption_set_the_motion_at_pure_noise():
    # At pure noise the best prediction is the caption's mean clip. Here the two captions' clips
    # are each other's time reversal, so a network that cannot tell frames apart (temporal
    # attention alone, relative positions only) can do no better than the same frame everywhere,
    # whichever caption it reads; with the frame-index embedding it learns each caption's motion.
    err_none, blind = _fit_pure_noise_motion("none")
    err_frame, _ = _fit_pure_noise_motion("frame")
    assert err_none > 0.9 * blind
    assert err_frame < 0.2 * blind


def test_position_embedding_is_validated():
    with pytest.raises(ValueError, match="position_embedding must be one of"):
        tiny_unet(position_embedding="absolute")
