"""The frame-conditioning option of UNet3D and DiT3D: known frames and their mask on the input channels,
through a zero-initialised layer of their own, so a base checkpoint loads and starts unchanged."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from latentvid.nn.dit import DiT3D
from latentvid.nn.unet3d import UNet3D

B, C, T, S = 2, 3, 4, 8


pytestmark = pytest.mark.usefixtures("one_thread")


def unet(**kw) -> UNet3D:
    return UNet3D(in_channels=C, out_channels=C, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                  attention_levels=(1,), head_dim=8, context_dim=12, max_temporal_distance=2, norm_groups=4, **kw)


def dit(patch=(1, 2, 2), **kw) -> DiT3D:
    return DiT3D(in_channels=C, out_channels=C, patch_size=patch, dim=32, depth=2, head_dim=16, context_dim=12,
                 attention_backend="math", **kw)


def trained(net: nn.Module) -> nn.Module:
    """Every weight random, the zero-initialised output / gate layers included (as after training)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(std=0.2)
    return net.eval()


def inputs(t: int = T, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(B, C, t, S, S, generator=g), logsnr=torch.tensor([-2.0, 3.0]),
                context=torch.randn(B, 5, 12, generator=g), fps=torch.tensor([8.0, 12.0]))


def known_frames(t: int = T, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    known = torch.randn(B, C, t, S, S, generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(B, t, dtype=torch.bool)
    mask[0, 0] = True  # image-to-video
    mask[1, ::2] = True  # every other frame
    return known, mask


NETS = {"unet": lambda **kw: unet(**kw), "dit": lambda **kw: dit(**kw), "dit_pt2": lambda **kw: dit((2, 2, 2), **kw)}


@pytest.mark.parametrize("kind", sorted(NETS))
@torch.no_grad()
def test_base_weights_load_and_the_conditioned_network_starts_unchanged(kind):
    base = trained(NETS[kind]())
    cond = NETS[kind](frame_conditioning=True).eval()
    missing, unexpected = cond.load_state_dict(base.state_dict(), strict=False)
    assert unexpected == [] and sorted(missing) == ["frame_input.bias", "frame_input.weight"]
    known, mask = known_frames()
    x = inputs()
    # known frames given (far from zero) or not: the base network's output exactly, because the new
    # input layer starts at zero (drop its zero init and this fails)
    torch.testing.assert_close(cond(**x, known=known * 10, known_mask=mask), base(**x), rtol=0, atol=0)
    torch.testing.assert_close(cond(**x), base(**x), rtol=0, atol=0)


@pytest.mark.parametrize("kind", sorted(NETS))
@torch.no_grad()
def test_trained_frame_input_reads_the_known_frames_and_nothing_else(kind):
    net = trained(NETS[kind](frame_conditioning=True))
    known, mask = known_frames()
    x = inputs()
    out = net(**x, known=known, known_mask=mask)
    assert not torch.allclose(out, net(**x)), "the known frames must reach the output"
    # values on unknown frames are never read (NaN there stays out of the output)
    poisoned = torch.where(mask[:, None, :, None, None], known, torch.full_like(known, math.nan))
    torch.testing.assert_close(net(**x, known=poisoned, known_mask=mask), out)
    # no known frame is the same as known=None (the "none" training mask)
    none = torch.zeros_like(mask)
    torch.testing.assert_close(net(**x, known=known, known_mask=none), net(**x))
    # and the mask is an input of its own: same values, one more frame marked known -> different output
    more = mask.clone()
    more[0, 1] = True
    assert not torch.allclose(net(**x, known=known, known_mask=more), out)


@pytest.mark.parametrize("kind", sorted(NETS))
def test_bad_frame_inputs_name_the_problem(kind):
    plain, cond = NETS[kind](), NETS[kind](frame_conditioning=True)
    known, mask = known_frames()
    x = inputs()
    with pytest.raises(ValueError, match="frame_conditioning=False"):
        plain(**x, known=known, known_mask=mask)
    with pytest.raises(ValueError, match="known_mask must be bool"):
        cond(**x, known=known, known_mask=mask.float())
    with pytest.raises(ValueError, match="known_mask must be bool"):
        cond(**x, known=known)
    with pytest.raises(ValueError, match="shaped like x"):
        cond(**x, known=known[:, :, :2], known_mask=mask)
    with pytest.raises(ValueError, match="known is None"):
        cond(**x, known_mask=mask)


def test_unet_frame_input_is_the_same_in_both_memory_layouts():
    a = trained(unet(frame_conditioning=True))
    b = unet(frame_conditioning=True, channels_last=False).eval()
    b.load_state_dict(a.state_dict())
    known, mask = known_frames()
    with torch.no_grad():
        torch.testing.assert_close(a(**inputs(), known=known, known_mask=mask),
                                   b(**inputs(), known=known, known_mask=mask), rtol=1e-4, atol=1e-4)
