"""End to end: configs/distill.yaml on a tiny teacher, 2 rounds (8 -> 4 -> 2 steps) of 3 steps each.

A run killed with SIGKILL in round 2 resumes there (``--ckpt_path last``), and one resumed from the
checkpoint at round 1's last step starts round 2 itself; both end bit for bit where the uninterrupted
run ends (deterministic, one thread, caption cache off). tools/sample.py then samples the student
with --steps 2 (N / 4), one network pass per step.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs" / "distill.yaml"
TEXT = {"class_path": "latentvid.conditioning.text.OpenCLIPTextEncoder",
        "init_args": {"random_width": 32, "random_layers": 1, "random_heads": 2, "max_length": 16, "cache_size": 0}}
DATA = {"class_path": "latentvid.data.datamodule.ShapesDataModule",
        "init_args": {"num_frames": 2, "size": 8, "batch_size": 2, "clips_per_combo": 1, "image_ratio": 0.0,
                      "generate": False, "num_workers": 0}}
QUIET = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_model_summary": False,
         "enable_progress_bar": False, "num_sanity_val_steps": 0}


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> tuple[Path, Path]:
    """(a one-step tiny pixel-space text-to-video checkpoint, its shapes folder), written by the real CLI."""
    from latentvid.cli import main
    from latentvid.data.shapes import generate_shapes_dataset

    tmp = tmp_path_factory.mktemp("teacher")
    data = tmp / "shapes"
    generate_shapes_dataset(data, seed=0, clips_per_combo=1, num_frames=4, size=16)
    unet = {"model_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [1],
            "head_dim": 8, "context_dim": 32, "norm_groups": 4}
    config = {
        "seed_everything": 0,
        "trainer": {**QUIET, "max_steps": 1, "limit_val_batches": 0, "default_root_dir": str(tmp / "run"),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp / "ckpt"), "save_last": True}}]},
        "model": {"class_path": "latentvid.models.latent_diffusion.LatentDiffusion",
                  "init_args": {"warmup_steps": 1, "sample_steps": 8, "guidance_scale": 3.0, "clip_sample": 1.0,
                                "text_encoder": TEXT,
                                "unet": {"class_path": "latentvid.nn.unet3d.UNet3D", "init_args": unet}}},
        "data": {**DATA, "init_args": {**DATA["init_args"], "root": str(data)}},
    }
    (tmp / "teacher.yaml").write_text(yaml.safe_dump(config))
    with mock.patch.object(sys, "argv", ["latentvid"]):
        main(["fit", "-c", str(tmp / "teacher.yaml")])
    return tmp / "ckpt" / "last.ckpt", data


@pytest.fixture(scope="module")
def tiny(teacher, tmp_path_factory) -> Path:
    """configs/distill.yaml made tiny: a second config layered over the recipe."""
    ckpt, data = teacher
    override = {
        "trainer": {**QUIET, "logger": True, "deterministic": True, "max_steps": 6, "limit_val_batches": 0,
                    "log_every_n_steps": 1,
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"filename": "{step:03d}", "every_n_train_steps": 1,
                                                 "save_top_k": -1, "save_last": True}}]},
        "model": {"init_args": {"teacher": str(ckpt), "teacher_steps": 8, "final_steps": 2, "steps_per_round": 3,
                                "warmup_steps": 1, "lr": 1e-3, "ema_decay": 0.5}},
        "data": {**DATA, "init_args": {**DATA["init_args"], "root": str(data)}},
    }
    path = tmp_path_factory.mktemp("distill") / "tiny.yaml"
    path.write_text(yaml.safe_dump(override))
    return path


def _fit(tiny: Path, root: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "tools" / "fit.py"), "-c", str(RECIPE), "-c", str(tiny),
           "--trainer.default_root_dir", str(root), *extra]
    root.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.run(cmd, cwd=root.parent, env=_env(), capture_output=True, text=True, timeout=600)


def _last(root: Path) -> dict:
    (path,) = sorted(root.rglob("last.ckpt"))
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reference") / "run"
    out = _fit(tiny, root)
    assert out.returncode == 0, out.stderr[-4000:]
    return root


@pytest.fixture(scope="module")
def killed(tiny, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("killed") / "run"
    out = _fit(tiny, root, "--trainer.callbacks+=latentvid.callbacks.faults.KillAtStep", "--trainer.callbacks.step=5")
    assert out.returncode == -9, f"expected death by SIGKILL, got {out.returncode}: {out.stderr[-3000:]}"
    return root


def _assert_same_run(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] == 6
    assert a["distillation"] == b["distillation"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i][n], sb[i][n]) for i in sa for n in sa[i])
    assert a["lr_schedulers"] == b["lr_schedulers"]


def test_rounds_are_recorded_in_the_checkpoints(reference: Path) -> None:
    final = _last(reference)["distillation"]
    assert (final["round"], final["teacher_steps"], final["student_steps"]) == (1, 4, 2)
    first = torch.load(next(reference.rglob("step=003.ckpt")), map_location="cpu", weights_only=True)
    assert (first["distillation"]["round"], first["distillation"]["student_steps"]) == (0, 4)
    # in round 1 the teacher is its checkpoint file, so round-1 checkpoints leave it out (a digest of its
    # weights instead); from round 2 on it is the round-1 student, which takes the guidance weight as an input
    assert not [k for k in first["state_dict"] if k.startswith("teacher.")] and first["distillation"]["teacher_digest"]
    assert "teacher.unet.extra_embed.mlp.0.weight" in _last(reference)["state_dict"]
    # the new teacher is the round-1 student's EMA
    ema = {k[4:]: v for k, v in first["state_dict"].items() if k.startswith("ema.")}
    last = torch.load(next(reference.rglob("step=004.ckpt")), map_location="cpu", weights_only=True)
    assert all(torch.equal(last["state_dict"][f"teacher.unet.{k}"], v) for k, v in ema.items())


def test_killed_in_round_2_resumes_there(reference: Path, killed: Path, tiny: Path) -> None:
    assert _last(killed)["global_step"] == 4 and _last(killed)["distillation"]["round"] == 1
    out = _fit(tiny, killed, "--ckpt_path", "last")
    assert out.returncode == 0, out.stderr[-4000:]
    _assert_same_run(_last(killed), _last(reference))


def test_resumed_at_a_round_boundary_starts_the_next_round(reference: Path, killed: Path, tiny: Path,
                                                           tmp_path: Path) -> None:
    out = _fit(tiny, tmp_path / "run", "--ckpt_path", str(next(killed.rglob("step=003.ckpt"))))
    assert out.returncode == 0, out.stderr[-4000:]
    _assert_same_run(_last(tmp_path / "run"), _last(reference))


def test_resuming_round_1_against_a_changed_teacher_is_an_error(teacher, killed: Path, tiny: Path,
                                                                 tmp_path: Path) -> None:
    # a resumed run takes its teacher path from the checkpoint: what can change is the file there (a
    # teacher run root resolves to its newest last.ckpt, which further training of the base replaces)
    path = teacher[0]
    original = path.read_bytes()
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    ckpt["state_dict"] = {k: v + 1e-3 if k.startswith("unet.") else v for k, v in ckpt["state_dict"].items()}
    try:
        torch.save(ckpt, path)
        out = _fit(tiny, tmp_path / "run", "--ckpt_path", str(next(killed.rglob("step=002.ckpt"))))
    finally:
        path.write_bytes(original)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"latentvid: cannot resume: the teacher {path} is not the one this round-1 checkpoint"), last


def test_sample_the_student_with_a_quarter_of_the_steps(reference: Path, tmp_path: Path, load_script) -> None:
    from latentvid.evaluation import load_model
    from latentvid.models.distillation import DistilledLatentDiffusion

    model, _ = load_model(reference)  # a run root: its newest last.ckpt
    assert isinstance(model, DistilledLatentDiffusion) and model.hparams.sample_steps == 2
    calls = []
    model.unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    model.sample(["a red circle moving left"], 2, 8, 8, guidance_scale=3.0)
    assert calls == [1, 1], "two steps, one pass each (no unconditional half)"
    raw, _ = load_model(reference, ema=False)
    assert not torch.equal(raw.unet.out_conv.weight, model.unet.out_conv.weight)

    sample = load_script("tools/sample.py", "latentvid_tool_sample_distill")
    out = tmp_path / "red.mp4"
    paths = sample.main(["--ckpt", str(reference), "--prompt", "a red circle moving left", "--out", str(out),
                         "--steps", "2", "--guidance", "3", "--device", "cpu"])
    assert paths == [out] and out.stat().st_size > 0


def test_sampling_benchmark_rows_start_from_the_same_noise(teacher, reference: Path, tmp_path: Path,
                                                           load_script) -> None:
    """benchmarks/sampling.py: every row samples the same held-out captions from the same noise, so the
    reference row's own settings, repeated as a row, lie at distance 0 from it, and fewer steps do not."""
    bench = load_script("benchmarks/sampling.py", "latentvid_benchmark_sampling")
    ckpt, _ = teacher
    out = tmp_path / "rows.json"
    bench.main(["--teacher", str(ckpt), "--student", f"2={next(reference.rglob('last.ckpt'))}",
                "--row", "ddim:4", "--row", "ddim:1", "--reference-steps", "4", "--per-prompt", "1",
                "--batch-size", "4", "--out", str(out)])
    rows = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["teacher DDIM 4 (reference)", "teacher ddim 4", "teacher ddim 1", "student 2"]
    assert rows["teacher ddim 4"]["mse_to_reference"] < 1e-10
    assert rows["teacher ddim 1"]["mse_to_reference"] > 1e-6
    assert rows["student 2"]["passes_per_video"] == 2 and rows["teacher ddim 1"]["passes_per_video"] == 2
    assert all(0.0 <= r[k] <= 1.0 for r in rows.values() for k in ("colour", "shape", "direction", "all"))
