"""Fixtures for end-to-end runs of tools/fit.py on tests/configs/resume.yaml (resume, signals, DDP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESUME_CONFIG = ROOT / "tests" / "configs" / "resume.yaml"
FIT = ROOT / "tools" / "fit.py"


def fit_command(run_root: Path, data_root: Path, *extra: str) -> list[str]:
    """``python tools/fit.py -c tests/configs/resume.yaml`` into ``run_root`` on the shared data."""
    return [sys.executable, str(FIT), "-c", str(RESUME_CONFIG), "--trainer.default_root_dir", str(run_root),
            "--data.init_args.root", str(data_root), "--data.init_args.generate", "false", *extra]


def fit_env() -> dict[str, str]:
    # one thread: the CPU kernels' results do not depend on a thread count, and cores are shared
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="session")
def resume_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shapes folder tests/configs/resume.yaml trains on (generated once per session)."""
    from latentvid.data.shapes import generate_shapes_dataset

    root = tmp_path_factory.mktemp("resume_shapes")
    generate_shapes_dataset(root, seed=0, clips_per_combo=1, num_frames=4, size=16)
    return root


@pytest.fixture(scope="session")
def run_fit(resume_data: Path) -> Callable[..., subprocess.CompletedProcess]:
    """``run_fit(run_root, *extra_args, timeout=300)``: run tools/fit.py to completion (or death)."""

    def run(run_root: Path, *extra: str, timeout: int = 300) -> subprocess.CompletedProcess:
        return subprocess.run(fit_command(run_root, resume_data, *extra), cwd=run_root.parent, env=fit_env(),
                              capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def start_fit(resume_data: Path) -> Callable[..., subprocess.Popen]:
    """``start_fit(run_root, *extra_args)``: start tools/fit.py in the background (stdout/stderr to files)."""

    def start(run_root: Path, *extra: str) -> subprocess.Popen:
        run_root.parent.mkdir(parents=True, exist_ok=True)
        out = open(run_root.parent / f"{run_root.name}.out", "w")
        err = open(run_root.parent / f"{run_root.name}.err", "w")
        return subprocess.Popen(fit_command(run_root, resume_data, *extra), cwd=run_root.parent, env=fit_env(),
                                stdout=out, stderr=err, text=True)

    return start


def read_steps(run_root: Path, rank: int = 0) -> list[list[dict[str, Any]]]:
    """The StepRecorder's training-step records under ``run_root``, one list per process start."""
    files = sorted(run_root.rglob(f"steps-rank{rank}.jsonl"))
    assert len(files) == 1, f"expected one steps-rank{rank}.jsonl under {run_root}, found {files}"
    segments: list[list[dict[str, Any]]] = []
    for line in files[0].read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "start":
            segments.append([])
        elif "loss" in record:
            segments[-1].append(record)
    return segments


@pytest.fixture(scope="session")
def steps_of() -> Callable[..., list[list[dict[str, Any]]]]:
    """``steps_of(run_root, rank=0)``: see :func:`read_steps`."""
    return read_steps


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory, run_fit) -> Path:
    """An uninterrupted 12-step run of tests/configs/resume.yaml (what interrupted runs must reproduce)."""
    root = tmp_path_factory.mktemp("reference") / "run"
    out = run_fit(root)
    assert out.returncode == 0, out.stderr[-4000:]
    return root
