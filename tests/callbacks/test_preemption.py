"""Tests for latentvid/callbacks/preemption.py: a signal ends the run at a step boundary with a checkpoint."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback

from latentvid.callbacks.data_position import DataPosition
from latentvid.callbacks.preemption import Preemption, slurm_job_id
from latentvid.callbacks.rng import RNGState

pytestmark = pytest.mark.filterwarnings("ignore:The dirpath has changed")


class SignalAt(Callback):
    """Send ``sig`` to this process when training step ``step`` starts (it must still complete)."""

    def __init__(self, step: int, sig: signal.Signals) -> None:
        self.step, self.sig, self.sent = step, sig, False

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step + 1 == self.step and not self.sent:  # once: a second signal would kill pytest
            self.sent = True
            os.kill(os.getpid(), self.sig)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_saves_after_the_current_step_and_exits_cleanly(tmp_path: Path, tiny_fit, sig) -> None:
    before = signal.getsignal(sig)
    preemption = Preemption()
    with pytest.raises(SystemExit) as exit_:
        tiny_fit(tmp_path, [DataPosition(), RNGState(), preemption, SignalAt(3, sig)], 10)
    assert exit_.value.code is None  # SystemExit(None): exit status 0
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert preemption.saved_path == ckpt and torch.load(ckpt, weights_only=True)["global_step"] == 3
    assert signal.getsignal(sig) == before, "handlers are restored"


def test_the_preemption_checkpoint_resumes_exactly(tmp_path: Path, tiny_fit) -> None:
    ref, _ = tiny_fit(tmp_path / "ref", [DataPosition(), RNGState()], 8)
    with pytest.raises(SystemExit):
        tiny_fit(tmp_path / "cut", [DataPosition(), RNGState(), Preemption(), SignalAt(4, signal.SIGTERM)], 8)
    resumed, trainer = tiny_fit(tmp_path / "res", [DataPosition(), RNGState()], 8,
                                ckpt_path=str(tmp_path / "cut/checkpoints/last.ckpt"))
    assert trainer.global_step == 8
    assert resumed.seen == ref.seen[4:] and resumed.draws == ref.draws[4:]


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A SLURM job environment whose ``scontrol`` records its arguments in the returned file."""
    log = tmp_path / "scontrol.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n")
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for key, value in dict(SLURM_JOB_ID="4242", SLURM_NTASKS="1", SLURM_NTASKS_PER_NODE="1", SLURM_PROCID="0",
                           SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_JOB_NAME="train",
                           SLURM_NODELIST="localhost").items():
        monkeypatch.setenv(key, value)
    return log


@pytest.mark.parametrize("sig, requeued", [(signal.SIGUSR1, True), (signal.SIGTERM, False)])
def test_slurm_auto_requeue_requeues_on_its_signal_after_saving(tmp_path: Path, tiny_fit, fake_slurm: Path,
                                                                sig, requeued: bool) -> None:
    with pytest.raises(SystemExit):
        tiny_fit(tmp_path, [Preemption(), SignalAt(2, sig)], 6, plugins=[SLURMEnvironment(auto_requeue=True)])
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert (fake_slurm.read_text().split() if fake_slurm.exists() else []) == (["requeue", "4242"] if requeued else [])
    assert not list(tmp_path.rglob("hpc_ckpt_*.ckpt")), "Lightning's in-handler save did not run: ours replaced it"


def test_slurm_job_id_of_array_jobs() -> None:
    assert slurm_job_id({"SLURM_JOB_ID": "7"}) == "7"
    assert slurm_job_id({"SLURM_JOB_ID": "7", "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "3"}) == "5_3"
    assert slurm_job_id({}) is None


def test_a_second_signal_ends_the_process_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import latentvid.callbacks.preemption as module

    sent = []
    monkeypatch.setattr(module.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    previous = signal.getsignal(signal.SIGUSR2)
    try:
        cb = Preemption(signals=["SIGUSR2"])
        cb._handler(signal.SIGUSR2, None)
        assert cb.received == signal.SIGUSR2 and sent == []  # the first one only takes note
        cb._handler(signal.SIGUSR2, None)
        assert sent == [(os.getpid(), signal.SIGUSR2)] and signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_with_gradient_accumulation_the_save_waits_for_the_optimiser_step(tmp_path: Path, tiny_fit) -> None:
    # 3 batches per optimiser step; the signal arrives in the first batch of step 2 (batch 4)
    with pytest.raises(SystemExit):
        tiny_fit(tmp_path, [Preemption(), SignalAt(2, signal.SIGTERM)], 5, accumulate_grad_batches=3)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 2  # saved after step 2's update, not after batch 4 of 6
    assert state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] in (5, 6)
