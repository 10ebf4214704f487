"""benchmarks/resilience.py (tools/benchmark.py resilience) at a tiny size: both variants timed step by
step, both checkpoint writers timed, the printed ratios recomputable from the JSON."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path


def test_tiny_resilience_benchmark(tmp_path: Path, capsys, load_script) -> None:
    module = load_script("benchmarks/resilience.py", "latentvid_benchmark_resilience")
    out = tmp_path / "res.json"
    module.main(["--steps", "8", "--warmup", "2", "--repeats", "1", "--ckpt-mb", "2", "--dir", str(tmp_path),
                 "--out", str(out)])
    result = json.loads(out.read_text())
    steps = result["step_seconds"]
    assert set(steps) == {"plain Lightning", "latentvid defaults"}
    assert all(len(v) == 1 and 0 < v[0] < 60 for v in steps.values())
    assert all(t > 0 for t in result["save_seconds"].values())
    printed = capsys.readouterr().out
    ratio = float(re.search(r"latentvid defaults .*x([0-9.]+)", printed).group(1))
    expected = statistics.median(steps["latentvid defaults"]) / statistics.median(steps["plain Lightning"])
    assert abs(ratio - expected) < 1e-3
    assert not list(tmp_path.glob("tmp*")), "the checkpoint folder is removed"
