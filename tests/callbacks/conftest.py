"""Fixtures for the callback tests: a tiny LightningModule over index data, fitted in-process."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from torch.utils.data import Dataset

from latentvid.data.sampler import ResumableDataLoader, ResumableSampler


class _Items(Dataset):
    """Item i is {"x": tensor(i), "key": "item_{i:03d}"}."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": torch.tensor(i), "key": f"item_{i:03d}"}


class TinyModule(LightningModule):
    """A linear model fed noise + the sample index; records what every training step saw and drew.

    ``seen[k]``: the sample indices of training step k + 1; ``draws[k]``: its first random number.
    Validation draws random numbers too (as sampling callbacks do), from the global RNG.
    """

    def __init__(self, n_items: int = 40, batch_size: int = 4, num_workers: int = 0, lr: float = 0.05,
                 seed: int = 0) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)
        self.n_items, self.batch_size, self.num_workers, self.lr, self.seed = n_items, batch_size, num_workers, lr, seed
        self.seen: list[list[int]] = []
        self.draws: list[float] = []
        self.losses: list[float] = []

    def train_dataloader(self) -> ResumableDataLoader:
        return ResumableDataLoader(_Items(self.n_items), batch_size=self.batch_size, drop_last=True,
                                   num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                                   sampler=ResumableSampler(self.n_items, seed=self.seed))

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(_Items(4), batch_size=4)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x = batch["x"].float()  # (B,)
        noise = torch.rand(x.shape[0], 4)  # (B, 4) from the global RNG, like diffusion noise
        loss = ((self.net(noise + x[:, None] / self.n_items) - 1.0) ** 2).mean()
        self.seen.append(batch["x"].tolist())
        self.draws.append(float(noise[0, 0]))
        self.losses.append(float(loss.detach()))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        torch.rand(7)  # validation-time randomness must not shift the training's numbers
        loss = ((self.net(batch["x"].float()[:, None].expand(-1, 4) / self.n_items) - 1.0) ** 2).mean()
        self.log("val/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


@pytest.fixture(autouse=True)
def _leave_global_rng_and_seed_env_alone(monkeypatch: pytest.MonkeyPatch):
    """Fits here seed the global RNGs and set PL_GLOBAL_SEED / PL_SEED_WORKERS: undo both afterwards,
    so tests elsewhere see the session as it was."""
    from latentvid.callbacks.rng import capture_rng_state, restore_rng_state

    for key in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.setenv(key, os.environ[key]) if key in os.environ else monkeypatch.delenv(key, raising=False)
    state = capture_rng_state()
    yield
    restore_rng_state(state)


@pytest.fixture(scope="session")
def tiny_fit() -> Callable[..., tuple[TinyModule, Trainer]]:
    """``tiny_fit(root, callbacks, max_steps=..., ckpt_path=None, module_kwargs=None, **trainer_kwargs)``:
    fit a fresh TinyModule (seeded) and return it with its trainer."""

    def fit(root: Path, callbacks: list[Callback], max_steps: int, ckpt_path: str | None = None,
            module_kwargs: dict[str, Any] | None = None, **trainer_kwargs: Any) -> tuple[TinyModule, Trainer]:
        from lightning.pytorch import seed_everything

        seed_everything(0, workers=True, verbose=False)
        module = TinyModule(**(module_kwargs or {}))
        kwargs = dict(default_root_dir=str(root), accelerator="cpu", devices=1, max_steps=max_steps, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, deterministic=True)
        kwargs.update(trainer_kwargs)
        trainer = Trainer(callbacks=callbacks, **kwargs)
        trainer.fit(module, ckpt_path=ckpt_path)
        return module, trainer

    return fit


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated shapes folder (4-frame 16 px clips, one per combination)."""
    from latentvid.data.shapes import generate_shapes_dataset

    root = tmp_path_factory.mktemp("shapes")
    generate_shapes_dataset(root, seed=0, clips_per_combo=1, num_frames=4, size=16)
    return root


@pytest.fixture
def tiny_diffusion() -> Callable[..., Any]:
    """``tiny_diffusion(root)`` -> (LatentDiffusion, ShapesDataModule) at the sizes of tests/configs/tiny.yaml."""
    import warnings

    from latentvid.conditioning.text import OpenCLIPTextEncoder
    from latentvid.data.datamodule import ShapesDataModule
    from latentvid.models.latent_diffusion import LatentDiffusion
    from latentvid.nn.unet3d import UNet3D

    def build(root: Path, seed: int = 0) -> tuple[LatentDiffusion, ShapesDataModule]:
        torch.manual_seed(seed)
        unet = UNet3D(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), head_dim=8,
                      context_dim=32, norm_groups=4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the random-tower notice
            text = OpenCLIPTextEncoder(random_width=32, random_layers=1, random_heads=2, max_length=16, cache_size=0)
        model = LatentDiffusion(unet, text, warmup_steps=1, lr=1e-3)
        data = ShapesDataModule(root=str(root), num_frames=4, size=16, batch_size=4, clips_per_combo=1, generate=False)
        return model, data

    return build
