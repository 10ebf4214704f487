"""Tests of latentvid/callbacks/progress.py: steps out of max_steps, epochs only where they mean something."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from torch.utils.data import DataLoader, IterableDataset

from latentvid.callbacks.progress import StepProgressBar

TINY = Path(__file__).resolve().parents[2] / "tests" / "configs" / "tiny.yaml"


class Endless(IterableDataset):
    """A stream without a length (like VideoTextDataModule's)."""

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        while True:
            yield torch.randn(32, generator=g)


def fit(tmp_path: Path, loader: DataLoader, ckpt_path: str | None = None, **trainer_args) -> StepProgressBar:
    bar = StepProgressBar()
    trainer = L.Trainer(default_root_dir=tmp_path, callbacks=[bar], logger=False, enable_model_summary=False,
                        limit_val_batches=0, **trainer_args)
    trainer.fit(BoringModel(), train_dataloaders=loader, ckpt_path=ckpt_path)
    return bar


def test_a_step_limited_run_counts_steps_out_of_max_steps(tmp_path: Path, capsys) -> None:
    loader = DataLoader(RandomDataset(32, 6), batch_size=2)  # epochs of 3 batches
    bar = fit(tmp_path, loader, max_steps=7)
    tqdm = bar.train_progress_bar
    assert (tqdm.n, tqdm.total) == (7, 7)
    assert tqdm.desc.startswith("train, epoch 2")  # epochs of known length: the epoch means something
    out = capsys.readouterr()
    assert "7/7" in out.out + out.err and "/-2" not in out.out + out.err
    # resumed at step 7 of a longer run: the bar starts at 7, one bar for the whole run
    ckpt = next(tmp_path.rglob("*.ckpt"))
    bar = fit(tmp_path, loader, ckpt_path=str(ckpt), max_steps=10)
    assert (bar.train_progress_bar.initial, bar.train_progress_bar.n, bar.train_progress_bar.total) == (7, 10, 10)


def test_accumulated_batches_count_as_one_step(tmp_path: Path) -> None:
    bar = fit(tmp_path, DataLoader(RandomDataset(32, 8), batch_size=2), max_steps=3, accumulate_grad_batches=2)
    assert (bar.train_progress_bar.n, bar.train_progress_bar.total) == (3, 3)


def test_an_endless_stream_shows_no_epoch(tmp_path: Path) -> None:
    bar = fit(tmp_path, DataLoader(Endless(), batch_size=2), max_steps=4)
    assert (bar.train_progress_bar.n, bar.train_progress_bar.total) == (4, 4)
    assert bar.train_progress_bar.desc.rstrip(": ") == "train"


def test_an_epoch_limited_run_keeps_lightnings_epoch_bar(tmp_path: Path) -> None:
    bar = fit(tmp_path, DataLoader(RandomDataset(32, 6), batch_size=2), max_epochs=2)
    assert (bar.train_progress_bar.n, bar.train_progress_bar.total) == (3, 3)  # batches of the last epoch
    assert bar.train_progress_bar.desc.startswith("Epoch 1")


def test_the_cli_uses_it_unless_told_otherwise(tmp_path: Path, monkeypatch) -> None:
    from latentvid.cli import LatentVidCLI

    monkeypatch.setattr(sys, "argv", ["latentvid"])
    cli = LatentVidCLI(args=["-c", str(TINY), "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert type(cli.trainer.progress_bar_callback) is StepProgressBar
    cli = LatentVidCLI(args=["-c", str(TINY), "--trainer.default_root_dir", str(tmp_path),
                             "--trainer.enable_progress_bar", "false"], run=False)
    assert cli.trainer.progress_bar_callback is None


def test_a_bar_from_the_config_is_kept(tmp_path: Path, monkeypatch) -> None:
    from lightning.pytorch.callbacks import TQDMProgressBar

    from latentvid.cli import LatentVidCLI

    monkeypatch.setattr(sys, "argv", ["latentvid"])
    cli = LatentVidCLI(args=["-c", str(TINY), "--trainer.default_root_dir", str(tmp_path),
                             "--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar",
                             "--trainer.callbacks.refresh_rate=7"], run=False)
    bar = cli.trainer.progress_bar_callback
    assert type(bar) is TQDMProgressBar and bar.refresh_rate == 7
