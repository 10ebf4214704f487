"""Tests for latentvid/callbacks/rng.py: the training's random numbers survive resumes and ignore validation."""

from __future__ import annotations

import io
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from latentvid.callbacks.data_position import DataPosition
from latentvid.callbacks.rng import RNGState, capture_rng_state, restore_rng_state

pytestmark = pytest.mark.filterwarnings("ignore:The dirpath has changed")


def _draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_capture_and_restore_round_trip_through_a_weights_only_checkpoint() -> None:
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # leave a cached gaussian in numpy's state
    state = capture_rng_state()
    buf = io.BytesIO()
    torch.save({"rng": state}, buf)
    expected = _draws()
    _draws()  # move on
    restore_rng_state(torch.load(io.BytesIO(buf.getvalue()), weights_only=True)["rng"])
    assert _draws() == expected
    assert np.random.randn() is not None


class _Meddler(Callback):
    """Draws from the global RNGs between training steps, at epoch starts (as sampling callbacks may)."""

    def on_train_epoch_start(self, *args) -> None:
        torch.rand(5), np.random.rand(), random.random()


def test_training_draws_do_not_depend_on_what_happens_between_steps(tmp_path: Path, tiny_fit) -> None:
    # the second run also validates (its validation_step draws) every 2 steps, and epochs of 3 batches
    # start with extra draws
    between = dict(val_check_interval=2, check_val_every_n_epoch=None, limit_val_batches=1, limit_train_batches=3)
    plain, _ = tiny_fit(tmp_path / "a", [RNGState()], 7)
    meddled, _ = tiny_fit(tmp_path / "b", [_Meddler(), RNGState()], 7, **between)
    assert meddled.draws == plain.draws
    unguarded, _ = tiny_fit(tmp_path / "c", [], 7)
    unguarded_meddled, _ = tiny_fit(tmp_path / "d", [_Meddler()], 7, **between)
    assert unguarded_meddled.draws[3:] != unguarded.draws[3:]  # what the callback prevents


def test_resumed_run_draws_the_same_numbers(tmp_path: Path, tiny_fit) -> None:
    cbs = lambda: [DataPosition(), RNGState(), ModelCheckpoint(filename="{step}", every_n_train_steps=1,  # noqa: E731
                                                               save_top_k=-1)]
    kw = dict(val_check_interval=2, check_val_every_n_epoch=None, limit_val_batches=1)  # validation draws too
    ref, _ = tiny_fit(tmp_path / "ref", cbs(), 7, **kw)
    state = torch.load(tmp_path / "ref/checkpoints/step=3.ckpt", weights_only=True)
    assert len(state["callbacks"]["RNGState"]["ranks"]) == 1
    resumed, _ = tiny_fit(tmp_path / "res", cbs(), 7, ckpt_path=str(tmp_path / "ref/checkpoints/step=3.ckpt"), **kw)
    assert resumed.draws == ref.draws[3:]
    # without the callback the resumed run draws other numbers (the test above is not vacuous)
    no_rng = lambda: [DataPosition(), ModelCheckpoint(filename="{step}", every_n_train_steps=1,  # noqa: E731
                                                      save_top_k=-1)]
    ref2, _ = tiny_fit(tmp_path / "ref2", no_rng(), 7, **kw)
    res2, _ = tiny_fit(tmp_path / "res2", no_rng(), 7, ckpt_path=str(tmp_path / "ref2/checkpoints/step=3.ckpt"), **kw)
    assert res2.draws != ref2.draws[3:]


def _fake_trainer(rank: int, world: int, step: int = 0) -> SimpleNamespace:
    return SimpleNamespace(global_rank=rank, world_size=world, global_step=step)


def test_ranks_get_their_own_streams_and_a_world_size_change_reseeds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")
    streams = []
    for rank in range(3):
        torch.manual_seed(5)  # seed_everything gives every rank the same seed
        cb = RNGState()
        cb.on_train_start(_fake_trainer(rank, 3), None)
        cb.on_train_batch_start(None, None, None, 0)
        streams.append(torch.rand(4).tolist())
    torch.manual_seed(5)
    assert streams[0] == torch.rand(4).tolist()  # rank 0 keeps the seed_everything stream
    assert streams[0] != streams[1] != streams[2] != streams[0]
    cb = RNGState()
    cb.load_state_dict({"ranks": [capture_rng_state()] * 2})
    with pytest.warns(UserWarning, match="2 processes, this run has 3"):
        cb.on_train_start(_fake_trainer(1, 3, step=9), None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_generator_states_are_captured_and_restored() -> None:
    torch.cuda.manual_seed_all(3)
    torch.rand(1, device="cuda")  # initialise CUDA and move its generator on
    state = capture_rng_state()
    assert len(state["cuda"]) == torch.cuda.device_count()
    expected = torch.randn(8, device="cuda").cpu()
    torch.randn(8, device="cuda")
    buf = io.BytesIO()
    torch.save(state, buf)
    restore_rng_state(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert torch.equal(torch.randn(8, device="cuda").cpu(), expected)
