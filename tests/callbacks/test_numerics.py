"""Tests for latentvid/callbacks/numerics.py: NaN batches are skipped (weights untouched) or stop the run."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import grad_norm

from latentvid.callbacks.faults import PoisonBatch
from latentvid.callbacks.numerics import NonFiniteError, NumericalGuard

ROOT = Path(__file__).resolve().parents[2]


class Snapshots(Callback):
    """Weights and optimiser state before and after every training step, and the batch keys."""

    def __init__(self) -> None:
        self.before: dict[int, Any] = {}
        self.after: dict[int, Any] = {}
        self.keys: dict[int, list[str]] = {}

    @staticmethod
    def _state(trainer: Trainer, module) -> tuple:
        return ({k: v.detach().clone() for k, v in module.unet.state_dict().items()},
                copy.deepcopy(trainer.optimizers[0].state_dict()))

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        step = trainer.global_step + 1
        self.before[step] = self._state(trainer, module)
        self.keys[step] = list(batch["key"])

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.after[trainer.global_step] = self._state(trainer, module)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _optim_same(a: dict, b: dict) -> bool:
    return all(_same(a["state"][i], b["state"][i]) for i in a["state"])


def _fit(root: Path, data_root: Path, tiny_diffusion, callbacks: list, max_steps: int = 5, **kw) -> Trainer:
    model, data = tiny_diffusion(data_root)
    trainer = Trainer(default_root_dir=str(root), accelerator="cpu", max_steps=max_steps, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      num_sanity_val_steps=0, deterministic=True, callbacks=callbacks, **kw)
    trainer.fit(model, datamodule=data)
    return trainer


def test_adamw_leaves_parameters_without_gradients_and_their_state_alone() -> None:
    # the skip relies on this: p.grad = None for every parameter makes the step a no-op
    p = torch.nn.Parameter(torch.randn(5))
    opt = torch.optim.AdamW([p], lr=0.1, weight_decay=0.1)
    p.grad = torch.randn(5)
    opt.step()
    before, state = p.detach().clone(), copy.deepcopy(opt.state_dict())
    p.grad = None
    opt.step()
    assert torch.equal(p.detach(), before) and _optim_same(opt.state_dict(), state)


def test_skip_mode_skips_the_poisoned_step_counts_it_and_keeps_training(tmp_path, tiny_shapes, tiny_diffusion) -> None:
    snaps, guard = Snapshots(), NumericalGuard(policy="skip")
    with pytest.warns(UserWarning, match=r"non-finite loss \(nan\) at training step 3 ") as warned:
        trainer = _fit(tmp_path, tiny_shapes, tiny_diffusion, [PoisonBatch([3]), snaps, guard])
    message = next(str(w.message) for w in warned if "training step 3" in str(w.message))
    assert str(snaps.keys[3]) in message  # names the batch's sample keys
    assert guard.skipped == 1 and trainer.global_step == 5
    weights, optim = snaps.before[3]
    assert _same(snaps.after[3][0], weights), "a skipped step leaves the weights as they were"
    assert _optim_same(snaps.after[3][1], optim), "... and AdamW's moments and step counts"
    assert not _same(snaps.after[2][0], snaps.before[2][0]) and not _same(snaps.after[4][0], snaps.before[4][0])
    assert all(torch.isfinite(v).all() for v in snaps.after[5][0].values())
    assert trainer.logged_metrics["train/skipped_steps"].item() == 1.0


class InfGradient(Callback):
    """A finite loss whose gradient is not: one parameter's gradient becomes inf at step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_after_backward(self, trainer, module) -> None:
        if trainer.global_step + 1 == self.step:
            next(p for p in module.unet.parameters() if p.grad is not None).grad[0] = float("inf")


