"""Numerical guard: catch a non-finite loss or gradient before it reaches the weights.

One bad batch (a corrupt clip, an fp16 overflow, a loss spike) must not end a three-day run, and
a diverged run must not overwrite its last good checkpoint. :class:`NumericalGuard` looks at the
loss before backward and at the gradients just before the optimiser step, and by ``policy``:

* ``"skip"``: drops every gradient of that optimiser (``p.grad = None``), so AdamW leaves the
  weights *and* its moment estimates and step counts untouched; the step is counted and logged as
  ``train/skipped_steps`` with a warning naming the step and the batch's sample keys. The global
  step and the LR schedule still advance (they count optimiser calls), and an EMA callback
  averages the unchanged weights. ``max_consecutive`` skips in a row stop the run: that is
  divergence, not a bad batch.
* ``"stop"``: raises :class:`NonFiniteError` naming the step and the batch's sample keys
  (``batch["key"]``); the CLI prints it as one message.

Either way no checkpoint is written from the bad step, and ``check_checkpoints`` refuses to write
any checkpoint whose weights are not finite (so an undetected blow-up cannot replace a good file).
With a fp16 ``GradScaler``, overflowing gradients are the scaler's routine business (it skips the
step and lowers the scale): only the loss is checked then. Under DDP / FSDP the decision is
reduced over ranks, so every rank skips (or stops) together.

``train/grad_norm`` (the 2-norm of all gradients before clipping; clipping itself is
``trainer.gradient_clip_val``) is logged on logging steps when ``log_grad_norm`` is set; under
FSDP it is the norm of this rank's shard.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

POLICIES = ("skip", "stop")


class NonFiniteError(RuntimeError):
    """Training met a non-finite loss / gradient / weight and was told to stop."""


def batch_keys(batch: Any, limit: int = 16) -> list[str]:
    """The sample keys of a batch dict (``batch["key"]``), at most ``limit`` of them."""
    keys = batch.get("key") if isinstance(batch, dict) else None
    if keys is None:
        return []
    keys = [keys] if isinstance(keys, str) else list(keys)
    return [str(k) for k in keys[:limit]] + ([f"... ({len(keys) - limit} more)"] if len(keys) > limit else [])


def non_finite_tensors(state: dict[str, Any], limit: int = 5) -> list[str]:
    """Names of floating-point tensors in ``state`` holding NaN or inf (at most ``limit``)."""
    bad = []
    for name, value in state.items():
        # plain tensors only: a sharded (DTensor) value would need a collective to answer
        if type(value) in (torch.Tensor, torch.nn.Parameter) and value.is_floating_point() \
                and not torch.isfinite(value).all():
            bad.append(name)
            if len(bad) >= limit:
                break
    return bad


def _logging_step(trainer: Trainer) -> bool:
    """Whether the loggers write this step (``self.log`` costs about a millisecond even when they do not)."""
    return (trainer.global_step + 1) % max(1, trainer.log_every_n_steps) == 0 or trainer.global_step == 0


class NumericalGuard(Callback):
    """Skip or stop on non-finite losses and gradients (see the module docstring).

    Args:
        policy: ``"skip"`` the optimiser step (counted, logged) or ``"stop"`` training.
        check_gradients: also check the gradients (not only the loss) before each optimiser step.
        log_grad_norm: log ``train/grad_norm``, the gradients' 2-norm before clipping.
        max_consecutive: in skip mode, stop after this many skipped steps in a row (``None``: never).
        check_checkpoints: refuse to write a checkpoint whose weights are not finite.
    """

    def __init__(
        self,
        policy: Literal["skip", "stop"] = "skip",
        check_gradients: bool = True,
        log_grad_norm: bool = True,
        max_consecutive: int | None = 20,
        check_checkpoints: bool = True,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if max_consecutive is not None and max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1 or None, got {max_consecutive}")
        self.policy = policy
        self.check_gradients = check_gradients
        self.log_grad_norm = log_grad_norm
        self.max_consecutive = max_consecutive
        self.check_checkpoints = check_checkpoints
        self.skipped = 0  # skipped optimiser steps in this run (resumed runs continue the count)
        self.consecutive = 0
        self._bad_loss: float | None = None  # a non-finite loss seen since the last optimiser step
        self._keys: list[str] = []

    # ---- observation ----------------------------------------------------------------------
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._bad_loss is None:  # with gradient accumulation, keep the keys of the whole window
            self._keys = []
        self._keys += batch_keys(batch)

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss.detach()).all():
            self._bad_loss = float(loss.detach().float().sum())

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, 2.0) if grads else None
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        bad_grad = (self.check_gradients and scaler is None and norm is not None
                    and not bool(torch.isfinite(norm)))
        what = f"loss ({self._bad_loss})" if self._bad_loss is not None else "gradient norm" if bad_grad else ""
        bad = bool(what)
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)  # any rank: all ranks act
            what = what or "value on another rank"
        if self.log_grad_norm and norm is not None and _logging_step(trainer):
            pl_module.log("train/grad_norm", norm.detach().float(), on_step=True, on_epoch=False)
        self._bad_loss = None
        if not bad:
            self.consecutive = 0
            return
        step = trainer.global_step + 1  # the step this update would have completed
        keys = self._keys or "unknown (the batch has no 'key')"
        where = (f"non-finite {what} at training step {step} (global_step {trainer.global_step} before it); "
                 f"batch sample keys: {keys}")
        self.consecutive += 1
        if self.policy == "stop":
            raise NonFiniteError(f"{where}. Training stopped (numerics.policy=stop); no checkpoint was written "
                                 "from this step, the last one saved is intact")
        if self.max_consecutive is not None and self.consecutive > self.max_consecutive:
            raise NonFiniteError(f"{where}. {self.consecutive} steps in a row were non-finite "
                                 f"(numerics.max_consecutive={self.max_consecutive}): the run has diverged; "
                                 "resume from an earlier checkpoint with a lower learning rate")
        for p in params:
            p.grad = None  # torch optimisers skip parameters without gradients entirely
        self.skipped += 1
        rank_zero_warn(f"{where}: optimiser step skipped ({self.skipped} skipped so far)")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if _logging_step(trainer) or self.consecutive:
            pl_module.log("train/skipped_steps", float(self.skipped), on_step=True, on_epoch=False)

    # ---- checkpoints ----------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if not self.check_checkpoints:
            return
        for key in ("state_dict", "current_model_state"):
            bad = non_finite_tensors(checkpoint.get(key) or {})
            if bad:
                raise NonFiniteError(
                    f"refusing to write a checkpoint at global step {trainer.global_step}: non-finite weights in "
                    f"checkpoint[{key!r}] ({', '.join(bad)}); the previous checkpoint is intact")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))
