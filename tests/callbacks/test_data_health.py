"""Tests for latentvid/callbacks/data_health.py: skipped samples counted through worker processes,
logged as data/skipped and summarised per epoch, in a real (tiny) Lightning run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer

from latentvid.callbacks import data_health
from latentvid.callbacks.data_health import DataHealth, batch_skipped
from latentvid.data.clips import ClipSpec
from latentvid.data.folder import VideoFolder
from latentvid.data.video import write_video
from latentvid.data.video_text import VideoTextDataModule


class MeanModel(LightningModule):
    """Regresses the mean pixel of a clip: enough to make Lightning run training and validation steps."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        return (self.w - batch["video"].mean()) ** 2

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", (self.w - batch["video"].mean()) ** 2, batch_size=len(batch["key"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    lines = ["path,caption"]
    for i in range(6):
        write_video(tmp_path / f"v{i}.mp4", np.full((4, 8, 8, 3), 30 * i, np.uint8), fps=8)
        lines.append(f"v{i}.mp4,video {i}")
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 64)
    lines += ["broken.mp4,a broken file", "absent.mp4,a missing file"]
    (tmp_path / "videos.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_skips_are_logged_and_summarised(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    monkeypatch.setattr(data_health, "rank_zero_info", lines.append)
    dm = VideoTextDataModule(video=VideoFolder(str(folder), "videos.csv"), val=VideoFolder(str(folder), "videos.csv"),
                             clip=ClipSpec(num_frames=2, size=8), batch_size=2, num_workers=2)
    health = DataHealth()
    trainer = Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      callbacks=[health])
    trainer.fit(MeanModel(), datamodule=dm)
    # 2 bad rows per epoch, counted in whichever worker met them, summed on the way to the model
    assert health.total == 4
    assert trainer.callback_metrics["data/skipped"].item() == 4.0
    assert trainer.callback_metrics["data/val_skipped"].item() == 2.0
    assert len(lines) == 2
    assert lines[0].startswith("data: epoch 0: 2 samples skipped (2 since the start)")
    assert lines[1].startswith("data: epoch 1: 2 samples skipped (4 since the start)")
    assert "broken.mp4" in lines[1] and "absent.mp4" in lines[1]


def test_count_survives_a_checkpoint_and_plain_batches() -> None:
    health = DataHealth()
    health.total = 7
    resumed = DataHealth()
    resumed.load_state_dict(health.state_dict())
    assert resumed.total == 7
    assert batch_skipped({"video": torch.zeros(1)}) == (0, [])  # batches of datasets that never skip
    assert batch_skipped([torch.zeros(1)]) == (0, [])
    assert batch_skipped({"skipped": 3, "skipped_names": ["a"]}) == (3, ["a"])
