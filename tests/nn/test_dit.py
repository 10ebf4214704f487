"""The spacetime DiT at tiny sizes: patches against a strided Conv3d, RoPE against complex rotations
and its relative property, frame masks, backends, checkpointing, and a LatentDiffusion step."""

import pytest
import torch
from torch import nn

from latentvid.nn.dit import DiT3D, apply_rope, patchify, rope_angles, rope_axis_dims, unpatchify


def tiny_dit(**kwargs) -> DiT3D:
    torch.manual_seed(0)
    args = dict(in_channels=4, out_channels=4, patch_size=(1, 2, 2), dim=32, depth=2, head_dim=16, context_dim=24,
                attention_backend="math")
    net = DiT3D(**{**args, **kwargs})
    # adaLN-Zero and the zero output layer make a fresh DiT the zero function: open every branch
    with torch.no_grad():
        for name, p in net.named_parameters():
            if ("modulation" in name or "out_proj" in name) and p.abs().sum() == 0:
                p.normal_(std=0.2)
    return net


def inputs(b=2, t=4, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(b, 4, t, h, w, generator=g), logsnr=torch.linspace(-3, 3, b),
                context=torch.randn(b, 5, 24, generator=g), context_mask=torch.tensor([[1, 1, 1, 0, 0]] * b).bool(),
                fps=torch.full((b,), 8.0))


@pytest.mark.parametrize("patch", [(1, 2, 2), (2, 2, 2), (1, 1, 1)])
def test_patchify_is_a_strided_conv_and_unpatchify_inverts_it(patch):
    x = torch.randn(2, 3, 4, 6, 8)
    tokens = patchify(x, patch)
    grid = (4 // patch[0], 6 // patch[1], 8 // patch[2])
    torch.testing.assert_close(unpatchify(tokens, patch, grid), x, atol=0, rtol=0)
    # a Linear on the tokens is the Conv3d with kernel = stride = patch (the usual patch embedding)
    conv = nn.Conv3d(3, 5, kernel_size=patch, stride=patch)
    linear = nn.Linear(3 * patch[0] * patch[1] * patch[2], 5)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.reshape(5, -1))
        linear.bias.copy_(conv.bias)
    ref = conv(x).flatten(2).transpose(1, 2)  # (B, T'H'W', 5) in (t, h, w) raster order
    torch.testing.assert_close(linear(tokens), ref, atol=1e-5, rtol=1e-5)


def test_rope_is_a_complex_rotation():
    grid, d = (3, 2, 4), 16
    angles = rope_angles(grid, d)
    x = torch.randn(2, 24, d, dtype=torch.float64)
    ours = apply_rope(x, angles.double())
    ref = torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2)).contiguous())
                             * torch.polar(torch.ones_like(angles.double()), angles.double())).flatten(-2)
    torch.testing.assert_close(ours, ref)
    assert sum(rope_axis_dims(d)) == d and rope_axis_dims(64) == (24, 20, 20)


def test_rope_scores_depend_on_offsets_only():
    grid, d = (6, 5, 7), 16
    angles = rope_angles(grid, d).double().view(*grid, d // 2)
    q, k = torch.randn(2, d, dtype=torch.float64)  # the same query and key content at every position

    def score(p, r):
        qp = apply_rope(q[None], angles[p].reshape(1, -1))
        kr = apply_rope(k[None], angles[r].reshape(1, -1))
        return float((qp * kr).sum())

    for p, r, delta in [((0, 0, 0), (1, 2, 3), (2, 1, 1)), ((1, 1, 0), (0, 0, 4), (1, 0, 0)),
                        ((2, 0, 1), (3, 2, 2), (0, 0, 2))]:
        shifted_p = tuple(a + b for a, b in zip(p, delta))
        shifted_r = tuple(a + b for a, b in zip(r, delta))
        assert abs(score(p, r) - score(shifted_p, shifted_r)) < 1e-5  # RoPE runs in float32
    # and they do depend on the offset (each axis)
    for axis in range(3):
        r = [0, 0, 0]
        r[axis] = 1
        assert abs(score((0, 0, 0), (0, 0, 0)) - score((0, 0, 0), tuple(r))) > 1e-6


@pytest.mark.parametrize("mode,patch", [("full", (1, 2, 2)), ("factorized", (1, 2, 2)), ("full", (2, 2, 2))])
def test_masked_frames_do_not_change_valid_outputs(mode, patch):
    net = tiny_dit(attention_mode=mode, patch_size=patch).eval()
    inp = inputs()
    mask = torch.tensor([[True, True, True, True], [True, False, False, False]])
    if patch[0] == 2:
        mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    a = net(**inp, frame_mask=mask)
    frames = mask[:, None, :, None, None]  # (B, 1, T, 1, 1)
    altered = torch.where(frames, inp["x"], torch.randn(inp["x"].shape) * 10)  # new content in masked frames
    b = net(**{**inp, "x": altered}, frame_mask=mask)
    valid = frames.expand_as(a)
    torch.testing.assert_close(a[valid], b[valid], atol=1e-5, rtol=1e-5)
    # guard: without the mask the change does reach the valid frames
    c = net(**{**inp, "x": altered})
    assert (c[valid] - a[valid]).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["full", "factorized"])
