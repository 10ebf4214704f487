"""Rebuild a trained LightningModule from a checkpoint written by ``latentvid fit`` / ``tools/fit.py``.

Every run keeps its checkpoints in its own run folder (``runs/base/lightning_logs/version_N/
checkpoints/``), so wherever a checkpoint is asked for, a run root such as ``runs/base`` also works:
:func:`resolve_checkpoint` takes the most recently written ``last*.ckpt`` under it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule

from latentvid.callbacks.launch_dir import KEY as LAUNCH_KEY

log = logging.getLogger(__name__)


def find_checkpoint(folder: str | Path, name: str = "last") -> Path | None:
    """The most recently written ``{name}*.ckpt`` under ``folder`` (searched recursively; hidden
    temporary files of interrupted writes are ignored; a sharded FSDP checkpoint is a folder with
    such a name), or None."""
    root = Path(folder)
    if not root.is_dir():
        return None
    found = [p for p in root.rglob(f"{name}*.ckpt") if not p.name.startswith(".")]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def resolve_checkpoint(path: str | Path, name: str = "last") -> Path:
    """``path`` itself when it is a checkpoint file, else, for a run root or run folder (e.g.
    ``runs/base``), its newest ``{name}*.ckpt`` (:func:`find_checkpoint`); FileNotFoundError naming
    the path otherwise."""
    path = Path(path)
    if path.is_dir() and path.suffix != ".ckpt":  # (a sharded FSDP checkpoint is a folder named x.ckpt)
        found = find_checkpoint(path, name)
        if found is None:
            raise FileNotFoundError(f"no {name}*.ckpt under {path} (has a run of that recipe written a checkpoint?)")
        return found
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def load_model(ckpt_path: str | Path, device: str | torch.device = "cpu", ema: bool = True
               ) -> tuple[LightningModule, dict[str, Any]]:
    """The module saved in ``ckpt_path`` (class and config from its hparams), in eval mode on ``device``.
    ``ckpt_path`` may be a run root (``runs/base``): its newest ``last*.ckpt`` is loaded.

    ``ema``: the EMA weights when the checkpoint has them (EMAWeightAveraging stores the averaged
    weights as ``state_dict`` and the raw ones as ``current_model_state``); False for the raw ones.
    A training module that trains another model (:class:`~latentvid.models.distillation.ProgressiveDistillation`)
    says so with a ``load_sampling_model(ckpt, ema)`` class method, and that model is returned (a
    distilled student, sampling in its own steps).
    Files the saved config names by relative paths (a VAE, a teacher) that do not exist from here are
    looked up from the directory the run was launched from (recorded by
    :class:`~latentvid.callbacks.launch_dir.LaunchDir`), so a run loads from any directory.
    Returns ``(model, checkpoint dict)``; raises FileNotFoundError / ValueError naming the file.
    """
    path = resolve_checkpoint(ckpt_path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hp = ckpt.get("hyper_parameters", {})
    class_path = hp.get("_class_path")
    if class_path is None:
        raise ValueError(f"{path} has no saved model config (was it written by tools/fit.py / latentvid fit?)")
    module, name = class_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    try:
        model, sampling = _build(cls, path, ckpt, ema)
    except ValueError as exc:  # the config parser wraps a missing file (a VAE, a teacher) in a union error
        missing = _missing_file(exc)
        if missing is None:
            raise
        launch = ckpt.get(LAUNCH_KEY)
        if not launch or Path(launch) == Path.cwd() or not Path(launch).is_dir():
            raise FileNotFoundError(f"{path}: {missing} (a checkpoint's config names files relative to the "
                                    f"directory its run was launched from{f', {launch}' if launch else ''}; "
                                    f"run from there; here {Path.cwd()})") from exc
        # the config's relative paths were written from the run's launch directory: resolve them there
        here = path.absolute()
        try:
            with contextlib.chdir(launch):
                model, sampling = _build(cls, here, ckpt, ema)
        except ValueError as exc2:
            raise FileNotFoundError(f"{path}: {_missing_file(exc2) or exc2} (resolved against the run's launch "
                                    f"directory {launch})") from exc2
        log.info("%s: files named in its config resolved against its launch directory %s", path, launch)
    if sampling:
        return model.to(device).eval(), ckpt
    if not ema and "current_model_state" in ckpt:
        model.on_load_checkpoint(ckpt)  # refills weights left out because they reload from files
        model.load_state_dict(ckpt["current_model_state"])
    return model.to(device).eval(), ckpt


def _build(cls: type, path: Path, ckpt: dict[str, Any], ema: bool) -> tuple[LightningModule, bool]:
    """The module of checkpoint ``path`` (class ``cls``), and whether it is already the sampling model
    of a module that trains another (``load_sampling_model``)."""
    if hasattr(cls, "load_sampling_model"):
        return cls.load_sampling_model(ckpt, ema=ema), True
    return cls.load_from_checkpoint(path, map_location="cpu", weights_only=True), False


def _missing_file(exc: BaseException) -> str | None:
    """The message of the FileNotFoundError that ``exc`` was raised from, if any (None otherwise)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, FileNotFoundError):
            return str(exc)
        exc = exc.__cause__ or exc.__context__
    return None
