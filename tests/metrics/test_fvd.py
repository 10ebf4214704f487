"""Tests for latentvid/metrics/fvd.py: Fréchet distance math and the FVD Metric's states."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from latentvid.metrics.fvd import FrechetVideoDistance, frechet_distance
from latentvid.metrics.i3d import I3D

FEATURE_DIM = 6
NUM_FRAMES = 3
SIZE = 6


def random_spd(d: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    a = rng.normal(size=(d, 3 * d))
    return scale * a @ a.T / (3 * d) + 1e-3 * np.eye(d)


def scipy_frechet(mu1, s1, mu2, s2) -> float:
    """The textbook formula with scipy's general matrix square root (as in the TF/StyleGAN-V code)."""
    import scipy.linalg  # here, not at the top: the DDP test's spawned workers import this file

    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


@pytest.mark.parametrize("d", [4, 32])
def test_frechet_distance_matches_scipy(d: int) -> None:
    rng = np.random.default_rng(d)
    for _ in range(3):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = random_spd(d, rng), random_spd(d, rng, scale=3.0)
        ours = frechet_distance(mu1, s1, mu2, s2)
        assert ours.dtype == torch.float64
        ref = scipy_frechet(mu1, s1, mu2, s2)
        assert abs(ours.item() - ref) <= 1e-6 * abs(ref)


def test_frechet_distance_identical_and_mean_shift() -> None:
    rng = np.random.default_rng(1)
    mu, s = rng.normal(size=16), random_spd(16, rng)
    assert abs(frechet_distance(mu, s, mu, s).item()) < 1e-8
    shift = rng.normal(size=16)
    expected = float(np.sum(shift**2))
    assert frechet_distance(mu, s, mu + shift, s).item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_frechet_distance_singular_diagonal_closed_form() -> None:
    # Commuting (diagonal) covariances: FD = |dmu|^2 + sum (sqrt(a) - sqrt(b))^2, zeros allowed.
    a = np.array([0.0, 1.0, 4.0, 0.0, 2.5])
    b = np.array([1.0, 0.0, 9.0, 0.0, 2.5])
    mu1, mu2 = np.zeros(5), np.arange(5.0)
    expected = np.sum(mu2**2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got.item() == pytest.approx(expected, rel=1e-10)


class TinyExtractor(nn.Module):
    """Fixed random projection of the whole clip, tanh'd: (B, 3, T, S, S) -> (B, FEATURE_DIM).

    Float64 (the metric feeds it clips in its parameters' dtype), so features do not depend on
    how a batch is split and the tests below can demand agreement to ~1e-10.
    """

    feature_dim = FEATURE_DIM

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        shape = (3 * NUM_FRAMES * SIZE * SIZE, FEATURE_DIM)
        self.proj = nn.Parameter(torch.randn(shape, generator=gen, dtype=torch.float64) / 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x.flatten(1) @ self.proj)


def make_videos(n: int, seed: int, t: int = NUM_FRAMES + 2, hw: int = 9, offset: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, t, hw, hw, generator=gen) * 2 - 1) * 0.9 + offset


def reference_fvd(real: torch.Tensor, fake: torch.Tensor, extractor: nn.Module) -> float:
    """Features computed by hand (first frames, per-frame bilinear resize), numpy cov, scipy FD."""

    def feats(v: torch.Tensor) -> np.ndarray:
        v = v[:, :, :NUM_FRAMES]
        b, c, t, h, w = v.shape
        frames = v.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        frames = F.interpolate(frames, size=(SIZE, SIZE), mode="bilinear")
        v = frames.reshape(b, t, c, SIZE, SIZE).permute(0, 2, 1, 3, 4)
        with torch.no_grad():
            return extractor(v.double()).numpy()

    fr, ff = feats(real), feats(fake)
    return scipy_frechet(fr.mean(0), np.cov(fr, rowvar=False), ff.mean(0), np.cov(ff, rowvar=False))


def new_metric(**kwargs) -> FrechetVideoDistance:
    return FrechetVideoDistance(TinyExtractor(), num_frames=NUM_FRAMES, resize=SIZE, **kwargs)


