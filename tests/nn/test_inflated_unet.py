"""Tests of latentvid/nn/inflated_unet.py and latentvid/nn/motion_module.py against diffusers' UNet2DConditionModel.

Tiny random SD-1.x-like and SD-2.x-like folders come from the ``tiny_sd`` fixture (tests/conftest.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from latentvid.diffusion.discrete import DiscreteSchedule
from latentvid.nn.attention import reset_backend_cache
from latentvid.nn.inflated_unet import InflatedUNet3D
from latentvid.nn.motion_module import load_motion_module, read_motion_module, save_motion_module
from latentvid.nn.sd_blocks import TemporalLayer

KINDS = ["sd1", "sd2"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convs: one thread is faster (tests/conftest.py)


def inputs(model: InflatedUNet3D, b: int = 2, t: int = 3, size: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, model.in_channels, t, size, size, generator=g)
    context = torch.randn(b, 7, model.context_dim, generator=g)
    return x, context


def randomize_temporal(model: InflatedUNet3D, seed: int = 1) -> None:
    """Give every temporal parameter random values (as after training), so the layers really mix frames."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.temporal_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (p if p.ndim == 0 else 0))


@pytest.mark.parametrize("learned_mix", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_at_init_equals_the_2d_model_on_every_frame(tiny_sd, kind, learned_mix):
    root = tiny_sd(kind)
    ref = UNet2DConditionModel.from_pretrained(root / "unet").eval()
    model = InflatedUNet3D(str(root), learned_mix=learned_mix, attention_backend="math").eval()
    x, context = inputs(model)
    steps = torch.tensor([0, 999]) if kind == "sd1" else torch.tensor([417, 58])
    logsnr = model.train_logsnrs[steps]  # the training timesteps' own noise levels
    with torch.no_grad():
        ours = model(x, logsnr, context, frame_mask=torch.ones(2, 3, dtype=torch.bool))
        for t in range(x.shape[2]):
            theirs = ref(x[:, :, t], steps, context).sample
            torch.testing.assert_close(ours[:, :, t], theirs, atol=1e-5, rtol=1e-5)
    assert theirs.abs().mean() > 0.1  # a real signal, not two zeros


@pytest.mark.parametrize("kind", KINDS)
def test_spatial_layers_hold_exactly_the_image_models_weights(tiny_sd, kind):
    root = tiny_sd(kind)
    model = InflatedUNet3D(str(root))
    file = load_file(str(root / "unet" / "diffusion_pytorch_model.safetensors"))
    spatial = {k: v for k, v in model.state_dict().items() if not model.is_temporal(k)}
    assert set(spatial) == set(file), "the spatial keys are the diffusers keys, no mapping"
    for k, v in file.items():
        assert torch.equal(spatial[k], v), k
    assert {id(p) for p in model.spatial_parameters()} | {id(p) for p in model.temporal_parameters()} == {
        id(p) for p in model.parameters()}
    assert not {id(p) for p in model.spatial_parameters()} & {id(p) for p in model.temporal_parameters()}
    temporal_keys = model.temporal_state_dict()
    assert temporal_keys and all(("temporal" in k) or k.startswith("fps_embed.") for k in temporal_keys)


def test_logsnr_to_timestep_goes_through_the_image_models_schedule(tiny_sd):
    root = tiny_sd("sd1")
    model = InflatedUNet3D(str(root))
    schedule = DiscreteSchedule(pretrained=str(root))
    # the network's table (from diffusers' DDPMScheduler) and DiscreteSchedule's (our float64 math) agree
    torch.testing.assert_close(model.train_logsnrs, schedule.train_logsnrs(), atol=2e-4, rtol=1e-5)
    n = torch.arange(1000)
    assert torch.equal(model.timestep_from_logsnr(model.train_logsnrs[n]), n.double())
    # what LatentDiffusion feeds it: float32 logSNR of t on DiscreteSchedule's grid
    lam = schedule.logsnr((n.float() / 999))
    torch.testing.assert_close(model.timestep_from_logsnr(lam), n.double(), atol=2e-2, rtol=0)
    mid = model.timestep_from_logsnr(0.5 * (model.train_logsnrs[10:11] + model.train_logsnrs[11:12]))
    assert 10.0 < mid.item() < 11.0
    ends = model.timestep_from_logsnr(torch.tensor([float("inf"), 30.0, -30.0, float("-inf")]))
    assert ends.tolist() == [0.0, 0.0, 999.0, 999.0]


def test_the_time_embedding_equals_sds_at_integer_timesteps(tiny_sd):
    root = tiny_sd("sd2")
    ref = UNet2DConditionModel.from_pretrained(root / "unet").eval()
    model = InflatedUNet3D(str(root))
    steps = torch.tensor([0, 1, 250, 999])
    from latentvid.nn.layers import sinusoidal_embedding

    with torch.no_grad():
        ours = model.time_embedding(sinusoidal_embedding(model.timestep_from_logsnr(model.train_logsnrs[steps]), 32))
        theirs = ref.time_embedding(ref.time_proj(steps))
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


def test_temporal_layers_mix_frames_but_never_read_masked_ones(tiny_sd):
    model = InflatedUNet3D(str(tiny_sd("sd1")), attention_backend="math").eval()
    randomize_temporal(model)
    x, context = inputs(model, b=2, t=4)
    logsnr = torch.tensor([0.0, 2.0])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    with torch.no_grad():
        out = model(x, logsnr, context, frame_mask=mask)
        changed = x.clone()
        changed[:, :, 2] += 1.0  # frame 2 is valid in clip 0, masked in clip 1
        changed[0, :, 3] = 50.0  # a masked frame of clip 0
        out2 = model(changed, logsnr, context, frame_mask=mask)
        # clip 0: frame 0 sees valid frame 2 (two temporal convs + attention reach it)
        assert (out2[0, :, 0] - out[0, :, 0]).abs().max() > 1e-3
        # clip 1 is an image: frame 0 is untouched by anything in frames 1..3, and equals a one-frame video
        torch.testing.assert_close(out2[1, :, 0], out[1, :, 0], atol=1e-6, rtol=1e-6)
        single = model(x[1:, :, :1], logsnr[1:], context[1:])
        torch.testing.assert_close(out[1:, :, :1], single, atol=1e-5, rtol=1e-5)
        # clip 0 with only its masked frame 3 replaced by garbage: its valid frames 0..2 do not change
        garbage = x.clone()
        garbage[0, :, 3] = 50.0
        torch.testing.assert_close(model(garbage, logsnr, context, frame_mask=mask)[0, :, :3], out[0, :, :3],
                                   atol=1e-6, rtol=1e-6)


def test_alpha_mixing_is_learned_per_layer_and_switchable(tiny_sd):
    root = str(tiny_sd("sd1"))
    mixed = InflatedUNet3D(root, mix_init=0.25)
    layers = [m for m in mixed.modules() if isinstance(m, TemporalLayer)]
    assert layers and all(abs(m.alpha.item() - 0.25) < 1e-6 for m in layers)
    plain = InflatedUNet3D(root, learned_mix=False)
    assert all(m.alpha is None for m in plain.modules() if isinstance(m, TemporalLayer))
    assert len(plain.temporal_parameters()) == len(mixed.temporal_parameters()) - len(layers)
    # with alpha -> 1 the temporal layers are bypassed even when they are not identities
    randomize_temporal(mixed)
    with torch.no_grad():
        for m in layers:
            m.mix_logit.fill_(30.0)
        mixed.fps_embed.mlp[-1].weight.zero_()
        mixed.fps_embed.mlp[-1].bias.zero_()
    fresh = InflatedUNet3D(root)
    x, context = inputs(fresh)
    with torch.no_grad():
        torch.testing.assert_close(mixed(x, torch.zeros(2), context), fresh(x, torch.zeros(2), context),
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="mix_init"):
        InflatedUNet3D(root, mix_init=1.0)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_sd, caplog):
    root = str(tiny_sd("sd1"))
    grads = []
    reset_backend_cache()  # "auto" probes its kernels inside the first (checkpointed) forward
    for ckpt in (True, False):
        model = InflatedUNet3D(root, gradient_checkpointing=ckpt, attention_backend="auto" if ckpt else "math").train()
        randomize_temporal(model)
        x, context = inputs(model, t=2)
        model(x, torch.tensor([1.0, -1.0]), context, fps=torch.tensor([8.0, 24.0])).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert "failed" not in caplog.text, "recomputation must not make attention() drop a backend"


