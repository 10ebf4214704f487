"""LatentDiffusion with known frames: masked-frame training, starting from a base checkpoint, and sampling
with the trained conditioning or the training-free methods under CFG and every sampler."""

import pytest
import torch
from torch import nn

from latentvid.conditioning.text import OpenCLIPTextEncoder
from latentvid.diffusion.frame_masks import MASK_KINDS, FrameMasks
from latentvid.diffusion.samplers import SAMPLERS
from latentvid.models.latent_diffusion import FRAME_METHODS, LatentDiffusion
from latentvid.nn.unet3d import UNet3D

from .test_latent_diffusion import shapes_batch


pytestmark = pytest.mark.usefixtures("one_thread")


def model(frame_conditioning: bool = True, seed: int = 0, **kwargs) -> LatentDiffusion:
    torch.manual_seed(seed)
    with pytest.warns(UserWarning, match="RANDOM"):
        text = OpenCLIPTextEncoder(random_width=32, random_layers=1, random_heads=2, max_length=16)
    unet = UNet3D(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), head_dim=16,
                  context_dim=32, norm_groups=4, frame_conditioning=frame_conditioning)
    return LatentDiffusion(unet, text, **kwargs)


def only(kind: str) -> FrameMasks:
    return FrameMasks(**{k: float(k == kind) for k in MASK_KINDS})


