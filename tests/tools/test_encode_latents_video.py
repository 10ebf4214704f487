"""tools/encode_latents.py with the video VAEs of the pretrained pipelines (Wan, LTX-Video): a pipeline
folder's vae/ is recognised by its class and the stored latents are the adapter's normalised ones."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from latentvid.data.datasets import VideoTextDataset
from latentvid.data.shapes import generate_shapes_dataset

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import encode_latents  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

T, SIZE = 5, 16


@pytest.mark.parametrize("kind, adapter", [("wan", "DiffusersWanVAE"), ("ltx", "DiffusersLTXVideoVAE")])
def test_pipeline_folder_vae(kind, adapter, tiny_video, tmp_path):
    import latentvid.nn.diffusers_vae as vaes

    data = tmp_path / "shapes"
    generate_shapes_dataset(data, seed=0, clips_per_combo=1, num_frames=T, size=SIZE, images_per_combo=1,
                            heldout_clips_per_combo=1)
    folder = tiny_video(kind)
    out = tmp_path / "latents"
    encode_latents.main(["--vae", str(folder), "--data", str(data), "--out", str(out), "--index", "heldout.jsonl"])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["first_stage"] == adapter and meta["temporal_factor"] == 4
    item = VideoTextDataset(str(data), "heldout.jsonl", T)[0]
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines() if line.strip()]
    row = next(r for r in rows if r["key"] == item["key"])
    expected = getattr(vaes, adapter)(str(folder)).encode(item["video"][None])[0]
    torch.testing.assert_close(torch.load(out / row["path"], weights_only=True), expected, rtol=1e-5, atol=1e-5)
    assert row["latent_shape"] == [expected.shape[0], 2, SIZE // 4, SIZE // 4]
