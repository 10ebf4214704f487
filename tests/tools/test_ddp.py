"""End to end: tools/fit.py as two CPU processes (DDP over gloo, tests/configs/ddp.yaml).

The ranks train on disjoint draws of the epoch order (rank r takes positions r, r + 2, ... of the
single-process order), validation metrics are synced (each rank's logged val/loss is the mean of
both ranks' own losses), every checkpoint is written once, by rank 0, and holds both ranks' RNG
streams (which differ), and a NaN injected on rank 1 only makes both ranks skip that step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from latentvid.data.datamodule import ShapesDataModule

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BATCH, STEPS, WORLD = 4, 6, 2


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory, run_fit) -> tuple[Path, str, Path]:
    tmp = tmp_path_factory.mktemp("ddp")
    writes = tmp / "writes.jsonl"
    io = json.dumps({"class_path": "latentvid.callbacks.faults.RecordingCheckpointIO",
                     "init_args": {"log_file": str(writes)}})
    out = run_fit(tmp / "run", "-c", str(ROOT / "tests/configs/ddp.yaml"), "--trainer.plugins", io,
                  "--trainer.callbacks+=latentvid.callbacks.faults.PoisonBatch", "--trainer.callbacks.steps=[2]",
                  "--trainer.callbacks.rank=1", "--numerics.check_gradients", "false", timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return tmp / "run", out.stderr, writes


def _records(run: Path, rank: int) -> list[dict]:
    (path,) = run.rglob(f"steps-rank{rank}.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ranks_take_interleaved_disjoint_draws_of_the_epoch_order(ddp_run, resume_data: Path) -> None:
    run, _, _ = ddp_run
    dm = ShapesDataModule(root=str(resume_data), num_frames=4, size=16, batch_size=BATCH, clips_per_combo=1,
                          generate=False)
    dm.setup("fit")
    order = dm.train_dataloader().sampler.order(0).tolist()  # the single-process epoch order
    draws = order[: STEPS * BATCH * WORLD]
    for rank in range(WORLD):
        steps = [r for r in _records(run, rank) if "keys" in r]
        assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
        got = [k for r in steps for k in r["keys"]]
        assert got == [dm.train_set[i]["key"] for i in draws[rank::WORLD]]
    # together the ranks consumed each of the first 48 positions exactly once
    assert sorted(draws[0::WORLD] + draws[1::WORLD]) == sorted(draws)


def test_validation_metrics_are_synced_across_ranks(ddp_run) -> None:
    run, _, _ = ddp_run
    vals = [[r for r in _records(run, rank) if r.get("validation")] for rank in range(WORLD)]
    assert [r["step"] for r in vals[0]] == [3, 6] == [r["step"] for r in vals[1]]
    for a, b in zip(*vals):
        (la,), (lb,) = a["batch_losses"], b["batch_losses"]  # each rank validated its own batch
        assert la != lb
        assert a["metrics"]["val/loss"] == b["metrics"]["val/loss"] == pytest.approx((la + lb) / 2, rel=1e-6)


def test_each_checkpoint_is_written_once_by_rank_0(ddp_run) -> None:
    run, _, writes = ddp_run
    records = [json.loads(line) for line in writes.read_text().splitlines()]
    names = [Path(r["path"]).name for r in records]
    assert names == ["step=002.ckpt", "last.ckpt", "step=004.ckpt", "last.ckpt", "step=006.ckpt", "last.ckpt"]
    assert {r["rank"] for r in records} == {0} and len({r["pid"] for r in records}) == 1
    folders = [p.name for p in (run / "lightning_logs").iterdir()]
    assert folders == ["version_0"]
    state = torch.load(next(run.rglob("last.ckpt")), weights_only=True)
    assert state["global_step"] == STEPS
    sampler = state["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["sampler"]
    assert (sampler["consumed"], sampler["world_size"]) == (STEPS * BATCH * WORLD, WORLD)
    rng = state["callbacks"]["RNGState"]["ranks"]
    assert len(rng) == WORLD and not torch.equal(rng[0]["torch"], rng[1]["torch"])


def test_a_nan_on_one_rank_makes_every_rank_skip(ddp_run) -> None:
    # only losses are checked in this run: rank 0's loss is finite, its (all-reduced) gradients are not;
    # had rank 0 stepped on them, its weights and every later loss would be NaN
    run, stderr, _ = ddp_run
    losses = {rank: {r["step"]: r["loss"] for r in _records(run, rank) if "loss" in r} for rank in range(WORLD)}
    assert math.isnan(losses[1][2]) and math.isfinite(losses[0][2])
    assert "non-finite value on another rank at training step 2" in stderr  # rank 0 skipped on rank 1's word
    assert all(math.isfinite(v) for rank in range(WORLD) for s, v in losses[rank].items() if s != 2)
    state = torch.load(next(run.rglob("last.ckpt")), weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["current_model_state"].values() if v.is_floating_point())
