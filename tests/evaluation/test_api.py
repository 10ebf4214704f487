"""The README's Python API example (latentvid/evaluation/__init__.py), run as written against a tiny
checkpoint placed where the example looks for it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_example() -> str:
    """The ```python block of the README's "Python API" section."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("### Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_is_five_lines_of_the_public_api():
    code = readme_example()
    assert len(code.strip().splitlines()) == 5
    assert "from latentvid.evaluation import" in code


@pytest.mark.slow
def test_readme_example_runs_as_written(tmp_path):
    fit = subprocess.run([sys.executable, str(ROOT / "tools" / "fit.py"), "-c", str(ROOT / "tests" / "configs" / "tiny.yaml"),
                          "--trainer.default_root_dir", str(tmp_path / "fit"), "--data.init_args.root",
                          str(tmp_path / "shapes")], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert fit.returncode == 0, fit.stderr[-4000:]
    (ckpt,) = sorted((tmp_path / "fit").rglob("last.ckpt"))
    run = tmp_path / "runs" / "base" / "lightning_logs" / "version_0" / "checkpoints"  # where a base run writes it
    run.mkdir(parents=True)
    shutil.copy(ckpt, run / "last.ckpt")
    script = tmp_path / "example.py"
    script.write_text(readme_example() + "assert videos.shape[:2] == (2, 3) and videos.abs().max() <= 1\n")
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    scores = eval(res.stdout.strip().splitlines()[-1])  # the printed dict
    assert set(scores) == {"colour", "shape", "direction", "all"}
    assert all(0 <= v <= 1 for v in scores.values())
