"""Rebuild a trained LightningModule from a checkpoint written by ``latentvid fit`` / ``tools/fit.py``."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule


def load_model(ckpt_path: str | Path, device: str | torch.device = "cpu", ema: bool = True
               ) -> tuple[LightningModule, dict[str, Any]]:
    """The module saved in ``ckpt_path`` (class and config from its hparams), in eval mode on ``device``.

    ``ema``: the EMA weights when the checkpoint has them (EMAWeightAveraging stores the averaged
    weights as ``state_dict`` and the raw ones as ``current_model_state``); False for the raw ones.
    Returns ``(model, checkpoint dict)``; raises FileNotFoundError / ValueError naming the file.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt_path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hp = ckpt.get("hyper_parameters", {})
    class_path = hp.get("_class_path")
    if class_path is None:
        raise ValueError(f"{ckpt_path} has no saved model config (was it written by tools/fit.py / latentvid fit?)")
    module, name = class_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    model = cls.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    if not ema and "current_model_state" in ckpt:
        model.on_load_checkpoint(ckpt)  # refills weights left out because they reload from files
        model.load_state_dict(ckpt["current_model_state"])
    return model.to(device).eval(), ckpt
