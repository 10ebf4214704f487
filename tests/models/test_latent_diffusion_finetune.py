"""LatentDiffusion's image-model fine-tuning options (latentvid/models/latent_diffusion.py): frozen or
scaled spatial learning rates, the prediction type taken from a pretrained schedule.

Tiny random Stable Diffusion folders come from the ``tiny_sd`` fixture (tests/conftest.py).
"""

from __future__ import annotations

import pytest
import torch

from latentvid.conditioning import HFCLIPTextEncoder
from latentvid.diffusion import CosineSchedule
from latentvid.diffusion.discrete import DiscreteSchedule
from latentvid.models.latent_diffusion import LatentDiffusion
from latentvid.nn.diffusers_vae import DiffusersImageVAE
from latentvid.nn.inflated_unet import InflatedUNet3D
from latentvid.nn.unet3d import UNet3D


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convs: one thread is faster (tests/conftest.py)


def sd_model(root, **kwargs) -> LatentDiffusion:
    root = str(root)
    args = dict(
        unet=InflatedUNet3D(root, attention_backend="math"), text_encoder=HFCLIPTextEncoder(root, max_length=16),
        first_stage=DiffusersImageVAE(root), schedule=DiscreteSchedule(pretrained=root), target=None,
        lr=1e-3, warmup_steps=1, caption_dropout=0.0,
    )
    return LatentDiffusion(**{**args, **kwargs})


def batch(b: int = 2, t: int = 3, size: int = 16) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "video": torch.rand(b, 3, t, size, size, generator=g) * 2 - 1,
        "caption": ["a red circle moving left", "a blue square moving up"][:b],
        "fps": torch.full((b,), 8.0),
        "frame_mask": torch.tensor([[True] * t, [True] + [False] * (t - 1)])[:b],  # a clip and an image
    }


def train_steps(model: LatentDiffusion, steps: int) -> torch.optim.Optimizer:
    opt = model.configure_optimizers()["optimizer"]
    g = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        loss = model.diffusion_loss(batch(), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


def test_frozen_spatial_training_changes_only_temporal_parameters(tiny_sd):
    model = sd_model(tiny_sd("sd1"), spatial_lr_scale=None)
    unet = model.unet
    before = {name: p.detach().clone() for name, p in unet.named_parameters()}
    assert not any(p.requires_grad for p in unet.spatial_parameters())
    assert all(p.requires_grad for p in unet.temporal_parameters())
    opt = train_steps(model, 3)
    assert [g["name"] for g in opt.param_groups] == ["temporal"]
    temporal = {id(p) for p in unet.temporal_parameters()}
    n_spatial = n_temporal = 0
    for name, p in unet.named_parameters():
        if id(p) in temporal:
            n_temporal += 1
            assert not torch.equal(p, before[name]), f"temporal parameter {name} did not train"
        else:
            n_spatial += 1
            assert torch.equal(p, before[name]), f"frozen spatial parameter {name} changed"
    assert n_spatial > 50 and n_temporal > 20
    for p in (*model.text_encoder.parameters(), *model.first_stage.parameters()):
        assert not p.requires_grad


def test_spatial_lr_scale_makes_two_groups_and_trains_everything(tiny_sd):
    model = sd_model(tiny_sd("sd1"), spatial_lr_scale=0.1)
    before = {name: p.detach().clone() for name, p in model.unet.named_parameters()}
    opt = train_steps(model, 2)
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"temporal", "spatial"}
    assert groups["temporal"]["initial_lr"] == pytest.approx(1e-3)
    assert groups["spatial"]["initial_lr"] == pytest.approx(1e-4)
    in_groups = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(in_groups) == sorted(id(p) for p in model.unet.parameters())  # each exactly once
    assert {id(p) for p in groups["spatial"]["params"]} == {id(p) for p in model.unet.spatial_parameters()}
    changed = [not torch.equal(p, before[n]) for n, p in model.unet.named_parameters()]
    assert sum(changed) > 0.9 * len(changed)  # (a few get no gradient in two steps, e.g. zero-init paths)
    assert not torch.equal(model.unet.conv_in.weight, before["conv_in.weight"])


@pytest.mark.parametrize("kind,target", [("sd1", "eps"), ("sd2", "v")])
def test_target_null_takes_the_image_models_prediction_type(tiny_sd, kind, target):
    model = sd_model(tiny_sd(kind))
    assert model.target == target
    assert sd_model(tiny_sd(kind), target="x0").target == "x0"  # an explicit target wins
    video = model.sample(["a red circle"], num_frames=2, height=16, width=16, steps=2,
                         generator=torch.Generator().manual_seed(0))
    assert video.shape == (1, 3, 2, 16, 16) and bool(video.isfinite().all())


def test_bad_fine_tuning_options_are_named(tiny_sd):
    root = tiny_sd("sd1")
    with pytest.raises(ValueError, match="prediction_type"):
        sd_model(root, schedule=CosineSchedule())
    with pytest.raises(ValueError, match="prediction_type"):
        sd_model(root, schedule=DiscreteSchedule())
    with pytest.raises(ValueError, match="spatial_lr_scale.*UNet3D"):
        sd_model(root, target="eps", spatial_lr_scale=0.0,
                 unet=UNet3D(in_channels=4, out_channels=4, model_channels=8, channel_mult=(1,), attention_levels=(),
                             context_dim=32, norm_groups=4, head_dim=8))
    with pytest.raises(ValueError, match="spatial_lr_scale must be >= 0"):
        sd_model(root, spatial_lr_scale=-1.0)


@pytest.mark.parametrize("spatial_lr_scale", [None, 0.1])
def test_checkpoints_leave_out_the_weights_the_sd_folder_reloads(tiny_sd, spatial_lr_scale):
    """Frozen weights that come from the SD folder (text tower, VAE, and the U-Net's spatial layers
    when frozen) are not copied into every checkpoint; loading refills them from the folder."""
    root = tiny_sd("sd1")
    model = sd_model(root, spatial_lr_scale=spatial_lr_scale)
    train_steps(model, 1)
    full = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = {"state_dict": dict(full)}
    model.on_save_checkpoint(ckpt)
    kept = set(ckpt["state_dict"])
    assert not any(k.startswith(("text_encoder.", "first_stage.")) for k in kept)
    spatial = {f"unet.{n}" for n, _ in model.unet.named_parameters() if not model.unet.is_temporal(n)}
    temporal = {f"unet.{n}" for n, _ in model.unet.named_parameters() if model.unet.is_temporal(n)}
    assert temporal <= kept
    assert (spatial & kept == set()) if spatial_lr_scale is None else (spatial <= kept)  # trained: must be kept
    fresh = sd_model(root, spatial_lr_scale=spatial_lr_scale)
    fresh.on_load_checkpoint(ckpt)
    fresh.load_state_dict(ckpt["state_dict"], strict=True)
    for k, v in full.items():
        torch.testing.assert_close(fresh.state_dict()[k], v)
