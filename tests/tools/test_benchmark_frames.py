"""benchmarks/frames.py (tools/benchmark.py frames): its scores on true clips, where the answers are known,
and a tiny run of every task and method on a tiny base and frame-conditioned checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from latentvid.data.shapes import render_clip
from latentvid.data.video import from_uint8


def true_clip(frames: int, seed: int = 3) -> torch.Tensor:
    """(3, frames, 32, 32): a shape moving at constant speed (slow travel, so it stays in frame)."""
    return from_uint8(render_clip("red", "square", "left", num_frames=frames, size=32, rng=np.random.default_rng(seed)))


def test_scores_of_true_clips(load_script):
    bench = load_script("benchmarks/frames.py", "latentvid_benchmark_frames")
    long = torch.stack([true_clip(17, s) for s in range(3)])  # (3, 3, 17, 32, 32)
    ext = bench.extension_scores(long, long[:, :, :9], window=9, overlap=5)
    assert ext["stretches"] == [(8, 17)] and ext["seams"] == [9, 13]
    assert ext["probe_all"] == 1.0  # a true continuation keeps colour, shape and direction
    assert ext["seam_within"] == 1.0 and 0.5 < ext["seam_median"] < 1.5  # its seams step like the clip
    frozen = long.clone()
    frozen[:, :, 9:] = long[:, :, 8:9]  # the shape stops at the seam: the next stretch reads (nearly) static
    assert bench.extension_scores(frozen, long[:, :, :9], 9, 5)["probe_direction"] < 1.0
    jumped = long.clone()
    jumped[:, :, 9:] = torch.roll(long[:, :, 9:], shifts=8, dims=-1)  # a jump of 8 px at the first seam
    assert bench.extension_scores(jumped, long[:, :, :9], 9, 5)["seam_within"] == 0.5
    # against true continuations: stretches where the truth has left the frame are not "in view"
    rng = [np.random.default_rng(s) for s in range(3)]
    truth = torch.stack([from_uint8(render_clip("red", "square", "left", num_frames=9, rng=r, extend_to=33))
                         for r in rng])  # (3, 3, 33, 32, 32): leaves the frame within 33 frames
    own = bench.extension_scores(truth, truth[:, :, :9], 9, 5, truth)
    assert own["in_view_all"] == 1.0 and 3 <= own["in_view_stretches"] < 3 * 3 and own["probe_all"] < 1.0
    assert "in_view_all" not in bench.extension_scores(frozen, long[:, :, :9], 9, 5)  # only against a truth
    stopped = truth.clone()
    stopped[:, :, 9:] = truth[:, :, 8:9]
    assert bench.extension_scores(stopped, truth[:, :, :9], 9, 5, truth)["in_view_direction"] < 1.0
    # inputs that stay in view: every stretch of their continuation reads as the input, seams step on
    captions, slow = bench.held_out_inputs(12, 1000, 9, 32, extend_to=33, in_view=True)
    assert slow.shape == (12, 3, 33, 32, 32)
    fast = bench.held_out_inputs(12, 1000, 9, 32)[1]
    assert bench.mean_step(slow[0, :, :9]) < 0.3 * bench.mean_step(fast[0])  # the same draws over 32 steps, not 8
    stay = bench.extension_scores(slow, slow[:, :, :9], 9, 5, slow)
    assert stay["probe_all"] == 1.0 and stay["in_view_stretches"] == 12 * 3
    assert 0.75 < stay["seam_median"] < 1.3 and stay["seam_within"] >= 0.75  # sub-pixel steps: noisy, not broken
    assert stay["first_direction"] == 1.0 and 0.8 < stay["first_speed"] < 1.25  # the truth keeps its pace
    # a continuation at 3x the pace (every 3rd true frame after the input's last): 3x the speed
    hurried = torch.cat([slow[:, :, :9], slow[:, :, 11::3]], 2)  # frames 0-8, then 11, 14, ..., 32
    fast3 = bench.extension_scores(hurried, slow[:, :, :9], 9, 5)
    assert 2.4 < fast3["first_speed"] < 3.6 and fast3["first_direction"] == 1.0
    backwards = torch.cat([slow[:, :, :9], slow[:, :, :9].flip(2)[:, :, 1:]], 2)  # returns the way it came
    assert bench.extension_scores(backwards, slow[:, :, :9], 9, 5)["first_direction"] == 0.0
    with pytest.raises(ValueError, match="in_view"):
        bench.held_out_inputs(2, 0, in_view=True)
    # their frame rate: the data's travel per 8 steps at 8 fps, over 32 steps -> 32 fps
    assert bench.in_view_fps(33) == 32.0 and bench.in_view_fps(17) == 16.0
    # a longer input: the stretches stay 9 frames of new frames, from the input's last frame on
    longer = bench.extension_scores(slow, slow[:, :, :13], 13, 9, slow)
    assert longer["stretches"] == [(12, 21), (20, 29)] and longer["seams"] == [13, 17, 21, 25, 29]
    assert longer["probe_all"] == 1.0
    interp = bench.interpolation_scores(long[:, :, :9], long[:, :, :9])
    assert interp["beats_linear"] == 1.0 and interp["psnr"] > interp["linear_psnr"]
    images = long[:, :, 0]
    i2v = bench.i2v_scores(long[:, :, :9], images, images, ["a red square moving left"] * 3)
    assert i2v["first_minus_vae"] == 0.0 and i2v["moves"] == 1.0 and i2v["direction"] == 1.0


@pytest.mark.slow
def test_tiny_frames_run(tmp_path: Path, load_script):
    from tests.tools.test_sample_frames import config, fit

    bench = load_script("benchmarks/frames.py", "latentvid_benchmark_frames")
    base = fit(config(tmp_path / "base", tmp_path / "shapes"), tmp_path / "base.yaml")
    i2v = fit(config(tmp_path / "i2v", tmp_path / "shapes", init_from=str(base), unet={"frame_conditioning": True}),
              tmp_path / "i2v.yaml")
    out = tmp_path / "frames.json"
    seen = []  # (clip frames, fps, stride) of each extension call: the in-view clips go in at their own rate
    real_extend = bench.extend_video

    def extend(model, clips, *args, **kwargs):
        seen.append((clips.shape[2], args[-2].fps, kwargs["stride"]))
        return real_extend(model, clips, *args, **kwargs)

    bench.extend_video = extend
    result = bench.main(["--base", str(base), "--i2v", str(i2v), "--samples", "2", "--steps", "2", "--weights", "3",
                         "--extend-to", "17", "--stay-fps", "16", "--stride", "2", "--batch", "2", "--threads", "1",
                         "--out", str(out),
                         "--grid", str(tmp_path / "grid.png")])
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    from PIL import Image

    # 2 input sets x 2 clips x (the truth + 3 methods) rows of 9 frames (every other of 17), 32 px at scale 2
    assert Image.open(tmp_path / "grid.png").size == (9 * 66 - 2, 16 * 66 - 2)
    assert [r["method"] for r in result["rows"]] == ["true continuation", "replacement", "guidance w_r=3", "trained"]
    assert sorted(set(seen)) == [(9, 8.0, 2), (9, 16.0, 2)]  # --stay-fps reaches the in-view clips only
    for row in result["rows"]:
        for task in ("extend", "extend_in_view"):
            assert 0.0 <= row[task]["probe_all"] <= 1.0 and len(row[task]["seams"]) == 2
        if row["method"] == "true continuation":
            continue
        assert len(row["i2v"]["first_psnr_per_sample"]) == 2 and row["i2v"]["vae_psnr"] > 15.0
        assert np.isfinite(row["interp"]["psnr"]) and np.isfinite(row["interp"]["linear_psnr"])
