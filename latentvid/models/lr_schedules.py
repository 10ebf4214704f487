"""Learning-rate schedules as multipliers of the base rate, for ``torch.optim.lr_scheduler.LambdaLR``.

Pure functions of the optimiser step (0-based); each returns the factor applied to the base LR.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_lambda(warmup_steps: int) -> Callable[[int], float]:
    """Linear learning-rate warm-up from ~0 to 1 over ``warmup_steps`` optimiser steps, then constant."""
    return lambda step: min(1.0, (step + 1) / max(1, warmup_steps))


def warmup_cosine_lambda(warmup_steps: int, total_steps: int, final_ratio: float = 0.0) -> Callable[[int], float]:
    """Linear warm-up over ``warmup_steps``, then a half cosine from 1 down to ``final_ratio`` at
    ``total_steps`` (held there afterwards)."""
    if total_steps < 1 or not 0.0 <= final_ratio <= 1.0:
        raise ValueError(f"need total_steps >= 1 and final_ratio in [0, 1], got {total_steps=} {final_ratio=}")
    warm = warmup_lambda(warmup_steps)

    def factor(step: int) -> float:
        progress = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
        cosine = final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return warm(step) * cosine

    return factor


def rounds_lambda(warmup_steps: int, round_steps: int, rounds: int) -> Callable[[int], float]:
    """Progressive distillation's schedule: ``rounds`` rounds of ``round_steps`` optimiser steps, each a
    linear warm-up over ``warmup_steps`` then a linear fall to 0 at the round's end; steps past the last
    round are counted in it (so the rate stays 0 there)."""
    if round_steps < 1 or rounds < 1:
        raise ValueError(f"need round_steps >= 1 and rounds >= 1, got {round_steps=} {rounds=}")
    warm = warmup_lambda(warmup_steps)

    def factor(step: int) -> float:
        s = step - min(step // round_steps, rounds - 1) * round_steps  # the step within its round
        return warm(s) * max(0.0, 1.0 - s / round_steps)

    return factor
