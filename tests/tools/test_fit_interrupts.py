"""End to end: tools/fit.py preempted with SIGTERM, or killed while writing a checkpoint.

* SIGTERM from outside while it trains: it finishes the step, writes ``last.ckpt``, exits with
  status 0, and ``--ckpt_path last`` continues with the uninterrupted run's exact losses.
* SIGKILL half way through writing ``last.ckpt`` (a fault-injecting checkpoint writer): the previous
  ``last.ckpt`` stays loadable, the partial file is a hidden temporary that resuming ignores and the
  next save removes, and ``--ckpt_path last`` continues from the previous checkpoint.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


def _recorded_steps(run: Path) -> int:
    files = list(run.rglob("steps-rank0.jsonl"))
    return sum('"loss"' in line for line in files[0].read_text().splitlines()) if files else 0


def _losses(records: list[dict]) -> list[tuple]:
    return [(r["step"], r["loss"], r["keys"]) for r in records]


def test_sigterm_saves_a_checkpoint_exits_0_and_resumes_exactly(tmp_path: Path, start_fit, run_fit, steps_of,
                                                                reference_run: Path) -> None:
    run = tmp_path / "run"
    proc = start_fit(run, "--trainer.max_steps", "200")  # would train for minutes
    try:
        deadline = time.monotonic() + 240
        while _recorded_steps(run) < 2:  # training is under way
            assert proc.poll() is None, (tmp_path / "run.err").read_text()[-3000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = (tmp_path / "run.err").read_text()
    assert code == 0, err[-3000:]
    (segment,) = steps_of(run)
    stopped = segment[-1]["step"]
    assert 2 <= stopped < 12, "stopped within a few steps of the signal"
    assert f"SIGTERM: saved {next(run.rglob('checkpoints'))}/last.ckpt at global step {stopped}" in err
    assert torch.load(next(run.rglob("last.ckpt")), weights_only=True)["global_step"] == stopped

    out = run_fit(run, "--ckpt_path", "last", "--trainer.max_steps", "12")
    assert out.returncode == 0, out.stderr[-3000:]
    (reference,) = steps_of(reference_run)
    _, resumed = steps_of(run)
    assert _losses(resumed) == _losses(reference[stopped:])  # steps stopped+1 .. 12


def test_kill_during_a_checkpoint_write_leaves_the_previous_one(tmp_path: Path, run_fit, steps_of,
                                                                reference_run: Path) -> None:
    # every step saves step=NNN.ckpt, then last.ckpt: save 6 is last.ckpt at step 3
    crash = json.dumps({"class_path": "latentvid.callbacks.faults.CrashingCheckpointIO",
                        "init_args": {"on_save": 6, "fraction": 0.5, "mode": "kill"}})
    run = tmp_path / "run"
    out = run_fit(run, "--trainer.plugins", crash, "--trainer.max_steps", "4")
    assert out.returncode == -9, out.stderr[-3000:]
    folder = next(run.rglob("checkpoints"))
    partial = [p for p in folder.iterdir() if p.name.startswith(".last.ckpt.tmp-")]
    assert len(partial) == 1 and partial[0].stat().st_size > 0, "killed while writing last.ckpt"
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 2, "the previous last.ckpt loads"
    assert torch.load(folder / "step=003.ckpt", weights_only=True)["global_step"] == 3

    out = run_fit(run, "--ckpt_path", "last", "--trainer.max_steps", "4")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resuming from {folder / 'last.ckpt'}" in out.stderr
    assert not partial[0].exists(), "the dead writer's partial file was removed by the next save"
    (reference,) = steps_of(reference_run)
    _, resumed = steps_of(run)
    assert _losses(resumed) == _losses(reference[2:4])  # steps 3 and 4 again, identically


def test_a_failed_checkpoint_write_stops_the_run_in_one_line(tmp_path: Path, run_fit) -> None:
    # a full disk, as the writer sees it: the write raises (save 2 is last.ckpt at step 1)
    crash = json.dumps({"class_path": "latentvid.callbacks.faults.CrashingCheckpointIO",
                        "init_args": {"on_save": 2, "fraction": 0.5, "mode": "raise"}})
    run = tmp_path / "run"
    out = run_fit(run, "--trainer.plugins", crash, "--trainer.max_steps", "3")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("latentvid: training stopped: could not write checkpoint ") and "last.ckpt" in last, last
    assert "injected failure" in last and "GiB free" in last
    folder = next(run.rglob("checkpoints"))
    assert sorted(p.name for p in folder.iterdir()) == ["step=001.ckpt"]  # written before; no partial file left
