"""benchmarks/motion.py (tools/benchmark.py motion) at a tiny size: the diagnosis harness trains, probes,
and its analyses (loss gap per logSNR band, decision curve, ideal denoiser) run and agree with their
definitions."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def test_label_encoder_is_the_multi_hot_of_the_grammar_words(load_script) -> None:
    motion = load_script("benchmarks/motion.py", "latentvid_benchmark_motion")
    tokens, mask = motion.LabelEncoder(32)(["a red circle moving up", ""])
    assert tokens.shape == (2, 1, 32) and mask.all()
    words = {motion.VOCAB[i] for i in torch.nonzero(tokens[0, 0]).flatten().tolist()}
    assert words == {"red", "circle", "up"} and not tokens[1].any()


def test_tiny_motion_run(tmp_path: Path, load_script) -> None:
    motion = load_script("benchmarks/motion.py", "latentvid_benchmark_motion")
    out = tmp_path / "m.json"
    result = motion.main(["--steps", "2", "--eval-every", "2", "--seeds", "1", "--sample-steps", "3", "--channels", "32",
                          "--batch-size", "4", "--threads", "1", "--cond", "label", "--snr-floor", "1",
                          "--analyse", "--out", str(out)])
    assert json.loads(out.read_text())["curve"] == result["curve"]
    (row,) = result["curve"]
    assert row["step"] == 2 and 0.0 <= row["direction"] <= 1.0 and sum(row["directions_seen"].values()) == 4
    assert [r["band"] for r in result["loss_gap"]] == [f"[{lo:g}, {hi:g})" for lo, hi in motion.BANDS]
    # switching after every step is sampling with the first caption alone
    assert result["decision"][-1]["switch_after"] == 3


def test_ideal_denoiser_gap(load_script) -> None:
    motion = load_script("benchmarks/motion.py", "latentvid_benchmark_motion")
    from latentvid.nn.first_stage import IdentityFirstStage

    rows = motion.ideal_gap(IdentityFirstStage(), motion.combos_for("directions")[0], n_ref=256, n_eval=16)
    assert len(rows) == len(motion.BANDS)
    # with almost no noise the posterior mean is the nearest reference clip whatever the word says
    assert abs(rows[-1]["removed_by_word"]) < 1e-6
    assert all(r["own direction"] <= r["any direction"] * 1.05 for r in rows)


def test_the_captions_mean_clip_is_the_best_constant_prediction(load_script) -> None:
    motion = load_script("benchmarks/motion.py", "latentvid_benchmark_motion")
    from latentvid.nn.first_stage import IdentityFirstStage

    rows = motion.mean_clip_errors(IdentityFirstStage(), n=8, seed=0)
    assert [r["direction"] for r in rows] == list(motion.DIRECTIONS)
    for r in rows:
        # the caption's own mean is the best constant prediction of its clips, so it beats the others
        assert r["own"] <= r["any"] and r["own"] <= r["frame_blind"]
