"""Runs never overwrite each other (latentvid/cli.py, latentvid/pipelines/loading.py): each run's
checkpoints live in its own run folder, a fixed ``dirpath`` holding another run's checkpoints stops a
new run, and a run root (``runs/base``) names its newest checkpoint for resuming and loading."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
import yaml

from latentvid.cli import main
from latentvid.pipelines.loading import load_model, resolve_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
SHAPES = ROOT / "data" / "shapes"  # the bundled set, read only (resized to tiny.yaml's clips on load)


@pytest.fixture(autouse=True)
def _leave_global_rng_and_seed_env_alone(monkeypatch: pytest.MonkeyPatch):
    from latentvid.callbacks.rng import capture_rng_state, restore_rng_state

    for key in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.setenv(key, os.environ[key]) if key in os.environ else monkeypatch.delenv(key, raising=False)
    state = capture_rng_state()
    yield
    restore_rng_state(state)


def fit(root: Path, monkeypatch: pytest.MonkeyPatch, *extra: str, steps: int = 1) -> None:
    args = ["fit", "-c", str(TINY), *extra, "--trainer.default_root_dir", str(root), "--data.init_args.root",
            str(SHAPES), "--data.init_args.generate", "false", "--trainer.max_steps", str(steps),
            "--trainer.enable_progress_bar", "false"]
    monkeypatch.setattr(sys, "argv", ["latentvid", *args])
    monkeypatch.delenv("LATENTVID_DEBUG", raising=False)
    main(args)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_runs_of_one_recipe_keep_two_checkpoints_and_the_root_names_the_newest(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    runs = tmp_path / "runs" / "tiny"
    fit(runs, monkeypatch)
    first = runs / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    before = digest(first)
    fit(runs, monkeypatch)
    second = runs / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt"
    assert sorted(runs.rglob("*.ckpt")) == [first, second]
    assert digest(first) == before and digest(second) != before
    for ckpt in (first, second):  # each beside its own run's config
        assert (ckpt.parents[1] / "config.yaml").is_file()
    # a run root stands for its newest checkpoint wherever one is loaded (sample.py, cascade.yaml, evaluate.py)
    assert resolve_checkpoint(runs) == second
    model, ckpt = load_model(runs)
    assert ckpt["global_step"] == 1
    # --ckpt_path last continues the newest run in its own folder; the other run stays as it was
    fit(runs, monkeypatch, "--ckpt_path", "last", steps=2)
    assert sorted(runs.rglob("*.ckpt")) == [first, second] and digest(first) == before
    assert load_model(runs)[1]["global_step"] == 2


def test_a_fixed_dirpath_holding_another_runs_checkpoint_stops_the_new_run(tmp_path: Path, monkeypatch,
                                                                           capsys) -> None:
    folder = tmp_path / "checkpoints"
    overlay = tmp_path / "fixed.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(folder), "save_last": True}}]}}))
    fit(tmp_path / "a", monkeypatch, "-c", str(overlay))
    last = folder / "last.ckpt"
    before = digest(last)
    with pytest.raises(SystemExit) as exit_:
        fit(tmp_path / "b", monkeypatch, "-c", str(overlay))
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert f"ModelCheckpoint.dirpath {folder} already holds last.ckpt of another run" in err
    assert digest(last) == before and not (tmp_path / "b").exists()
    # resuming that run from its own folder is the same run going on
    fit(tmp_path / "a", monkeypatch, "-c", str(overlay), "--ckpt_path", str(last), steps=2)
    assert load_model(last)[1]["global_step"] == 2
