"""The ``latentvid`` command: LightningCLI over any latentvid LightningModule and DataModule.

    latentvid fit -c configs/base.yaml                      # train
    latentvid fit -c configs/base.yaml --trainer.max_steps 100
    latentvid fit -c configs/base.yaml --ckpt_path last     # continue the newest run under default_root_dir
    latentvid validate -c configs/base.yaml --ckpt_path runs/base/.../last.ckpt
    latentvid fit --help                                    # every option, from the constructors

Configs mirror constructor signatures (``class_path`` / ``init_args``); the resolved config is
saved as ``config.yaml`` in every run directory.

Every run also gets, without config changes:

* crash-safe checkpoint files (:class:`~latentvid.callbacks.checkpoint_io.AtomicCheckpointIO`),
  unless the config sets its own checkpoint plugin;
* four callbacks, configured under their own keys (``--numerics.policy stop`` etc.):
  ``data_position`` (:class:`~latentvid.callbacks.data_position.DataPosition`), ``rng``
  (:class:`~latentvid.callbacks.rng.RNGState`), ``numerics``
  (:class:`~latentvid.callbacks.numerics.NumericalGuard`) and ``preemption``
  (:class:`~latentvid.callbacks.preemption.Preemption`);
* ``--ckpt_path last`` resolved to the newest ``last*.ckpt`` under ``trainer.default_root_dir``
  (and any ModelCheckpoint ``dirpath``), the resumed run writing into that checkpoint's run folder;
  no checkpoint yet means a fresh start, so a requeued job can always pass it;
* runs that never overwrite each other: without a ``dirpath`` each run's checkpoints go to its own
  ``<default_root_dir>/lightning_logs/version_N/checkpoints`` beside its ``config.yaml``; a fixed
  ``dirpath`` that already holds another run's checkpoints stops the run before it starts;
* a progress bar counting steps out of ``max_steps`` (:mod:`latentvid.callbacks.progress`);
* checks before any heavy work (:mod:`latentvid.preflight`): one message per problem.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from latentvid.callbacks.checkpoint_io import (
    TMP_MARKER,
    AtomicCheckpointIO,
    CheckpointReadError,
    CheckpointWriteError,
    ResumeError,
)
from latentvid.callbacks.data_position import DataPosition
from latentvid.callbacks.launch_dir import LaunchDir
from latentvid.callbacks.numerics import NonFiniteError, NumericalGuard
from latentvid.callbacks.preemption import Preemption
from latentvid.callbacks.progress import StepProgressBar
from latentvid.callbacks.rng import RNGState
from latentvid.data.sources import DataError, SmallDataError
from latentvid.pipelines.loading import find_checkpoint
from latentvid.preflight import PreflightError, check_fit

DEBUG_ENV = "LATENTVID_DEBUG"
# config key -> callback added to every run (order matters: data position and RNG are recorded
# before the preemption callback may save at the end of the same batch)
DEFAULT_CALLBACKS = {"data_position": DataPosition, "rng": RNGState, "numerics": NumericalGuard,
                     "preemption": Preemption}


class ConfigError(ValueError):
    """A class in the config could not be built; ``problems`` holds its messages."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def find_last_checkpoint(folders: list[str | os.PathLike]) -> Path | None:
    """The most recently written ``last*.ckpt`` under any of ``folders`` (searched recursively;
    hidden temporary files of interrupted writes are ignored), or None."""
    found = [f for f in (find_checkpoint(folder) for folder in folders) if f is not None and TMP_MARKER not in f.name]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def foreign_checkpoints(trainer: Trainer, ckpt_path: str | None) -> list[str]:
    """One message per ModelCheckpoint whose fixed ``dirpath`` already holds checkpoints of another
    run: this run would overwrite them (its ``last.ckpt`` first). Resuming from a checkpoint in that
    folder is that run going on, so it passes."""
    problems = []
    resumed = Path(ckpt_path).absolute() if ckpt_path else None
    for cb in trainer.checkpoint_callbacks:
        if not isinstance(cb, ModelCheckpoint):
            continue
        # without a dirpath and without a logger Lightning writes <default_root_dir>/checkpoints: shared too
        dirpath = cb.dirpath or (Path(trainer.default_root_dir) / "checkpoints" if trainer.logger is None else None)
        if not dirpath or not Path(dirpath).is_dir():
            continue
        folder = Path(dirpath).absolute()
        existing = sorted(p.name for p in folder.glob("*.ckpt") if not p.name.startswith("."))
        if existing and not (resumed is not None and folder in resumed.parents):
            problems.append(f"ModelCheckpoint.dirpath {dirpath} already holds {', '.join(existing[:3])}"
                            f"{' ...' if len(existing) > 3 else ''} of another run, which this run would overwrite; "
                            "leave dirpath unset (each run then writes <default_root_dir>/lightning_logs/version_N/"
                            "checkpoints), resume that run with --ckpt_path last, or name an empty folder")
    return problems


