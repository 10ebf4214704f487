"""The cascade takes distilled stages: the tiny base and SSR checkpoints distilled (one round, one step,
by the real entry point), chained with the undistilled TSR; each distilled stage samples in its own
step count with one network pass per step."""

import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

from latentvid.models.distillation import DistilledLatentDiffusion, DistilledSpatialSuperResolution
from latentvid.pipelines.cascade import CascadePipeline

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOMLY INITIALISED")  # the tiny stages use a random tower


def distil(teacher: Path, data: Path, num_frames: int, size: int, out: Path) -> Path:
    from latentvid.cli import main

    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 1, "limit_val_batches": 0, "logger": False,
                    "enable_model_summary": False, "enable_progress_bar": False, "default_root_dir": str(out),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(out), "save_last": True}}]},
        "model": {"class_path": "latentvid.models.distillation.ProgressiveDistillation",
                  "init_args": {"teacher": str(teacher), "teacher_steps": 4, "final_steps": 2, "steps_per_round": 1}},
        "data": {"class_path": "latentvid.data.datamodule.ShapesDataModule",
                 "init_args": {"root": str(data), "num_frames": num_frames, "size": size, "batch_size": 2,
                               "clips_per_combo": 1, "image_ratio": 0.0}},
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    with mock.patch.object(sys, "argv", ["latentvid"]):
        main(["fit", "-c", str(path)])
    return out / "last.ckpt"


def test_cascade_with_distilled_base_and_ssr(tiny_cascade):
    root = tiny_cascade["root"]
    base = distil(tiny_cascade["base"], root / "shapes", 2, 8, root / "distilled-base")
    ssr = distil(tiny_cascade["ssr"], root / "shapes", 4, 16, root / "distilled-ssr")
    pipe = CascadePipeline.from_config({"base": {"ckpt": str(base), "guidance": 3.0},
                                        "stages": [{"name": "tsr", "ckpt": str(tiny_cascade["tsr"])},
                                                   {"name": "ssr", "ckpt": str(ssr)}]})
    assert isinstance(pipe.base, DistilledLatentDiffusion)
    assert isinstance(pipe.stages[1][1], DistilledSpatialSuperResolution)
    assert pipe.stages[1][1].expected_input() == (None, 8, 8), "the SSR student keeps the size it takes"
    calls = {"base": [], "ssr": []}
    pipe.base.unet.register_forward_hook(lambda m, a, o: calls["base"].append(a[0].shape[0]))
    pipe.stages[1][1].unet.register_forward_hook(lambda m, a, o: calls["ssr"].append(a[0].shape[0]))
    video = pipe(["a red circle moving left"], seed=0, progress=False)
    assert video.shape == (1, 3, 4, 16, 16) and video.abs().max() <= 1
    assert calls == {"base": [1, 1], "ssr": [1, 1]}, "the students' own 2 steps, one pass each"
