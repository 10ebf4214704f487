"""Per-video seeds in latentvid/evaluation/sampling.py: the batch size changes the speed, not the videos."""

from __future__ import annotations

import json

import numpy as np
import warnings

import pytest
import torch

from latentvid.data.video import to_uint8
from latentvid.evaluation.sampling import sample_batches, sample_seeded, sample_videos

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTIONS = ["a red circle moving left", "a blue square moving up", "a green triangle moving right"]
SHAPE = (4, 16, 16)  # frames, height, width (pixel space: the tiny model has no VAE)


@pytest.fixture(scope="module")
def model():
    """A random tiny text-to-video model (untrained: any fixed function of its inputs will do)."""
    from latentvid.conditioning.text import OpenCLIPTextEncoder
    from latentvid.models.latent_diffusion import LatentDiffusion
    from latentvid.nn.unet3d import UNet3D

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the random text tower warns that it is random
            text = OpenCLIPTextEncoder(random_width=32, random_layers=1, random_heads=2, max_length=16)
        unet = UNet3D(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), head_dim=8,
                      context_dim=32, norm_groups=4)
        return LatentDiffusion(unet, text, sample_steps=3, guidance_scale=3.0, clip_sample=1.0).eval()


def by_hand(model, caption: str, seed: int, **kw) -> torch.Tensor:
    """One video the way tools/sample.py makes it: the caption alone, a generator seeded ``seed``."""
    return model.sample([caption], *SHAPE, generator=torch.Generator().manual_seed(seed), **kw)[0]


@pytest.mark.parametrize("sampling", [{}, {"sampler": "ancestral"}, {"eta": 1.0}], ids=["ddim", "ancestral", "eta"])
def test_batch_size_one_and_four_give_the_same_videos(model, sampling):
    # 3 captions x 2 = 6 videos: batches of 4 + 2 against 6 batches of 1; the stochastic samplers draw
    # fresh noise at every step, from each video's own generator
    kw = dict(num_per_prompt=2, seed=7, **sampling)
    one = sample_videos(model, CAPTIONS, SHAPE, batch_size=1, **kw)
    four = sample_videos(model, CAPTIONS, SHAPE, batch_size=4, **kw)
    assert one.shape == (6, 3, *SHAPE) and one.std() > 0.05
    torch.testing.assert_close(four, one, atol=1e-5, rtol=0)  # batched kernels may round differently
    # and video k is the caption sampled alone with seed 7 + k (the same seeds as tools/sample.py's)
    for k in (0, 5):
        torch.testing.assert_close(one[k], by_hand(model, CAPTIONS[k // 2], 7 + k, **sampling), atol=1e-5, rtol=0)
    assert not torch.allclose(one[0], one[1], atol=1e-3)  # same caption, next seed: another video


def test_a_batch_of_one_is_model_sample_exactly(model):
    ours = sample_seeded(model, CAPTIONS[:1], SHAPE, [3], sampler="ancestral", steps=2)
    assert torch.equal(ours[0], by_hand(model, CAPTIONS[0], 3, sampler="ancestral", steps=2))


@pytest.mark.parametrize("spacing", ["logsnr", "karras"])
def test_the_spacing_reaches_the_sampler(model, spacing):
    """Each grid is model.sample's with that grid, and another video than the default grid's."""
    ours = sample_seeded(model, CAPTIONS[:1], SHAPE, [5], sampler="dpmpp_2m", steps=3, spacing=spacing)
    g = torch.Generator().manual_seed(5)
    ref = model.sample(CAPTIONS[:1], *SHAPE, steps=3, sampler="dpmpp_2m", generator=g, spacing=spacing)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    default = sample_seeded(model, CAPTIONS[:1], SHAPE, [5], sampler="dpmpp_2m", steps=3)
    assert not torch.allclose(ours, default, atol=1e-4)


def test_batches_report_one_seed_per_video(model, tmp_path):
    batches = list(sample_batches(model, CAPTIONS[:2], SHAPE, num_per_prompt=2, batch_size=3, seed=10, steps=1,
                                  save_videos=tmp_path))
    assert [b.seeds for b in batches] == [[10, 11, 12], [13]]
    assert [n for b in batches for n in b.names] == ["00_a_red_circle_moving_left.mp4",
                                                     "01_a_red_circle_moving_left.mp4",
                                                     "02_a_blue_square_moving_up.mp4",
                                                     "03_a_blue_square_moving_up.mp4"]
    index = (tmp_path / "captions.jsonl").read_text().splitlines()
    assert [json.loads(row)["seed"] for row in index] == [10, 11, 12, 13]


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="2 seeds for 1 captions"):
        sample_seeded(model, CAPTIONS[:1], SHAPE, [1, 2])
    with pytest.raises(ValueError, match="batch_size"):
        next(sample_batches(model, CAPTIONS, SHAPE, batch_size=0))


@pytest.mark.parametrize("shape", [(4, 16, 32), (2, 24, 12), (4, 32, 16)], ids=["wide", "tall-short", "tall"])
def test_any_bucket_shape_samples(model, shape):
    # a model trained on buckets samples at any of their shapes (the networks take any size that
    # fits their down-sampling); tools/sample.py passes --frames / --height / --width through clip_shape
    from latentvid.evaluation.sampling import clip_shape

    ckpt = {"datamodule_hyper_parameters": {"num_frames": 4, "size": 16, "bucket_shapes": [[16, 32, 4, 2]]}}
    assert clip_shape(ckpt, *shape) == shape
    video = sample_seeded(model, CAPTIONS[:1], shape, [0], steps=2)
    assert video.shape == (1, 3, *shape) and torch.isfinite(video).all()
    with pytest.raises(ValueError, match="down-sampling factor = 2"):
        sample_seeded(model, CAPTIONS[:1], (4, 16, 15), [0], steps=1)


def test_write_samples_grid_rows_are_the_written_videos(model, tmp_path):
    from PIL import Image

    from latentvid.evaluation.sampling import write_samples

    paths = write_samples(model, CAPTIONS[:2], SHAPE, tmp_path / "out", seed=3, progress=False,
                          grid=tmp_path / "grid.png")
    image = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB"))
    t, h, w = SHAPE
    assert image.shape == (2 * (2 * h + 2) - 2, t * (2 * w + 2) - 2, 3)
    for n in range(2):  # each row is caption n's video with its own seed (seed + n), frame by frame
        expected = to_uint8(by_hand(model, CAPTIONS[n], 3 + n))
        for k in range(t):
            cell = image[n * (2 * h + 2):n * (2 * h + 2) + 2 * h:2, k * (2 * w + 2):k * (2 * w + 2) + 2 * w:2]
            np.testing.assert_array_equal(cell, expected[k])
    assert len(paths) == 2 and all(p.is_file() for p in paths)
