"""Preemption: on SIGTERM / SIGUSR1, finish the current step, save a checkpoint, exit with code 0.

Schedulers warn before they kill: SLURM sends the signal named by ``#SBATCH --signal=USR1@90``
(and SIGTERM at the end of the grace period), Kubernetes and torchrun's agent send SIGTERM. The
signal handler only records the signal (a second one ends the process at once, for a step that
never ends); at the end of the next training batch every rank agrees (an all-reduce, so a signal
that reached one rank stops all of them at the same step), the checkpoint
``<checkpoint dir>/last.ckpt`` is written (the folder of the first ModelCheckpoint, so
``--ckpt_path last`` finds it) and training ends through Lightning's ``SIGTERMException``, whose
exit status is 0. Saving at a batch boundary, not inside the handler, means the checkpoint
never holds a half-applied optimiser step; with gradient accumulation it waits for the end of
the accumulation window (partial gradients are not saved in checkpoints).

SLURM auto-requeue: under Lightning's ``SLURMEnvironment(auto_requeue=True)`` (its default in a
SLURM job) this callback takes over the requeue signal from Lightning's handler (which saves
from inside the signal handler) and, after saving, requeues the job with ``scontrol requeue``
from rank 0. The requeued job runs the same command; with ``--ckpt_path last`` it continues.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


def checkpoint_dir(trainer: Trainer) -> Path:
    """Where the run's checkpoints go: the first ModelCheckpoint's folder, else ``<log dir>/checkpoints``."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath:
            return Path(cb.dirpath)
    return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"


def slurm_job_id(environ: dict[str, str] | None = None) -> str | None:
    """The SLURM job id to requeue (``ARRAY_JOB_ID_TASK_ID`` for array jobs), None outside SLURM."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def requeue_slurm_job(job_id: str) -> bool:
    """``scontrol requeue JOB_ID``; True when it succeeded."""
    if not re.fullmatch(r"[0-9_]+", job_id):
        raise ValueError(f"not a SLURM job id: {job_id!r}")
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("could not requeue SLURM job %s: %s", job_id, err)
        return False
    if result.returncode != 0:
        log.warning("scontrol requeue %s failed (%d): %s", job_id, result.returncode, result.stderr.strip())
    return result.returncode == 0


def _signal(name: str | int) -> signal.Signals:
    if isinstance(name, int):
        return signal.Signals(name)
    try:
        return signal.Signals[name.upper() if name.upper().startswith("SIG") else f"SIG{name.upper()}"]
    except KeyError:
        raise ValueError(f"unknown signal {name!r} (use e.g. SIGTERM, SIGUSR1)") from None


class Preemption(Callback):
    """Save and exit cleanly when the job is told to stop (see the module docstring).

    Args:
        signals: the signals that mean "stop soon" (names like ``SIGTERM`` or numbers).
        filename: checkpoint name (without ``.ckpt``) written into the checkpoint folder.
        requeue: requeue the SLURM job after saving on its requeue signal; ``None``: when
            Lightning's SLURM environment has ``auto_requeue`` on.
    """

    def __init__(self, signals: list[str] = ["SIGTERM", "SIGUSR1"], filename: str = "last",  # noqa: B006
                 requeue: bool | None = None) -> None:
        self.signals = [_signal(s) for s in signals]
        if not filename or "/" in filename:
            raise ValueError(f"filename must be a plain file name, got {filename!r}")
        self.filename = filename
        self.requeue = requeue
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self.saved_path: Path | None = None

    # ---- handlers -------------------------------------------------------------------------
    def _handler(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            # a second signal: the step does not end (a hang?) or the sender insists; die as if unhandled
            log.warning("received %s again: exiting without a checkpoint", signal.Signals(signum).name)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signal.Signals(signum)
        # only note it: the checkpoint is written at the next batch boundary, not in the middle of a step
        log.info("received %s: will save a checkpoint and stop after the current training step (send it again "
                 "to exit at once)", self.received.name)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # after Lightning's own handlers are installed (just before the fit loop runs), so ours win
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handler)

    def _restore_handlers(self) -> None:
        for sig, previous in self._previous.items():
            if previous is not None:
                signal.signal(sig, previous)
        self._previous = {}

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore_handlers()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore_handlers()

    # ---- acting at a batch boundary -------------------------------------------------------
    def _should_requeue(self, trainer: Trainer) -> bool:
        # the cluster-environment plugin decides, as in Lightning's own signal handling
        env = getattr(getattr(trainer, "_accelerator_connector", None), "cluster_environment", None)
        is_slurm = isinstance(env, SLURMEnvironment)
        requeue = self.requeue if self.requeue is not None else is_slurm and env.auto_requeue
        requeue_signal = env.requeue_signal if is_slurm else signal.SIGUSR1
        return bool(requeue) and self.received == requeue_signal

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        accumulate = max(1, trainer.accumulate_grad_batches)
        if (batch_idx + 1) % accumulate and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # inside a gradient-accumulation window: its partial gradients are not in a checkpoint
        stop = self.received is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        name = self.received.name if self.received is not None else "a signal on another rank"
        path = checkpoint_dir(trainer) / f"{self.filename}.ckpt"
        trainer.save_checkpoint(str(path))  # every rank takes part; rank 0 writes
        self.saved_path = path
        rank_zero_info(f"{name}: saved {path} at global step {trainer.global_step}; exiting "
                       f"(resume with --ckpt_path last)")
        if trainer.is_global_zero and self._should_requeue(trainer):
            job = slurm_job_id()
            if job and requeue_slurm_job(job):
                rank_zero_info(f"requeued SLURM job {job}")
        raise SIGTERMException  # Lightning's graceful stop: on_exception hooks, loggers closed, exit status 0
