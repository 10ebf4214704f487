"""Tests of latentvid/models/lr_schedules.py against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from latentvid.models.lr_schedules import warmup_cosine_lambda, warmup_lambda


def test_warmup_is_linear_then_constant() -> None:
    f = warmup_lambda(4)
    assert [f(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_lambda(0)(0) == 1.0  # no warm-up


@pytest.mark.parametrize("final", [0.0, 0.1])
def test_cosine_after_warmup_closed_form(final: float) -> None:
    warm, total = 10, 110
    f = warmup_cosine_lambda(warm, total, final)
    assert f(0) == pytest.approx(0.1)  # first warm-up step
    assert f(warm) == pytest.approx(1.0)  # warm-up done, cosine at its top
    assert f(warm + 50) == pytest.approx(final + (1 - final) * 0.5)  # half way: the cosine's mid point
    assert f(warm + 25) == pytest.approx(final + (1 - final) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert f(total) == pytest.approx(final) and f(total + 100) == pytest.approx(final)  # held at the end
    values = [f(s) for s in range(warm, total + 1)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # non-increasing after warm-up


def test_lambda_lr_applies_the_factor() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine_lambda(2, 6))
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [2.0 * warmup_cosine_lambda(2, 6)(s) for s in range(7)]
    assert lrs == pytest.approx(expected)
    assert lrs[-1] == pytest.approx(0.0)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine_lambda(0, 0)
    with pytest.raises(ValueError, match="final_ratio"):
        warmup_cosine_lambda(0, 10, 1.5)
