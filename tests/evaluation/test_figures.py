"""latentvid/evaluation/figures.py: a picture with each video as a row of frames, read back from a real PNG."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from latentvid.data.video import to_uint8
from latentvid.evaluation.figures import frame_grid, write_frame_grid


def test_grid_png_holds_every_frame_enlarged_in_place(tmp_path):
    g = torch.Generator().manual_seed(0)
    videos = torch.rand(2, 3, 4, 5, 6, generator=g) * 2 - 1  # (N, 3, T, H, W)
    path = tmp_path / "grid.png"
    write_frame_grid(videos, path, scale=3, gap=2)
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (2 * (5 * 3 + 2) - 2, 4 * (6 * 3 + 2) - 2, 3)
    for n in range(2):
        frames = to_uint8(videos[n])  # (T, H, W, 3)
        for k in range(4):
            y, x = n * 17, k * 20
            cell = image[y:y + 15, x:x + 18]
            np.testing.assert_array_equal(cell[::3, ::3], frames[k])  # nearest-neighbour enlargement
            np.testing.assert_array_equal(cell[2::3, 2::3], frames[k])
    assert (image[15:17] == 255).all() and (image[:, 18:20] == 255).all()  # the gaps


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"expected videos \(N, 3, T, H, W\)"):
        frame_grid(torch.zeros(3, 4, 5, 6))
    with pytest.raises(ValueError, match="scale >= 1"):
        frame_grid(torch.zeros(1, 3, 2, 4, 4), scale=0)