def _copy_sd(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_unexpected_and_misshaped_keys_are_named(tiny_sd, tmp_path):
    root = _copy_sd(tiny_sd("sd1"), tmp_path / "sd")
    file = root / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(file))
    state.pop("mid_block.resnets.1.conv2.weight")
    state["down_blocks.0.extra_layer.weight"] = torch.zeros(3)
    state["conv_in.bias"] = torch.zeros(5)
    save_file(state, str(file))
    with pytest.raises(ValueError) as err:
        InflatedUNet3D(str(root))
    msg = str(err.value)
    assert "missing keys ['mid_block.resnets.1.conv2.weight']" in msg
    assert "unexpected keys ['down_blocks.0.extra_layer.weight']" in msg
    assert "conv_in.bias: file (5,) vs model (32,)" in msg
    file.unlink()
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        InflatedUNet3D(str(root))


def test_unsupported_or_missing_configs_are_named(tiny_sd, tmp_path):
    with pytest.raises(FileNotFoundError, match="unet/config.json"):
        InflatedUNet3D(str(tmp_path / "nowhere"))
    root = _copy_sd(tiny_sd("sd1"), tmp_path / "sd")
    cfg_file = root / "unet" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg, "addition_embed_type": "text_time"}))
    with pytest.raises(ValueError, match="addition_embed_type='text_time'"):
        InflatedUNet3D(str(root))
    cfg_file.write_text(json.dumps({**cfg, "down_block_types": ["SimpleCrossAttnDownBlock2D", "DownBlock2D"]}))
    with pytest.raises(ValueError, match="SimpleCrossAttnDownBlock2D"):
        InflatedUNet3D(str(root))
    cfg_file.write_text(json.dumps(cfg))
    (root / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        InflatedUNet3D(str(root))


def test_bad_inputs_name_the_argument(tiny_sd):
    model = InflatedUNet3D(str(tiny_sd("sd1")))
    x, context = inputs(model)
    lam = torch.zeros(2)
    with pytest.raises(ValueError, match="context must be"):
        model(x, lam, context[..., :5])
    with pytest.raises(ValueError, match="H=15"):
        model(x[..., :15, :], lam, context)
    with pytest.raises(ValueError, match="frame_mask"):
        model(x, lam, context, frame_mask=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="fps"):
        InflatedUNet3D(str(tiny_sd("sd1")), fps_conditioning=False)(x, lam, context, fps=torch.ones(2))


def test_motion_module_round_trip_and_transfer(tiny_sd, tmp_path):
    sd_a, sd_b = str(tiny_sd("sd1", seed=0)), str(tiny_sd("sd1", seed=1))  # same layout, other weights
    trained = InflatedUNet3D(sd_a, attention_backend="math").eval()
    randomize_temporal(trained)
    path = save_motion_module(trained, tmp_path / "motion" / "module.safetensors")
    state, meta = read_motion_module(path)
    assert set(state) == set(trained.temporal_state_dict())
    assert meta["structure"]["block_out_channels"] == [32, 64] and meta["image_model"] == sd_a
    assert path.stat().st_size < 0.5 * (Path(sd_a) / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert not list(path.parent.glob(".*.tmp")), "written atomically, no temporary left behind"

    x, context = inputs(trained)
    lam, fps = torch.tensor([0.5, -3.0]), torch.tensor([8.0, 12.0])
    fresh = InflatedUNet3D(sd_a, attention_backend="math").eval()
    with torch.no_grad():
        before = fresh(x, lam, context, fps=fps)
        load_motion_module(fresh, path)
        assert torch.equal(fresh(x, lam, context, fps=fps), trained(x, lam, context, fps=fps))
        assert not torch.allclose(before, trained(x, lam, context, fps=fps))
    via_config = InflatedUNet3D(sd_a, motion_module=str(path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(via_config(x, lam, context, fps=fps), trained(x, lam, context, fps=fps))

    other = InflatedUNet3D(sd_b, motion_module=str(path))
    for k, v in trained.temporal_state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k
    assert not torch.equal(other.conv_in.weight, trained.conv_in.weight)  # its own image model

    half = save_motion_module(trained, tmp_path / "half.safetensors", dtype=torch.float16)
    assert all(v.dtype == torch.float16 for v in read_motion_module(half)[0].values())
    assert half.stat().st_size < 0.6 * path.stat().st_size
    load_motion_module(fresh, half)  # cast back to the model's float32
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, lam, context, fps=fps), trained(x, lam, context, fps=fps),
                                   atol=1e-2, rtol=1e-2)

    with pytest.raises(ValueError, match="block_out_channels"):
        load_motion_module(InflatedUNet3D(str(tiny_sd("sd2"))), path)
    with pytest.raises(ValueError, match="learned_mix"):
        load_motion_module(InflatedUNet3D(sd_a, learned_mix=False), path)
    state.pop(next(iter(state)))
    save_file(state, str(tmp_path / "broken.safetensors"), metadata={k: v if isinstance(v, str) else json.dumps(v)
                                                                      for k, v in meta.items()})
    with pytest.raises(ValueError, match="missing keys"):
        load_motion_module(fresh, tmp_path / "broken.safetensors")
    save_file(state, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a latentvid motion module"):
        load_motion_module(fresh, tmp_path / "plain.safetensors")
