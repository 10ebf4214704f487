"""benchmarks/buckets.py (tools/benchmark.py buckets) at a tiny size: both ways measured in one run, the
square crop loss against its closed form, buckets losing fewer pixels, the printed table = the JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path


def test_tiny_buckets_benchmark(tmp_path: Path, capsys, load_script) -> None:
    bench = load_script("benchmarks/buckets.py", "latentvid_benchmark_buckets")
    out = tmp_path / "buckets.json"
    sizes, lengths = [(64, 36), (36, 64), (48, 36), (32, 32)], [6, 12]  # (W, H); frames
    bench.main(["--clips", "12", "--sizes", ",".join(f"{w}x{h}" for w, h in sizes), "--lengths", "6,12",
                "--clip", "9x32x32", "--frames", "5,9", "--multiple", "8", "--workers", "0", "--out", str(out)])
    report = json.loads(out.read_text())
    # square 32 x 32 crops keep min(h, w)^2 of each frame; every clip reads min(9, length) frames
    read = sum(min(9, n) * w * h for w, h in sizes for n in lengths)
    lost = sum(min(9, n) * (w * h - min(w, h) ** 2) for w, h in sizes for n in lengths)
    pixels = report["pixels"]
    assert abs(pixels["square"]["crop_loss"] - lost / read) < 1e-9
    assert abs(pixels["square"]["padding"] - 3 / 18) < 1e-9  # 6-frame files: 3 of 9 frames padded, half the set
    assert pixels["buckets"]["crop_loss"] < 0.5 * pixels["square"]["crop_loss"] and pixels["buckets"]["padding"] == 0
    rows = report["rows"]
    assert [(r["source"], r["way"]) for r in rows] == [("folder", "square"), ("folder", "buckets"),
                                                      ("shards", "square"), ("shards", "buckets")]
    assert all(r["clips"] >= 12 and r["clips_per_s"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    assert rows[0]["clips_by_shape"].keys() == {"32x32x9"} and len(rows[1]["clips_by_shape"]) > 1
    printed = capsys.readouterr().out
    for r in rows:
        line = re.search(rf"{r['source']}\s+0 {r['way']}\s+([0-9.]+)\s+([0-9]+)", printed)
        assert abs(float(line.group(1)) - r["clips_per_s"]) < 0.01
        assert abs(float(line.group(2)) - r["tokens_per_s"]) < 1
    assert f"{100 * pixels['square']['crop_loss']:9.1f}%" in printed