def test_text_mask_hides_padding_tokens(mode):
    net = tiny_dit(attention_mode=mode).eval()
    inp = inputs()
    a = net(**inp)
    ctx = inp["context"].clone()
    ctx[:, 3:] = torch.randn(2, 2, 24) * 10  # padding tokens (mask False)
    torch.testing.assert_close(net(**{**inp, "context": ctx}), a, atol=1e-5, rtol=1e-5)
    ctx[:, 0] += 1.0  # a real token
    assert (net(**{**inp, "context": ctx}) - a).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["full", "factorized"])
def test_backends_agree(mode):
    ref = tiny_dit(attention_mode=mode, attention_backend="math").eval()
    sdpa = tiny_dit(attention_mode=mode, attention_backend="sdpa").eval()
    sdpa.load_state_dict(ref.state_dict())
    inp = inputs()
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    for fm in (None, mask):
        torch.testing.assert_close(sdpa(**inp, frame_mask=fm), ref(**inp, frame_mask=fm), atol=1e-5, rtol=1e-4)


def test_factorized_differs_from_full_and_space_time_both_matter():
    # factorized attention mixes frames only through its temporal layer: with one frame it is full
    # attention's spatial part plus a temporal layer that sees a single token (an identity-like path)
    full, fact = tiny_dit(attention_mode="full").eval(), tiny_dit(attention_mode="factorized").eval()
    inp = inputs()
    assert full(**inp).shape == fact(**inp).shape == inp["x"].shape
    x = inp["x"].clone()
    x[:, :, 3] += 1.0  # change the last frame: the first frame's output changes (attention is not causal)
    for net in (full, fact):
        assert (net(**{**inp, "x": x})[:, :, 0] - net(**inp)[:, :, 0]).abs().max() > 1e-4


def test_gradient_checkpointing_gives_the_same_gradients():
    inp = inputs()
    grads = []
    for ckpt in (False, True):
        net = tiny_dit(gradient_checkpointing=ckpt).train()
        net(**inp).pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_fresh_network_is_zero_and_inputs_are_checked():
    torch.manual_seed(0)
    net = DiT3D(dim=32, depth=1, head_dim=16, context_dim=24)
    inp = inputs()
    assert torch.equal(net(**inp), torch.zeros_like(inp["x"]))  # adaLN-Zero + zero output layer
    with pytest.raises(ValueError, match="divisible"):
        net(**{**inputs(h=7, w=8)})
    with pytest.raises(ValueError, match="context"):
        net(**{**inp, "context": torch.randn(2, 5, 23)})
    with pytest.raises(ValueError, match="temporal patch"):
        DiT3D(patch_size=(2, 2, 2), dim=32, depth=1, head_dim=16, context_dim=24)(**inputs(t=3))
    with pytest.raises(ValueError, match="attention_mode"):
        DiT3D(attention_mode="axial")


def test_latent_diffusion_trains_a_step_with_the_dit():
    from latentvid.conditioning.text import OpenCLIPTextEncoder
    from latentvid.diffusion import RectifiedFlowSchedule, TimeSampling
    from latentvid.models.latent_diffusion import LatentDiffusion

    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="RANDOM"):
        text = OpenCLIPTextEncoder(random_width=24, random_layers=1, random_heads=2, max_length=8)
    net = DiT3D(in_channels=3, out_channels=3, dim=32, depth=2, head_dim=16, context_dim=24, gradient_checkpointing=True)
    model = LatentDiffusion(net, text, schedule=RectifiedFlowSchedule(shift=2.0), target="flow", lr=1e-3,
                            warmup_steps=1, time_sampling=TimeSampling("logit_normal"), sample_steps=2)
    batch = {"video": torch.rand(2, 3, 4, 8, 8) * 2 - 1, "caption": ["a red circle moving left", "a blue square"],
             "fps": torch.full((2,), 8.0), "frame_mask": torch.tensor([[True] * 4, [True, False, False, False]])}
    opt = model.configure_optimizers()["optimizer"]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loss = model.diffusion_loss(batch, generator=torch.Generator().manual_seed(0))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert not torch.equal(before["out_proj.weight"], net.state_dict()["out_proj.weight"])
    video = model.eval().sample(["a red circle moving left"], 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert video.shape == (1, 3, 4, 8, 8) and torch.isfinite(video).all()


def test_position_embedding_starts_as_the_dit_without_it_and_then_marks_absolute_positions():
    from latentvid.nn.dit import DiT3D

    torch.manual_seed(0)
    kwargs = dict(in_channels=2, out_channels=2, patch_size=(1, 2, 2), dim=32, depth=1, head_dim=8, context_dim=None,
                  fps_conditioning=False)
    plain = DiT3D(**kwargs).eval()
    for layer in (plain.out_modulation, plain.out_proj):  # a non-zero output, so outputs say something
        nn.init.normal_(layer.weight, std=0.2)
    x, logsnr = torch.randn(2, 2, 3, 4, 4), torch.randn(2)
    for mode in ("frame", "spacetime"):
        model = DiT3D(position_embedding=mode, **kwargs).eval()
        missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
        assert unexpected == [] and missing and all(k.startswith("position_embed.") for k in missing)
        with torch.no_grad():
            torch.testing.assert_close(model(x, logsnr), plain(x, logsnr))
            for embed in model.position_embed.axes:  # as after training
                nn.init.normal_(embed.mlp[-1].weight)
            # trained embeddings move the prediction of every frame (not only the sequence's edges)
            moved = (model(x, logsnr) - plain(x, logsnr)).abs().amax(dim=(0, 1, 3, 4))  # (T,)
            assert bool((moved > 1e-3).all())
