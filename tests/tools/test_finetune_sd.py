"""End to end: configs/finetune-sd.yaml pointed at a tiny random Stable Diffusion folder trains with
tools/fit.py (frozen spatial layers), writes samples, and tools/export_motion_module.py exports a
motion module that loads onto a fresh inflated model. Also tools/sample.py on the checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs" / "finetune-sd.yaml"
PLACEHOLDER = "checkpoints/stable-diffusion-v1-5"

pytestmark = pytest.mark.slow


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})


def tiny_recipe(sd: Path, tmp: Path) -> Path:
    """configs/finetune-sd.yaml with its one SD path edited, shrunk to seconds on a CPU."""
    text = RECIPE.read_text()
    assert text.count(PLACEHOLDER) == 1 and text.count("&sd") == 1, "the SD folder is named once, then aliased"
    cfg = yaml.safe_load(text.replace(PLACEHOLDER, str(sd)))
    model = cfg["model"]["init_args"]
    for path in (model["unet"]["init_args"]["pretrained"], model["text_encoder"]["init_args"]["path"],
                 model["first_stage"]["init_args"]["path"], model["schedule"]["init_args"]["pretrained"]):
        assert path == str(sd)
    cfg["trainer"].update(accelerator="cpu", precision="32-true", max_steps=3, val_check_interval=3,
                          log_every_n_steps=1, enable_model_summary=False, default_root_dir=str(tmp / "run"))
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("ModelCheckpoint"):
            cb["init_args"]["every_n_train_steps"] = 3
        if cb["class_path"].endswith("LogSampleVideos"):
            cb["init_args"].update(captions=["a red circle moving left"], num_frames=4, height=16, width=16, steps=2)
    cfg["data"]["init_args"].update(root=str(tmp / "shapes"), num_frames=4, size=16, batch_size=2, num_workers=0,
                                    clips_per_combo=1)
    out = tmp / "finetune-sd-tiny.yaml"
    out.write_text(yaml.safe_dump(cfg))
    return out


@pytest.fixture(scope="module")
def finetuned(tiny_sd, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finetune_sd")
    sd = tiny_sd("sd1")
    res = run(str(ROOT / "tools" / "fit.py"), "-c", str(tiny_recipe(sd, tmp)), cwd=tmp)
    assert res.returncode == 0, res.stderr[-4000:]
    ckpts = sorted((tmp / "run").rglob("last.ckpt"))
    assert ckpts, f"no last.ckpt under {tmp / 'run'}"
    return tmp, sd, ckpts[0]


def test_fit_trains_only_the_temporal_layers_and_logs_samples(finetuned):
    tmp, sd, ckpt = finetuned
    from safetensors.torch import load_file

    from latentvid.nn.inflated_unet import InflatedUNet3D

    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 3
    unet = {k[len("unet."):]: v for k, v in state["state_dict"].items() if k.startswith("unet.")}
    image = load_file(str(sd / "unet" / "diffusion_pytorch_model.safetensors"))
    assert not set(image) & set(unet), "frozen SD weights reload from the folder, so the checkpoint leaves them out"
    from latentvid.pipelines.loading import load_model

    model, _ = load_model(ckpt)
    loaded = model.unet.state_dict()
    for k, v in image.items():
        assert torch.equal(loaded[k], v), f"frozen SD weight {k} changed"
    fresh = InflatedUNet3D(str(sd)).temporal_state_dict()
    assert sum(not torch.equal(unet[k], v) for k, v in fresh.items()) > 0.5 * len(fresh)
    assert not any(k.startswith("text_encoder.") for k in state["state_dict"]), "SD's text tower loads from the folder"
    samples = list((ckpt.parent.parent / "samples").rglob("*.mp4"))
    assert samples, "validation writes sample videos"


def test_motion_module_export_loads_onto_a_fresh_model(finetuned):
    tmp, sd, ckpt = finetuned
    out = tmp / "motion.safetensors"
    res = run(str(ROOT / "tools" / "export_motion_module.py"), "--ckpt", str(ckpt), "--out", str(out), cwd=tmp)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "wrote" in res.stdout and out.is_file()
    from latentvid.nn.inflated_unet import InflatedUNet3D

    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    loaded = InflatedUNet3D(str(sd), motion_module=str(out))
    for k, v in loaded.temporal_state_dict().items():
        assert torch.equal(v, state[f"unet.{k}"]), k
    res = run(str(ROOT / "tools" / "export_motion_module.py"), "--ckpt", str(tmp / "nope.ckpt"), "--out",
              str(out), cwd=tmp)
    assert res.returncode != 0 and "nope.ckpt" in res.stderr and "Traceback" not in res.stderr


def test_sample_tool_generates_from_the_finetuned_checkpoint(finetuned):
    tmp, _, ckpt = finetuned
    out = tmp / "sample.mp4"
    res = run(str(ROOT / "tools" / "sample.py"), "--ckpt", str(ckpt), "--prompt", "a blue square moving up",
              "--out", str(out), "--steps", "2", "--frames", "3", "--seed", "0", cwd=tmp)
    assert res.returncode == 0, res.stderr[-4000:]
    from latentvid.data.video import video_info

    assert video_info(out)["num_frames"] == 3


def test_a_missing_sd_folder_is_named(tmp_path):
    res = run(str(ROOT / "tools" / "fit.py"), "-c", str(RECIPE), "--trainer.max_steps", "1", cwd=tmp_path)
    assert res.returncode != 0
    assert f"no U-Net config at {PLACEHOLDER}/unet/config.json" in res.stderr, res.stderr[-2000:]
