"""End to end: tools/fit.py killed with SIGKILL resumes exactly where its checkpoints left it.

tests/configs/resume.yaml runs deterministically on CPU (one thread, caption cache off), with
7-batch epochs, validation and sample videos at steps 5 and 10 and a checkpoint after every step.
A run killed (SIGKILL, nothing can run at exit) before step 10, resumed from its step-4
checkpoint and from ``--ckpt_path last`` (step 9), reproduces the uninterrupted run's per-step
losses, sample keys and final weights bit for bit: the resumes cross a validation, an epoch
boundary and a second validation.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


def _last(run: Path) -> dict:
    ckpts = sorted(run.rglob("last.ckpt"))
    assert len(ckpts) == 1, ckpts
    return torch.load(ckpts[0], weights_only=True)


def _assert_same_training_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    for key in ("state_dict", "current_model_state"):  # EMA weights and the raw weights
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert all(torch.equal(sa[i][n], sb[i][n]) for i in sa for n in sa[i])
    assert a["lr_schedulers"] == b["lr_schedulers"]


def _losses_and_keys(records: list[dict]) -> list[tuple]:
    return [(r["step"], r["loss"], r["keys"]) for r in records]


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory: pytest.TempPathFactory, run_fit) -> Path:
    root = tmp_path_factory.mktemp("killed") / "run"
    out = run_fit(root, "--trainer.callbacks+=latentvid.callbacks.faults.KillAtStep", "--trainer.callbacks.step=10")
    assert out.returncode == -9, f"expected death by SIGKILL, got {out.returncode}: {out.stderr[-3000:]}"
    return root


def test_killed_run_left_its_checkpoints(killed_run: Path, steps_of) -> None:
    (segment,) = steps_of(killed_run)
    assert [r["step"] for r in segment] == list(range(1, 10)), "it died before step 10"
    assert _last(killed_run)["global_step"] == 9


def test_resume_from_step_4_matches_the_uninterrupted_run(reference_run: Path, killed_run: Path, run_fit,
                                                          steps_of, tmp_path: Path) -> None:
    (reference,) = steps_of(reference_run)
    ckpt = next(killed_run.rglob("step=004.ckpt"))
    # Lightning rebuilds the model from the checkpoint's saved settings: a different learning rate given
    # on the command line is replaced (the run below still matches bit for bit), and the log says so
    out = run_fit(tmp_path / "run", "--ckpt_path", str(ckpt), "--model.init_args.lr", "0.123")
    assert out.returncode == 0, out.stderr[-4000:]
    assert f"resuming from {ckpt}: the model is rebuilt with the checkpoint's saved settings" in out.stderr
    assert "model.lr = 0.123 -> " in out.stderr
    (resumed,) = steps_of(tmp_path / "run")
    assert _losses_and_keys(resumed) == _losses_and_keys(reference[4:])  # steps 5..12, bit for bit
    _assert_same_training_state(_last(tmp_path / "run"), _last(reference_run))


def test_ckpt_path_last_continues_the_killed_run_in_its_folder(reference_run: Path, killed_run: Path, run_fit,
                                                               steps_of) -> None:
    (reference,) = steps_of(reference_run)
    out = run_fit(killed_run, "--ckpt_path", "last")
    assert out.returncode == 0, out.stderr[-4000:]
    assert "--ckpt_path last: resuming from" in out.stderr and "last.ckpt" in out.stderr
    assert [p.name for p in (killed_run / "lightning_logs").iterdir()] == ["version_0"], "same run folder"
    killed, resumed = steps_of(killed_run)  # the recorder's file continues, one segment per process
    assert _losses_and_keys(resumed) == _losses_and_keys(reference[9:])  # steps 10..12
    _assert_same_training_state(_last(killed_run), _last(reference_run))