def test_a_non_finite_gradient_alone_is_caught(tmp_path, tiny_shapes, tiny_diffusion) -> None:
    snaps, guard = Snapshots(), NumericalGuard()
    with pytest.warns(UserWarning, match="non-finite gradient norm at training step 2"):
        _fit(tmp_path, tiny_shapes, tiny_diffusion, [InfGradient(2), snaps, guard], max_steps=3)
    assert guard.skipped == 1 and _same(snaps.after[2][0], snaps.before[2][0])


class GradNormReference(Callback):
    """Lightning's own gradient-norm utility, before clipping (the hook runs before Lightning clips)."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        self.norms.append(float(grad_norm(module, 2)["grad_2.0_norm_total"]))

    def on_train_batch_end(self, trainer, module, *args) -> None:
        self.norms[-1] = (self.norms[-1], float(trainer.callback_metrics["train/grad_norm"]))


def test_grad_norm_is_logged_before_clipping(tmp_path, tiny_shapes, tiny_diffusion) -> None:
    ref = GradNormReference()
    _fit(tmp_path, tiny_shapes, tiny_diffusion, [NumericalGuard(), ref], max_steps=3, gradient_clip_val=1e-3,
         log_every_n_steps=1)
    for reference, logged in ref.norms:
        assert logged == pytest.approx(reference, rel=1e-4) and logged > 1e-3  # the norm before clipping


def test_stop_mode_names_step_and_keys_and_leaves_the_last_checkpoint(tmp_path, tiny_shapes, tiny_diffusion) -> None:
    snaps = Snapshots()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=1, save_top_k=-1,
                           save_last=True)
    with pytest.raises(NonFiniteError, match=r"non-finite loss \(nan\) at training step 3 ") as err:
        _fit(tmp_path, tiny_shapes, tiny_diffusion, [PoisonBatch([3]), snaps, NumericalGuard(policy="stop"), ckpt])
    assert str(snaps.keys[3]) in str(err.value)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["last.ckpt", "step=1.ckpt", "step=2.ckpt"]
    assert torch.load(tmp_path / "ckpt/last.ckpt", weights_only=True)["global_step"] == 2


def test_consecutive_skips_mean_divergence_and_stop(tmp_path, tiny_shapes, tiny_diffusion) -> None:
    guard = NumericalGuard(policy="skip", max_consecutive=2)
    with pytest.warns(UserWarning), pytest.raises(NonFiniteError, match="3 steps in a row.*diverged"):
        _fit(tmp_path, tiny_shapes, tiny_diffusion, [PoisonBatch([2, 3, 4]), guard])
    assert guard.skipped == 2


def test_no_checkpoint_with_non_finite_weights_is_written(tmp_path: Path) -> None:
    guard = NumericalGuard()
    trainer = type("T", (), {"global_step": 7})()
    guard.on_save_checkpoint(trainer, None, {"state_dict": {"w": torch.ones(3)}})  # fine
    with pytest.raises(NonFiniteError, match=r"global step 7: non-finite weights in checkpoint\['state_dict'\] \(w\)"):
        guard.on_save_checkpoint(trainer, None, {"state_dict": {"w": torch.tensor([1.0, float("inf")])}})


def test_the_cli_reports_a_stop_in_one_message(tmp_path: Path, tiny_shapes, capsys, monkeypatch) -> None:
    from latentvid.cli import main

    args = ["fit", "-c", str(ROOT / "tests/configs/resume.yaml"), "--trainer.default_root_dir", str(tmp_path),
            "--data.init_args.root", str(tiny_shapes), "--data.init_args.generate", "false",
            "--trainer.max_steps", "4", "--numerics.policy", "stop",
            "--trainer.callbacks+=latentvid.callbacks.faults.PoisonBatch", "--trainer.callbacks.steps=[3]"]
    monkeypatch.setattr(sys, "argv", ["latentvid", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 1
    assert "latentvid: training stopped: non-finite loss (nan) at training step 3" in err and "Traceback" not in err
    ckpts = sorted(p.name for p in tmp_path.rglob("*.ckpt"))
    assert ckpts == ["last.ckpt", "step=001.ckpt", "step=002.ckpt"]
