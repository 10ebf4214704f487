import math

import pytest
import torch

from latentvid.diffusion.parameterization import (
    diffuse,
    eps_from_flow,
    eps_from_v,
    eps_from_x0,
    masked_mse,
    prediction_to_x0,
    snr_loss_weight,
    training_target,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_flow,
    x0_from_v,
)
from latentvid.diffusion.schedule import alpha_sigma, rf_alpha_sigma


@pytest.fixture(params=["vp", "rf"])
def sample(request):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, 4, 5, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 3, 4, 5, 5, generator=g, dtype=torch.float64)
    lam = torch.linspace(-8, 8, 6, dtype=torch.float64)
    a, s = (alpha_sigma if request.param == "vp" else rf_alpha_sigma)(lam)
    return x0, eps, a, s


def test_process_families():
    lam = torch.linspace(-6, 6, 7, dtype=torch.float64)
    a, s = alpha_sigma(lam)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(lam))
    a, s = rf_alpha_sigma(lam)
    torch.testing.assert_close(a + s, torch.ones_like(lam))
    torch.testing.assert_close(2 * torch.log(a / s), lam)  # logSNR = 2 log((1 - t) / t), t = sigma


def test_round_trips(sample):
    x0, eps, a, s = sample
    z = diffuse(x0, eps, a, s)
    v = v_from_x0_eps(x0, eps, a, s)
    torch.testing.assert_close(x0_from_v(z, v, a, s), x0, atol=1e-6, rtol=0)
    torch.testing.assert_close(eps_from_v(z, v, a, s), eps, atol=1e-6, rtol=0)
    torch.testing.assert_close(x0_from_eps(z, eps, a, s), x0, atol=1e-6, rtol=0)
    torch.testing.assert_close(eps_from_x0(z, x0, a, s), eps, atol=1e-6, rtol=0)
    flow = eps - x0
    torch.testing.assert_close(x0_from_flow(z, flow, a, s), x0, atol=1e-6, rtol=0)
    torch.testing.assert_close(eps_from_flow(z, flow, a, s), eps, atol=1e-6, rtol=0)
    for target in ("eps", "x0", "v", "flow"):
        pred = training_target(x0, eps, a, s, target)
        torch.testing.assert_close(prediction_to_x0(pred, z, a, s, target), x0, atol=1e-6, rtol=0)


def test_flow_target_is_the_time_derivative_on_the_rectified_flow():
    g = torch.Generator().manual_seed(5)
    x0, eps = torch.randn(2, 2, 3, generator=g, dtype=torch.float64)  # each (B=2, 3)
    t, h = torch.tensor([0.3, 0.7], dtype=torch.float64), 1e-6
    lam = lambda tt: 2 * torch.log((1 - tt) / tt)  # noqa: E731
    z = lambda tt: diffuse(x0, eps, *rf_alpha_sigma(lam(tt)))  # noqa: E731
    fd = (z(t + h) - z(t - h)) / (2 * h)
    torch.testing.assert_close(training_target(x0, eps, *rf_alpha_sigma(lam(t)), "flow"), fd, atol=1e-7, rtol=0)


def test_v_definition_elementwise(sample):
    x0, eps, a, s = sample
    i = 2
    v = v_from_x0_eps(x0, eps, a, s)
    torch.testing.assert_close(v[i], a[i] * eps[i] - s[i] * x0[i])


def test_unknown_target():
    with pytest.raises(ValueError, match="unknown target"):
        training_target(torch.zeros(1), torch.zeros(1), torch.ones(1), torch.ones(1), "score")


def test_masked_mse_matches_manual_average():
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(2, 3, 4, 4, 4, generator=g)
    target = torch.randn(2, 3, 4, 4, 4, generator=g)
    mask = torch.tensor([[True, True, True, True], [True, False, False, False]])
    loss = masked_mse(pred, target, mask)
    sample0 = (pred[0] - target[0]).pow(2).mean()
    sample1 = (pred[1, :, :1] - target[1, :, :1]).pow(2).mean()
    torch.testing.assert_close(loss, (sample0 + sample1) / 2)
    torch.testing.assert_close(masked_mse(pred, target), (pred - target).pow(2).mean())
    w = torch.tensor([2.0, 0.5])
    torch.testing.assert_close(masked_mse(pred, target, mask, weight=w), (2.0 * sample0 + 0.5 * sample1) / 2)


def test_masked_frames_change_neither_loss_nor_gradients():
    g = torch.Generator().manual_seed(2)
    target = torch.randn(3, 3, 5, 4, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    pred_a = torch.randn(3, 3, 5, 4, 4, generator=g, requires_grad=True)
    # change the content of masked frames only (including a NaN and an inf), in prediction and target
    with torch.no_grad():
        pred_b = pred_a.clone()
        target_b = target.clone()
        bad = ~mask[:, None, :, None, None].expand_as(pred_b)
        pred_b[bad] = torch.randn(int(bad.sum()), generator=g) * 100
        target_b[bad] = torch.randn(int(bad.sum()), generator=g) * 100
        pred_b[0, 0, 4, 0, 0] = math.nan
        target_b[1, 0, 2, 1, 1] = math.inf
    pred_b.requires_grad_(True)
    loss_a = masked_mse(pred_a, target, mask)
    loss_b = masked_mse(pred_b, target_b, mask)
    torch.testing.assert_close(loss_a, loss_b)
    (ga,) = torch.autograd.grad(loss_a, pred_a)
    (gb,) = torch.autograd.grad(loss_b, pred_b)
    assert torch.isfinite(gb).all()
    torch.testing.assert_close(ga, gb)
    assert (ga[bad] == 0).all()


def test_min_snr_weight():
    lam = torch.tensor([-2.0, 0.0, 3.0])
    snr = lam.exp()
    torch.testing.assert_close(snr_loss_weight(lam, "v", gamma=5.0), snr.clamp(max=5.0) / (snr + 1))
    torch.testing.assert_close(snr_loss_weight(lam, "eps", gamma=5.0), snr.clamp(max=5.0) / snr)
    torch.testing.assert_close(snr_loss_weight(lam, "v"), torch.ones(3))


@pytest.mark.parametrize("target", ["eps", "x0", "v", "flow"])
@pytest.mark.parametrize("process", [alpha_sigma, rf_alpha_sigma], ids=["vp", "rf"])
def test_min_snr_weight_is_min_snr_in_x0_space(target, process):
    # weight * |pred error|^2 must equal min(SNR, gamma) * |implied x0 error|^2 for every target and process
    lam = torch.linspace(-5, 5, 6, dtype=torch.float64)
    a, s = process(lam)
    g = torch.Generator().manual_seed(3)
    z, pred, err = torch.randn(3, 6, 8, generator=g, dtype=torch.float64)
    dx0 = prediction_to_x0(pred + err, z, a, s, target) - prediction_to_x0(pred, z, a, s, target)
    w = snr_loss_weight(lam, target, gamma=5.0, sigma=s)
    torch.testing.assert_close(w * err.pow(2).sum(1), lam.exp().clamp(max=5.0) * dx0.pow(2).sum(1))