class Spy(nn.Module):
    """Wraps a network: records the known frames it is given and can add ``bump`` to its output frame 0."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.calls, self.bump = net, [], 0.0
        for name in ("in_channels", "out_channels", "context_dim", "frame_conditioning", "fps_embed"):
            setattr(self, name, getattr(net, name))

    def forward(self, x, logsnr, **kw):
        self.calls.append({k: kw.get(k) for k in ("known", "known_mask")})
        out = self.net(x, logsnr, **kw).clone()
        out[:, :, 0] += self.bump
        return out


def test_training_gives_the_clean_known_frames_and_leaves_them_out_of_the_loss():
    m = model(frame_masks=only("first"), caption_dropout=0.0)
    m.unet = Spy(m.unet)
    batch = shapes_batch(n=4, t=4)
    batch["frame_mask"][3, 1:] = False  # a still: nothing to condition on
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    m.diffusion_loss(batch, generator=g())
    call = m.unet.calls[-1]
    assert torch.equal(call["known_mask"], torch.tensor([[1, 0, 0, 0]] * 3 + [[0, 0, 0, 0]], dtype=torch.bool))
    torch.testing.assert_close(call["known"], batch["video"])  # pixel space: z0 is the clip itself, clean
    # whatever the network predicts on the known frames does not count (the clips: frame 0 known) ...
    clips = {k: v[:3] for k, v in batch.items()}
    clips["caption"] = batch["caption"][:3]
    with torch.no_grad():
        loss = m.diffusion_loss(clips, generator=g())
        m.unet.bump = 100.0
        torch.testing.assert_close(m.diffusion_loss(clips, generator=g()), loss, rtol=0, atol=0)
        # ... while with no frame known (the "none" masks) frame 0 counts
        m.frame_masks = only("none")
        m.unet.bump = 0.0
        plain = m.diffusion_loss(clips, generator=g())
        m.unet.bump = 100.0
        assert float(m.diffusion_loss(clips, generator=g())) > float(plain) + 100.0


def test_frame_masks_need_a_frame_conditioned_network_and_plain_models_draw_none():
    with pytest.raises(ValueError, match="frame_conditioning"):
        model(frame_conditioning=False, frame_masks=FrameMasks())
    plain = model(frame_conditioning=False)
    assert plain.frame_masks is None and not plain.frame_conditioned
    plain.unet = Spy(plain.unet)
    plain.diffusion_loss(shapes_batch(n=2), generator=torch.Generator().manual_seed(0))
    assert plain.unet.calls[-1]["known"] is None


def test_init_from_loads_the_base_and_a_saved_checkpoint_forgets_it(tmp_path):
    base = model(frame_conditioning=False, seed=1).eval()
    with torch.no_grad():
        nn.init.normal_(base.unet.out_conv.weight, std=0.3)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": base.state_dict(), "hyper_parameters": {}}, ckpt)
    for where in (ckpt, tmp_path):  # the file, or the run root (its newest last*.ckpt)
        cond = model(seed=2, init_from=str(where)).eval()
        assert torch.count_nonzero(cond.unet.frame_input.weight) == 0
        z, logsnr = torch.randn(2, 3, 4, 16, 16), torch.tensor([-1.0, 2.0])
        ctx, cmask = base.encode_text(["a red circle moving left", ""])
        known, mask = torch.randn_like(z), torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
        with torch.no_grad():
            torch.testing.assert_close(cond.denoise(z, logsnr, ctx, cmask, known=known, known_mask=mask),
                                       base.denoise(z, logsnr, ctx, cmask), rtol=0, atol=0)
    checkpoint = {"hyper_parameters": {"init_from": str(ckpt), "lr": 1.0}, "state_dict": cond.state_dict()}
    cond.on_save_checkpoint(checkpoint)
    assert checkpoint["hyper_parameters"] == {"init_from": None, "lr": 1.0}
    other = UNet3D(model_channels=8, channel_mult=(1,), attention_levels=(), head_dim=8, context_dim=32, norm_groups=4)
    torch.save({"state_dict": {f"unet.{k}": v for k, v in other.state_dict().items()}}, ckpt)
    with pytest.raises(ValueError, match="do not fit"):
        model(init_from=str(ckpt))
    with pytest.raises(FileNotFoundError, match="missing"):
        model(init_from=str(tmp_path / "missing.ckpt"))


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_sampling_keeps_the_known_frames_with_every_method_sampler_and_cfg(sampler):
    m = model(sample_steps=3, clip_sample=1.0).eval()
    with torch.no_grad():  # as after training: every zero-initialised layer (frame input, temporal
        for p in m.unet.parameters():  # attention, output) open, so frames mix and known ones matter
            if p.abs().sum() == 0:
                p.normal_(std=0.3)
    m.unet = Spy(m.unet)
    known = torch.rand(2, 3, 5, 16, 16) * 1.6 - 0.8
    mask = torch.tensor([[1, 0, 0, 0, 0], [1, 0, 1, 0, 1]], dtype=torch.bool)
    captions = ["a red circle moving left", "a blue square moving up"]
    outs = {}
    for method in FRAME_METHODS:
        m.unet.calls.clear()
        g = torch.Generator().manual_seed(0)
        out = m.sample(captions, 5, 16, 16, sampler=sampler, guidance_scale=3.0, generator=g, known=known,
                       known_mask=mask, frames_method=method, frames_weight=4.0, eta=0.5)
        assert out.shape == (2, 3, 5, 16, 16)
        torch.testing.assert_close(out[:, :, 0], known[:, :, 0], atol=1e-5, rtol=0)
        torch.testing.assert_close(out[1, :, ::2], known[1, :, ::2], atol=1e-5, rtol=0)
        given = [c["known_mask"] for c in m.unet.calls]
        if method == "trained":  # every call (both CFG halves) gets the mask; the others give none
            assert given and all(torch.equal(k, torch.cat([mask, mask])) for k in given)
        else:
            assert all(k is None for k in given)
        outs[method] = out
    # the methods differ on the frames they generate
    assert not torch.allclose(outs["trained"][0, :, 1:], outs["replacement"][0, :, 1:])
    assert not torch.allclose(outs["guidance"][0, :, 1:], outs["replacement"][0, :, 1:])


def test_method_defaults_and_errors():
    cond, plain = model(sample_steps=2).eval(), model(frame_conditioning=False, sample_steps=2).eval()
    cond.unet, plain.unet = Spy(cond.unet), Spy(plain.unet)
    known, mask = torch.zeros(1, 3, 5, 16, 16), torch.tensor([[1, 0, 0, 0, 0]], dtype=torch.bool)
    cond.sample(["x"], 5, 16, 16, known=known, known_mask=mask)
    assert cond.unet.calls[-1]["known_mask"] is not None  # a conditioned model: trained by default
    plain.sample(["x"], 5, 16, 16, known=known, known_mask=mask)  # a plain one: guidance
    assert plain.unet.calls[-1]["known_mask"] is None
    with pytest.raises(ValueError, match="frame-conditioned"):
        plain.sample(["x"], 5, 16, 16, known=known, known_mask=mask, frames_method="trained")
    with pytest.raises(ValueError, match="frames method"):
        cond.sample(["x"], 5, 16, 16, known=known, known_mask=mask, frames_method="inpaint")
    with pytest.raises(ValueError, match="known latents must be"):
        cond.sample(["x"], 5, 16, 16, known=known[:, :, :4], known_mask=mask)
