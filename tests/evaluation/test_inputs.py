"""Tests of latentvid/evaluation/inputs.py: captions from sample file names, folders, pairing, batching."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latentvid.data.video import write_video
from latentvid.data.video_log import slug
from latentvid.evaluation.inputs import (
    EvalError,
    caption_from_filename,
    list_generated,
    pair_by_name,
    read_batches,
    read_prompts,
)


def test_captions_from_file_names_round_trip_sample_naming():
    captions = ["a red circle moving left", "a green square moving up", "a blue square"]
    for i, caption in enumerate(captions):
        assert caption_from_filename(f"{i:02d}_{slug(caption)}.mp4") == caption
    assert caption_from_filename("003_01_a_red_circle.mp4") == "a red circle"
    with pytest.raises(EvalError, match="captions.jsonl"):
        caption_from_filename("0001.mp4")


def test_read_prompts_skips_blank_lines_and_names_a_missing_file(tmp_path):
    (tmp_path / "p.txt").write_text("a red circle\n\n  a blue square  \n")
    assert read_prompts(str(tmp_path / "p.txt")) == ["a red circle", "a blue square"]
    with pytest.raises(EvalError, match="nope.txt"):
        read_prompts(str(tmp_path / "nope.txt"))


def test_captions_jsonl_wins_and_batches_split_on_shape(tmp_path):
    frames = np.zeros((3, 16, 16, 3), dtype=np.uint8)
    for name, t in (("00_x.mp4", 3), ("01_y.mp4", 3), ("02_z.mp4", 2)):
        write_video(tmp_path / name, frames[:t], fps=8)
    assert [c for _, c in list_generated(str(tmp_path))] == ["x", "y", "z"]
    rows = [{"path": "01_y.mp4", "caption": "why"}, {"path": "02_z.mp4", "caption": "zed"}]
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = list_generated(str(tmp_path))
    assert [(p.name, c) for p, c in items] == [("01_y.mp4", "why"), ("02_z.mp4", "zed")]
    batches = list(read_batches(list_generated(str(tmp_path)) + [(tmp_path / "00_x.mp4", "x")], 8, "test"))
    assert [b.captions for b in batches] == [["why"], ["zed"], ["x"]]  # a new shape starts a new batch
    assert batches[0].videos.shape == (1, 3, 3, 16, 16) and batches[0].videos.dtype == torch.float32


def test_pair_by_name_needs_a_partner_for_every_generated_video(tmp_path):
    gen, real = [tmp_path / "a.mp4", tmp_path / "b.mp4"], [tmp_path / "r" / "a.mp4", tmp_path / "r" / "c.mp4"]
    with pytest.raises(EvalError, match="b.mp4"):
        pair_by_name(gen, real)
    assert pair_by_name(gen[:1], real) == {gen[0]: real[0]}