def test_fvd_matches_reference_and_self_is_zero() -> None:
    real, fake = make_videos(40, seed=1), make_videos(30, seed=2, offset=0.1)
    metric = new_metric()
    metric.update(real, real=True)
    metric.update(fake, real=False)
    value = metric.compute()
    ref = reference_fvd(real, fake, metric.extractor)
    assert value.item() == pytest.approx(ref, rel=1e-6)
    assert value.item() > 1e-3  # the two sets really differ

    same = new_metric()
    same.update(real, real=True)
    same.update(real, real=False)
    assert abs(same.compute().item()) < 1e-8


def test_fvd_independent_of_order_and_batching() -> None:
    real, fake = make_videos(36, seed=3), make_videos(36, seed=4, offset=0.2)
    one = new_metric()
    one.update(real, real=True)
    one.update(fake, real=False)

    split = new_metric()
    perm = torch.randperm(36, generator=torch.Generator().manual_seed(0))
    for chunk_fake, chunk_real in zip(fake[perm].split(5), real.flip(0).split(5)):
        split.update(chunk_fake, real=False)  # interleaved with the real updates
        split.update(chunk_real, real=True)
    torch.testing.assert_close(split.compute(), one.compute(), rtol=1e-10, atol=1e-12)


def test_reset_keeps_real_statistics_when_asked() -> None:
    real, fake = make_videos(20, seed=5), make_videos(20, seed=6, offset=0.1)
    keep = new_metric(reset_real_features=False)
    keep.update(real, real=True)
    keep.update(fake, real=False)
    first = keep.compute()
    keep.reset()
    assert keep.fake_n.item() == 0 and keep.real_n.item() == 20
    keep.update(fake, real=False)
    torch.testing.assert_close(keep.compute(), first)

    drop = new_metric()
    drop.update(real, real=True)
    drop.reset()
    drop.update(fake, real=False)
    with pytest.raises(RuntimeError, match="at least 2 real"):
        drop.compute()


def test_errors_name_what_is_missing() -> None:
    with pytest.raises(ValueError, match="rgb_imagenet.pt"):
        FrechetVideoDistance()
    with pytest.raises(ValueError, match="only T=2"):
        new_metric().update(make_videos(2, seed=0, t=2), real=True)
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        new_metric().update(torch.zeros(2, 3, 4, 4), real=True)


def test_random_i3d_smoke_and_extractor_stays_frozen() -> None:
    metric = FrechetVideoDistance("i3d", allow_random_init=True, num_frames=4, resize=32)
    assert metric.feature_dim == 1024
    metric.train()
    assert not metric.extractor.training
    assert not any(p.requires_grad for p in metric.extractor.parameters())
    metric.update(make_videos(2, seed=0, t=4, hw=20), real=True)
    assert metric.real_n.item() == 2 and metric.real_outer.shape == (1024, 1024)
    assert metric.real_sum.dtype == torch.float64


def _ddp_worker(rank: int, world_size: int, init_file: str, out_file: str, real, fake) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        metric = new_metric()
        half_r, half_f = len(real) // world_size, len(fake) // world_size
        metric.update(real[rank * half_r : (rank + 1) * half_r], real=True)
        metric.update(fake[rank * half_f : (rank + 1) * half_f], real=False)
        value = metric.compute()  # syncs the summed states over the two processes
        if rank == 0:
            torch.save({"fvd": value, "real_n": metric.real_n.clone()}, out_file)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_equals_single_process(tmp_path) -> None:
    real, fake = make_videos(24, seed=7), make_videos(20, seed=8, offset=0.15)
    single = new_metric()
    single.update(real, real=True)
    single.update(fake, real=False)
    expected = single.compute()

    out_file = tmp_path / "ddp.pt"
    mp.spawn(
        _ddp_worker,
        args=(2, str(tmp_path / "dist_init"), str(out_file), real, fake),
        nprocs=2,
        join=True,
    )
    result = torch.load(out_file)
    assert result["real_n"].item() == 12  # local state restored after the synced compute()
    torch.testing.assert_close(result["fvd"], expected, rtol=1e-10, atol=1e-12)