def _run_version(trainer: Trainer, ckpt: Path) -> int | str | None:
    """The logger version whose folder holds ``ckpt`` (``<root>/<name>/<version>/checkpoints/x.ckpt``), if any."""
    logger = trainer.logger
    root = getattr(logger, "root_dir", None)
    if root is None or len(ckpt.parents) < 3 or Path(root).resolve() != ckpt.parents[2].resolve():
        return None
    folder = ckpt.parents[1].name
    match = re.fullmatch(r"version_(\d+)", folder)
    return int(match.group(1)) if match else folder


UNION_ERROR = "Does not validate against any of the Union subtypes"


def _constructor_messages(exc: BaseException) -> list[str]:
    """The messages of the constructor error behind ``exc``.

    jsonargparse wraps an exception raised while building a class in (nested) union-validation
    errors and chains the original as their cause: follow the chain to the first exception of
    ours. A message of the form "header:\n  item\n  item" (as ``LatentDiffusion`` raises it) gives
    one message per item."""
    err: BaseException | None = exc
    while err is not None and str(err).startswith(UNION_ERROR):
        err = err.__cause__ or err.__context__
    err = err or exc
    lines = [ln for ln in str(err).splitlines() if ln.strip()]
    if not lines:
        return [type(err).__name__]
    if len(lines) > 1 and lines[0].rstrip().endswith(":") and all(ln.startswith((" ", "\t")) for ln in lines[1:]):
        return [ln.strip() for ln in lines[1:]]
    return [" ".join(ln.strip() for ln in lines)] if not str(err).startswith(UNION_ERROR) else [lines[-1].strip()]


def install_atomic_checkpoint_io(trainer: Trainer) -> None:
    """Make Lightning's default checkpoint writer an :class:`AtomicCheckpointIO`; a writer set in the
    config (``trainer.plugins``) is kept, and a wrapper set there without a base (``AsyncCheckpointIO``)
    gets it as its base."""
    strategy = trainer.strategy
    io = strategy._checkpoint_io  # None until a plugin sets one: Lightning would then create TorchCheckpointIO
    if io is None:
        strategy.checkpoint_io = AtomicCheckpointIO()
    elif isinstance(io, _WrappingCheckpointIO) and io.checkpoint_io is None:
        io.checkpoint_io = AtomicCheckpointIO()


def install_step_progress_bar(trainer: Trainer, configured: list | None = None) -> None:
    """Put a :class:`~latentvid.callbacks.progress.StepProgressBar` in place of the bar Lightning
    adds by itself (rich when installed, else tqdm); a bar among the ``configured`` callbacks (the
    config's ``trainer.callbacks``) is left as it is."""
    bar = trainer.progress_bar_callback
    if bar is None or any(bar is cb for cb in configured or ()):
        return
    trainer.callbacks[trainer.callbacks.index(bar)] = StepProgressBar()


class LatentVidCLI(LightningCLI):
    """LightningCLI with latentvid's defaults (subclass mode, config saved beside checkpoints,
    crash-safe checkpoints, resume / preemption / numerical-guard callbacks, start-up checks)."""

    def __init__(self, args: list[str] | None = None, **kwargs) -> None:
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False},
            args=args,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for key, callback in DEFAULT_CALLBACKS.items():
            parser.add_lightning_class_args(callback, key)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, FileNotFoundError) as exc:
            if os.environ.get(DEBUG_ENV) == "1":
                raise
            raise ConfigError(_constructor_messages(exc)) from exc

    def instantiate_trainer(self, **kwargs) -> Trainer:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        given = config.get("trainer", {}).get("callbacks") or []
        given = list(given) if isinstance(given, list) else [given]  # before the Trainer adds its own to it
        trainer = super().instantiate_trainer(**kwargs)
        install_atomic_checkpoint_io(trainer)
        install_step_progress_bar(trainer, given)
        trainer.callbacks.append(LaunchDir())  # checkpoints name files relative to this directory
        return trainer

    def _parse_ckpt_path(self) -> None:
        """Lightning builds the model of a run resumed from a checkpoint file with the checkpoint's saved
        hyperparameters, over what the config and command line say; say which of theirs that replaces
        (``--ckpt_path last`` is resolved later, in :meth:`_resolve_last`, and keeps the config's)."""
        sub = self.config.get("subcommand")
        before = _flat_settings(self.config[sub].get("model")) if sub else {}
        super()._parse_ckpt_path()
        if not sub:
            return
        after = _flat_settings(self.config[sub].get("model"))
        replaced = [f"{k} = {before[k]!r} -> {after[k]!r}" for k in sorted(before)
                    if k in after and before[k] != after[k]]
        if replaced:
            warnings.warn(f"resuming from {self.config[sub].get('ckpt_path')}: the model is rebuilt with the "
                          f"checkpoint's saved settings, which replace these of the config / command line: "
                          f"{'; '.join(replaced)}", UserWarning, stacklevel=2)

    # ---- fit ------------------------------------------------------------------------------
    def _resolve_last(self) -> None:
        """``--ckpt_path last``: the newest last*.ckpt of this run's folders (Lightning's own "last"
        only looks in the new run's version folder, which is empty)."""
        cfg = self.config_init[self.subcommand]
        if cfg.get("ckpt_path") != "last":
            return
        folders = [self.trainer.default_root_dir] + [cb.dirpath for cb in self.trainer.checkpoint_callbacks
                                                     if isinstance(cb, ModelCheckpoint) and cb.dirpath]
        found = find_last_checkpoint(folders)
        if found is None:
            rank_zero_info(f"--ckpt_path last: no last*.ckpt under {', '.join(map(str, folders))}; starting fresh")
        else:
            rank_zero_info(f"--ckpt_path last: resuming from {found}")
        cfg["ckpt_path"] = str(found) if found else None

    def _continue_run_folder(self) -> None:
        """Resume into the run folder (logger version) that holds the checkpoint, so logs, the
        recorder's files and ModelCheckpoint's keep-N bookkeeping continue in one place."""
        ckpt = self.config_init[self.subcommand].get("ckpt_path")
        logger = self.trainer.logger
        if not ckpt or not Path(ckpt).exists() or logger is None:
            return
        version = _run_version(self.trainer, Path(ckpt).absolute())
        # only a logger that has not fixed (or created) its version yet; _version is None until then
        fresh = getattr(logger, "_version", 0) is None and getattr(logger, "_experiment", None) is None
        if version is not None and fresh:
            logger._version = version
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            rank_zero_info(f"continuing in the run folder {Path(ckpt).absolute().parents[1]}")

    def before_fit(self) -> None:
        self._resolve_last()
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path")
        problems = check_fit(self.model, self.datamodule, self.trainer.callbacks, ckpt_path)
        problems += foreign_checkpoints(self.trainer, ckpt_path)
        if problems:
            raise PreflightError(problems)
        self._continue_run_folder()


