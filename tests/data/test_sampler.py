"""Tests for latentvid/data/sampler.py: per-epoch orders fixed by (seed, epoch), rank shards, resume."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.types import _Stateful
from scipy import stats
from torch.utils.data import Dataset

from latentvid.data.sampler import ResumableDataLoader, ResumableSampler, derive_seed


class Items(Dataset):
    """Item i is the tensor i (so a batch shows which indices were drawn)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(i)


def test_order_is_a_function_of_seed_and_epoch() -> None:
    a, b = ResumableSampler(50, seed=3), ResumableSampler(50, seed=3)
    assert torch.equal(a.order(4), b.order(4))
    assert not torch.equal(a.order(4), a.order(5))
    assert not torch.equal(a.order(4), ResumableSampler(50, seed=4).order(4))
    b.set_epoch(4)
    assert list(b) == a.order(4).tolist()  # one rank: the whole order


def test_derive_seed_does_not_depend_on_python_hash_randomisation() -> None:
    # the function alone, in fresh interpreters with different str-hash salts (no torch import: fast)
    code = f"import hashlib\n{inspect.getsource(derive_seed)}\nprint(derive_seed(7, 2, 11))"
    outs = set()
    for hashseed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout.strip())
    assert outs == {str(derive_seed(7, 2, 11))}
    seeds = {derive_seed(0, e, i) for e in range(20) for i in range(50)}
    assert len(seeds) == 1000 and all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(1, 23) != derive_seed(12, 3)  # no ambiguity from concatenation


def test_weighted_draws_follow_the_weights() -> None:
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 10.0])
    s = ResumableSampler(6, epoch_size=20_000, weights=weights, seed=0)
    counts = np.bincount(np.array(list(s)), minlength=6)
    assert counts[4] == 0  # zero weight: never drawn
    expected = (weights / weights.sum() * 20_000).numpy()
    keep = expected > 0
    assert stats.chisquare(counts[keep], expected[keep]).pvalue > 1e-3
    uniform = np.bincount(np.array(list(ResumableSampler(5, epoch_size=10_000, seed=1))), minlength=5)
    assert stats.chisquare(uniform).pvalue > 1e-3


def test_without_replacement_an_epoch_is_a_permutation() -> None:
    s = ResumableSampler(30, replacement=False, seed=2)
    assert sorted(s) == list(range(30))
    w = torch.ones(10)
    w[3] = 0
    assert 3 not in list(ResumableSampler(10, epoch_size=9, weights=w, replacement=False))
    with pytest.raises(ValueError, match="exceeds the 9 drawable"):
        ResumableSampler(10, epoch_size=10, weights=w, replacement=False)


@pytest.mark.parametrize("replacement", [True, False])
def test_ranks_split_the_epoch_order_without_sharing_a_draw(replacement: bool) -> None:
    n, world = 31, 3
    shards = [list(ResumableSampler(n, replacement=replacement, seed=5, num_replicas=world, rank=r))
              for r in range(world)]
    order = ResumableSampler(n, replacement=replacement, seed=5).order(0).tolist()
    assert [len(x) for x in shards] == [n // world] * world  # equal lengths: DDP ranks stay in step
    for r, shard in enumerate(shards):
        assert shard == order[r : world * (n // world) : world]
    if not replacement:  # distinct items: the shards are disjoint
        assert len(set().union(*map(set, shards))) == world * (n // world)
    assert len(ResumableSampler(n, num_replicas=world, rank=0)) == n // world


def test_resume_skips_exactly_the_consumed_draws() -> None:
    n, world, epoch = 40, 2, 3
    full = []
    for r in range(world):
        s = ResumableSampler(n, seed=9, num_replicas=world, rank=r)
        s.set_epoch(epoch)
        full.append(list(s))
    # rank 0 consumed 7 draws (14 over both ranks); its prefetched extras must not count
    first = ResumableSampler(n, seed=9, num_replicas=world, rank=0)
    first.set_epoch(epoch)
    _ = list(first)  # iterated further than consumed
    first.set_position(epoch, 7 * world)
    state = first.state_dict()
    assert (state["epoch"], state["consumed"], state["world_size"]) == (epoch, 14, 2)
    for r in range(world):
        resumed = ResumableSampler(n, seed=9, num_replicas=world, rank=r)
        resumed.load_state_dict(state)
        resumed.set_epoch(epoch)  # what Lightning does after iter() on resume: must not reset the skip
        assert list(resumed) == full[r][7:]
        assert resumed.epoch == epoch
    # a different world size: the remaining draws are split over the new ranks
    order = ResumableSampler(n, seed=9).order(epoch).tolist()
    three = []
    for r in range(3):
        s = ResumableSampler(n, seed=9, num_replicas=3, rank=r)
        s.load_state_dict(state)
        three.append(list(s))
    count = (39 - 14) // 3  # total_size 39 for three ranks
    for r in range(3):
        assert three[r] == order[14 + r : 14 + r + 3 * count : 3]


def test_position_at_the_end_of_an_epoch_means_the_next_epoch() -> None:
    s = ResumableSampler(12, seed=0)
    s.set_position(2, 12)
    assert (s.state_dict()["epoch"], s.state_dict()["consumed"]) == (3, 0)
    t = ResumableSampler(12, seed=0)
    t.load_state_dict({"epoch": 2, "consumed": 12})
    assert list(t) == t.order(3).tolist() and t.epoch == 3


def test_iterating_without_set_epoch_moves_to_the_next_epoch() -> None:
    s = ResumableSampler(20, seed=1)
    a, b = list(s), list(s)
    assert a == s.order(0).tolist() and b == s.order(1).tolist()
    s.set_epoch(5)
    assert list(s) == s.order(5).tolist()
    s.set_epoch(5)
    assert list(s) == s.order(5).tolist()  # set_epoch pins the epoch


def test_changed_settings_are_warned_about_and_bad_state_rejected() -> None:
    s = ResumableSampler(12, seed=0)
    with pytest.warns(UserWarning, match="seed"):
        s.load_state_dict({"epoch": 0, "consumed": 2, "seed": 1, "num_items": 12, "epoch_size": 12})
    with pytest.raises(ValueError, match="consumed"):
        s.load_state_dict({"epoch": 0})
    with pytest.raises(ValueError, match="weights"):
        ResumableSampler(3, weights=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="rank"):
        ResumableSampler(3, num_replicas=2, rank=2)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_state_counts_consumed_batches_not_prefetched_ones(num_workers: int) -> None:
    ds, bs = Items(50), 4

    def loader() -> ResumableDataLoader:
        return ResumableDataLoader(ds, batch_size=bs, drop_last=True, num_workers=num_workers,
                                   sampler=ResumableSampler(len(ds), seed=4))

    reference = [b.tolist() for b in loader()]
    assert len(reference) == 50 // bs
    first = loader()
    assert isinstance(first, _Stateful)  # what Lightning checks before saving a loader's state
    it = iter(first)
    for _ in range(3):
        next(it)  # workers have prefetched more than these three batches
    first.resumable_sampler.set_position(0, 3 * bs)
    state = first.state_dict()
    del it
    second = loader()
    second.load_state_dict(state)
    assert [b.tolist() for b in second] == reference[3:]
    assert len(second) == len(reference)  # len() stays a full epoch (Lightning counts the resumed batches)
