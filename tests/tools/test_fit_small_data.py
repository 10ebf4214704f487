"""End to end: tools/fit.py on a training set smaller than batch x workers x ranks (``small_data``).

On 2 gloo ranks (tests/configs/ddp.yaml, as tests/tools/test_ddp.py) with 2 workers, 3 clips and a
still train to max_steps (the set is drawn again within each epoch); with ``small_data: stop`` a
batch larger than the set stops the run before training with one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BATCH, WORKERS = 4, 2


def shapes_copy(root: Path, clips: int) -> Path:
    """The bundled shapes folder's indexes cut to ``clips`` clips and one still (absolute paths)."""
    shapes = ROOT / "data" / "shapes"
    root.mkdir()
    (root / ".complete").write_bytes((shapes / ".complete").read_bytes())
    for index, keep in (("videos.jsonl", clips), ("images.jsonl", 1), ("heldout.jsonl", 1)):
        rows = [json.loads(line) for line in (shapes / index).read_text().splitlines()[:keep]]
        for r in rows:
            r["path"] = str(shapes / r["path"])
        (root / index).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def fit(tmp: Path, data: Path, run: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "tools" / "fit.py"), "-c", str(ROOT / "tests/configs/ddp.yaml"),
           "--trainer.default_root_dir", str(tmp / run), "--data.init_args.root", str(data),
           "--data.init_args.generate", "false", "--data.init_args.num_workers", str(WORKERS),
           "--trainer.limit_train_batches", "null", *extra]
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)


def test_three_clips_on_two_ranks_train_to_max_steps(tmp_path: Path) -> None:
    data = shapes_copy(tmp_path / "shapes", 3)
    out = fit(tmp_path, data, "run", "--trainer.max_steps", "4")
    assert out.returncode == 0, out.stderr[-3000:]
    state = torch.load(next((tmp_path / "run").rglob("last.ckpt")), weights_only=True)
    # 4 samples (3 clips + 1 still) < 4 x 2 ranks: each epoch is one batch per rank, drawn with replacement
    assert (state["global_step"], state["epoch"]) == (4, 3)


def test_stop_ends_before_training_in_one_line(tmp_path: Path) -> None:
    data = shapes_copy(tmp_path / "shapes", 3)
    out = fit(tmp_path, data, "stop", "--trainer.devices", "1", "--trainer.strategy", "auto",
              "--data.init_args.small_data", "stop", "--data.init_args.batch_size", "5")
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("latentvid:")]
    assert lines == [f"latentvid: data error: data ({data}): 4 training samples give some rank no full batch of "
                     f"batch_size 5 (num_workers {WORKERS}, ranks 1); add samples, lower batch_size / "
                     "num_workers / devices, or set small_data: repeat to reuse samples within an epoch"]
    assert not list((tmp_path / "stop").rglob("*.ckpt"))