def _flat_settings(config, prefix: str = "model") -> dict[str, object]:
    """A model config (jsonargparse Namespace or dict) as {"model.lr": 0.001, "model.unet.depth": 2, ...}:
    init_args folded into their parent, tuples as lists, so that configs compare key by key."""
    if config is None:
        return {}
    if hasattr(config, "as_dict"):
        config = config.as_dict()
    if isinstance(config, dict):
        flat: dict[str, object] = {}
        for key, value in config.items():
            name = prefix if key == "init_args" else f"{prefix}.{key}"
            flat.update(_flat_settings(value, name))
        return flat
    return {prefix: list(config) if isinstance(config, tuple) else config}


def _one_line(exc: BaseException) -> str:
    """The first useful line of an argument/config error (jsonargparse nests the cause in the message)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # jsonargparse puts the specific cause ("Key 'x' is not expected", "File does not exist") last
    return lines[-1] if lines else type(exc).__name__


def _problems(title: str, problems: list[str]) -> str:
    return f"latentvid: {title}:\n" + "".join(f"  - {p}\n" for p in problems)


def main(args: list[str] | None = None) -> None:
    """Entry point of ``latentvid`` and ``tools/fit.py``. Config and file errors end in a short
    message (exit status 2), a numerical stop in one message (status 1), never a traceback
    (``LATENTVID_DEBUG=1`` shows them)."""
    from jsonargparse import ArgumentError

    debug = os.environ.get(DEBUG_ENV) == "1"
    hint = f"(run with --help for the options, {DEBUG_ENV}=1 for a traceback)\n"
    try:
        LatentVidCLI(args=args)
    except ArgumentError as exc:
        if debug:
            raise
        sys.stderr.write(f"latentvid: config error: {_one_line(exc)}\n{hint}")
        sys.exit(2)
    except ConfigError as exc:
        sys.stderr.write(_problems("the config does not build", exc.problems) + hint)
        sys.exit(2)
    except PreflightError as exc:
        if debug:
            raise
        sys.stderr.write(_problems(f"the run cannot start ({len(exc.problems)} problem(s))", exc.problems) + hint)
        sys.exit(2)
    except (FileNotFoundError, CheckpointReadError, ResumeError) as exc:
        if debug:
            raise
        what = ("file not found" if isinstance(exc, FileNotFoundError)
                else "cannot resume" if isinstance(exc, ResumeError) else "unreadable checkpoint")
        sys.stderr.write(f"latentvid: {what}: {exc}\n")
        sys.exit(2)
    except CheckpointWriteError as exc:  # the run stops at the save; earlier checkpoints are intact
        if debug:
            raise
        sys.stderr.write(f"latentvid: training stopped: {exc}\n")
        sys.exit(1)
    except NonFiniteError as exc:
        if debug:
            raise
        sys.stderr.write(f"latentvid: training stopped: {exc}\n")
        sys.exit(1)
    except DataError as exc:  # a data source that stops working after the start-up checks
        if debug:
            raise
        # a too-small data set stops every rank alike: say it once (Lightning's launcher sets LOCAL_RANK)
        if not isinstance(exc, SmallDataError) or os.environ.get("LOCAL_RANK", "0") == "0":
            sys.stderr.write(f"latentvid: data error: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
