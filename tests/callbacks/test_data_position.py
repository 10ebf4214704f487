"""Tests for latentvid/callbacks/data_position.py: resumed Lightning runs see exactly the data they had not seen."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from latentvid.callbacks.data_position import DataPosition
from latentvid.callbacks.rng import RNGState
from latentvid.data.sampler import ResumableSampler

# resumed runs write to new folders, which ModelCheckpoint notes
pytestmark = pytest.mark.filterwarnings("ignore:The dirpath has changed")

STEPS, EPOCH, BS = 12, 5, 4  # limit_train_batches=5: epochs end after steps 5 and 10


def _callbacks(data_position: bool = True) -> list:
    cbs = [RNGState(), ModelCheckpoint(filename="{step}", every_n_train_steps=1, save_top_k=-1)]
    return ([DataPosition()] if data_position else []) + cbs


KW = dict(limit_train_batches=EPOCH, val_check_interval=4, check_val_every_n_epoch=None, limit_val_batches=1)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_fit) -> tuple:
    """An uninterrupted run; it keeps the checkpoint of every step for the resumed runs."""
    root = tmp_path_factory.mktemp("reference")
    module, _ = tiny_fit(root, _callbacks(), STEPS, **KW)
    return module, root / "checkpoints"


def test_the_reference_run_follows_the_sampler_epoch_by_epoch(reference) -> None:
    module, _ = reference
    assert len(module.seen) == STEPS
    for epoch in range(3):  # Lightning's set_epoch reached the sampler; each epoch restarts the order
        order = ResumableSampler(40, seed=0).order(epoch).tolist()
        got = [i for batch in module.seen[epoch * EPOCH:(epoch + 1) * EPOCH] for i in batch]
        assert got == order[: len(got)]


@pytest.mark.parametrize("k", [3, 5, 10])  # mid-epoch (before a validation), end of epoch 0, end of epoch 1
def test_resume_continues_with_the_unseen_draws_and_random_numbers(reference, tiny_fit, tmp_path: Path,
                                                                   k: int) -> None:
    ref, ckpts = reference
    state = torch.load(ckpts / f"step={k}.ckpt", weights_only=True)
    sampler_state = state["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["sampler"]
    expected = (k // EPOCH, (k % EPOCH) * BS)  # an epoch's last step is saved as the next epoch's start
    assert (sampler_state["epoch"], sampler_state["consumed"]) == expected
    resumed, _ = tiny_fit(tmp_path, _callbacks(), STEPS, ckpt_path=str(ckpts / f"step={k}.ckpt"), **KW)
    assert resumed.seen == ref.seen[k:]
    assert resumed.draws == ref.draws[k:]
    assert resumed.losses == ref.losses[k:]
    for a, b in zip(resumed.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_prefetching_workers_do_not_move_the_saved_position(tmp_path: Path, tiny_fit) -> None:
    kw = dict(module_kwargs={"num_workers": 2}, **KW)
    ref, _ = tiny_fit(tmp_path / "ref", _callbacks(), 7, **kw)
    resumed, _ = tiny_fit(tmp_path / "res", _callbacks(), 7, ckpt_path=str(tmp_path / "ref/checkpoints/step=3.ckpt"),
                          **kw)
    assert resumed.seen == ref.seen[3:]


def test_without_the_callback_a_resumed_epoch_starts_over(reference, tiny_fit, tmp_path: Path) -> None:
    ref, _ = reference
    tiny_fit(tmp_path / "a", _callbacks(data_position=False), 3, **KW)  # saves no position
    resumed, _ = tiny_fit(tmp_path / "b", _callbacks(), 5, ckpt_path=str(tmp_path / "a/checkpoints/step=3.ckpt"), **KW)
    assert resumed.seen[0] == ref.seen[0] != ref.seen[3]  # what the callback prevents


def test_a_loader_that_saves_no_position_is_reported(tmp_path: Path, tiny_fit, monkeypatch) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module, _ = tiny_fit(tmp_path / "ok", [DataPosition()], 1)
    assert not [w for w in caught if "save no data position" in str(w.message)]
    original = type(module).train_dataloader  # the same data through a plain DataLoader
    monkeypatch.setattr(type(module), "train_dataloader", lambda self: DataLoader(original(self).dataset, batch_size=4))
    with pytest.warns(UserWarning, match=r"\['DataLoader'\] save no data position"):
        tiny_fit(tmp_path / "plain", [DataPosition()], 1)
