import pytest
import torch

from latentvid.diffusion.guidance import classifier_free_guidance, clip_denoised


class CountingModel:
    """x0_hat = z * w + ctx.mean(-1): conditional and unconditional branches differ through ctx."""

    def __init__(self):
        self.calls = 0

    def __call__(self, z, logsnr, ctx, mask):
        self.calls += 1
        assert z.shape[0] == ctx.shape[0] == mask.shape[0] == logsnr.shape[0]
        return z * torch.sigmoid(logsnr)[:, None] + (ctx * mask[..., None]).sum((1, 2))[:, None]


def test_cfg_formula_in_one_forward():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 5, generator=g)
    lam = torch.randn(3, generator=g)
    cond = {"ctx": torch.randn(3, 4, 2, generator=g), "mask": torch.ones(3, 4, dtype=torch.bool)}
    uncond = {"ctx": torch.randn(3, 4, 2, generator=g), "mask": torch.ones(3, 4, dtype=torch.bool)}
    m = CountingModel()
    out = classifier_free_guidance(m, cond, uncond, scale=4.0)(z, lam)
    assert m.calls == 1
    ref_c, ref_u = m(z, lam, **cond), m(z, lam, **uncond)
    torch.testing.assert_close(out, ref_u + 4.0 * (ref_c - ref_u))


def test_scale_one_is_conditional_only():
    z = torch.randn(2, 5)
    lam = torch.zeros(2)
    cond = {"ctx": torch.randn(2, 4, 2), "mask": torch.ones(2, 4, dtype=torch.bool)}
    uncond = {"ctx": torch.zeros(2, 4, 2), "mask": torch.ones(2, 4, dtype=torch.bool)}
    m = CountingModel()
    torch.testing.assert_close(classifier_free_guidance(m, cond, uncond, 1.0)(z, lam), m(z, lam, **cond))


def test_token_lengths_are_padded_and_keys_checked():
    z = torch.randn(2, 5)
    lam = torch.zeros(2)
    cond = {"ctx": torch.randn(2, 6, 2), "mask": torch.ones(2, 6, dtype=torch.bool)}
    uncond = {"ctx": torch.randn(2, 2, 2), "mask": torch.ones(2, 2, dtype=torch.bool)}
    m = CountingModel()
    out = classifier_free_guidance(m, cond, uncond, 3.0)(z, lam)
    ref_c, ref_u = m(z, lam, **cond), m(z, lam, **uncond)
    torch.testing.assert_close(out, ref_u + 3.0 * (ref_c - ref_u))
    with pytest.raises(ValueError, match="same keys"):
        classifier_free_guidance(m, cond, {"ctx": uncond["ctx"]}, 3.0)


def test_clip_denoised():
    d = clip_denoised(lambda z, l: z * 10, limit=1.0)
    assert d(torch.linspace(-1, 1, 9), torch.zeros(9)).abs().max() == 1.0


def test_per_sample_scales():
    # guidance distillation draws one weight per sample; row i must be the guided output at scales[i]
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 5, generator=g)
    lam = torch.randn(3, generator=g)
    cond = {"ctx": torch.randn(3, 4, 2, generator=g), "mask": torch.ones(3, 4, dtype=torch.bool)}
    uncond = {"ctx": torch.randn(3, 4, 2, generator=g), "mask": torch.ones(3, 4, dtype=torch.bool)}
    scales = torch.tensor([0.0, 1.0, 4.0])
    m = CountingModel()
    out = classifier_free_guidance(m, cond, uncond, scales)(z, lam)
    assert m.calls == 1
    for i, s in enumerate(scales.tolist()):
        torch.testing.assert_close(out[i], classifier_free_guidance(m, cond, uncond, s)(z, lam)[i])
