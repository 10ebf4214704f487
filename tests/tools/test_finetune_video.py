"""End to end: configs/finetune-{wan,cogvideox,ltx}.yaml (cogvideox also on a CogVideoX 1.5 folder) pointed
at a tiny random diffusers pipeline folder (tests/tiny_video_folders.py) fit a few LoRA steps with
tools/fit.py, write a LoRA file that the diffusers pipeline loads, keep the frozen base out of the
checkpoint, and sample an mp4 with tools/sample.py; tools/export_lora.py exports the same adapters from
the checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

RECIPES = {  # kind -> (recipe, placeholder path, pipeline class, frames, size)
    "wan": ("finetune-wan.yaml", "checkpoints/Wan2.1-T2V-1.3B-Diffusers", "WanPipeline", 5, 16),
    "cogvideox": ("finetune-cogvideox.yaml", "checkpoints/CogVideoX-2b", "CogVideoXPipeline", 9, 16),
    "cogvideox15": ("finetune-cogvideox.yaml", "checkpoints/CogVideoX-2b", "CogVideoXPipeline", 9, 16),
    "ltx": ("finetune-ltx.yaml", "checkpoints/LTX-Video", "LTXPipeline", 9, 16),
}
TEXT_LENGTH = {"cogvideox": 16, "cogvideox15": 16}  # the tiny CogVideoX's max_text_seq_length (the real 2b: 226)


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})


def tiny_recipe(kind: str, folder: Path, tmp: Path) -> Path:
    """The recipe with its one folder path edited, shrunk to seconds on a CPU (float32, 2 steps)."""
    recipe, placeholder, _, frames, size = RECIPES[kind]
    text = (ROOT / "configs" / recipe).read_text()
    assert text.count(placeholder) == 1, "the pretrained folder is named once, then aliased"
    cfg = yaml.safe_load(text.replace(placeholder, str(folder)))
    model = cfg["model"]["init_args"]
    for part in ("text_encoder", "first_stage"):
        assert model[part]["init_args"]["path"] == str(folder)
    if "pretrained" in model["schedule"]["init_args"]:
        assert model["schedule"]["init_args"]["pretrained"] == str(folder)
    if kind in TEXT_LENGTH:
        model["text_encoder"]["init_args"]["max_length"] = TEXT_LENGTH[kind]
    model["unet"]["init_args"].update(dtype="float32", lora_rank=4, lora_alpha=8)
    model["text_encoder"]["init_args"]["dtype"] = "float32"
    model.update(warmup_steps=0, lr=1e-3)
    cfg["trainer"].update(accelerator="cpu", precision="32-true", max_steps=2, val_check_interval=2,
                          log_every_n_steps=1, enable_model_summary=False, default_root_dir=str(tmp / "run"))
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("ModelCheckpoint"):
            cb["init_args"]["every_n_train_steps"] = 2
        if cb["class_path"].endswith("LogSampleVideos"):
            cb["init_args"].update(captions=["a red circle moving left"], num_frames=frames, height=size,
                                   width=size, steps=2)
    cfg["data"]["init_args"].update(root=str(tmp / "shapes"), num_frames=frames, size=size, batch_size=1,
                                    num_workers=0, clips_per_combo=1)
    out = tmp / f"finetune-{kind}-tiny.yaml"
    out.write_text(yaml.safe_dump(cfg))
    return out


@pytest.mark.parametrize("kind", sorted(RECIPES))
def test_recipe_fits_saves_lora_and_samples(kind, tiny_video, tmp_path):
    import diffusers
    from safetensors.torch import load_file

    folder = tiny_video(kind)
    res = run(str(ROOT / "tools" / "fit.py"), "-c", str(tiny_recipe(kind, folder, tmp_path)), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    ckpt = sorted((tmp_path / "run").rglob("last.ckpt"))[0]
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert state and all(".lora_" in k for k in state), sorted(state)[:5]  # no frozen base, VAE or text tower

    lora = sorted((tmp_path / "run").rglob("lora/last.safetensors"))
    assert lora, "SaveLoRA wrote no lora/last.safetensors"
    pipe = getattr(diffusers, RECIPES[kind][2]).from_pretrained(str(folder))
    pipe.load_lora_weights(str(lora[0].parent), weight_name=lora[0].name)
    assert pipe.transformer.peft_config  # the adapters are in the pipeline's transformer

    exported = tmp_path / "exported.safetensors"
    res = run(str(ROOT / "tools" / "export_lora.py"), "--ckpt", str(ckpt), "--out", str(exported), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    a, b = load_file(str(exported)), load_file(str(lora[0]))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    frames, size = RECIPES[kind][3:]
    out = tmp_path / "sample.mp4"
    res = run(str(ROOT / "tools" / "sample.py"), "--ckpt", str(ckpt), "--prompt", "a red circle moving left",
              "--out", str(out), "--frames", str(frames), "--height", str(size), "--width", str(size),
              "--steps", "2", "--device", "cpu", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    assert out.is_file() and out.stat().st_size > 0


def test_fsdp_policy_parses_from_the_command_line(tiny_video, tmp_path):
    """The recipe's commented FSDP strategy resolves (the policy by import path) through the CLI parser."""
    recipe = tiny_recipe("wan", tiny_video("wan"), tmp_path)
    res = run(str(ROOT / "tools" / "fit.py"), "-c", str(recipe), "--trainer.strategy",
              "lightning.pytorch.strategies.FSDPStrategy",
              "--trainer.strategy.auto_wrap_policy", "latentvid.nn.video_transformers.fsdp_wrap_policy",
              "--print_config", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    strategy = yaml.safe_load(res.stdout)["trainer"]["strategy"]
    assert strategy["init_args"]["auto_wrap_policy"] == "latentvid.nn.video_transformers.fsdp_wrap_policy"


def test_wan_recipe_trains_on_streamed_buckets(tiny_video, tmp_path):
    """The streaming folder data with length x aspect-ratio buckets (configs/bucket-data.yaml, stills
    left out) feeds the Wan recipe unchanged, the start-up checks included (the square 9-frame shapes
    clips land in the 9 x 16 x 16 bucket)."""
    from latentvid.data.shapes import generate_shapes_dataset

    data = tmp_path / "shapes"
    generate_shapes_dataset(data, seed=0, clips_per_combo=1, num_frames=9, size=24, images_per_combo=1,
                            heldout_clips_per_combo=1)
    recipe = tiny_recipe("wan", tiny_video("wan"), tmp_path)
    cfg = yaml.safe_load(recipe.read_text())
    buckets = yaml.safe_load((ROOT / "configs" / "bucket-data.yaml").read_text())
    args = buckets["init_args"]
    for source in ("video", "val"):
        args[source]["init_args"]["root"] = str(data)
    args.pop("images")
    args.update(image_ratio=0.0, batch_size=2, num_workers=0, clip={"num_frames": 9, "size": 16, "fps": 8})
    args["buckets"].update(sizes=[16], aspect_ratios=["1:1", "3:2"], frames=[5, 9], multiple=8, spatial_factor=4,
                           temporal_factor=4, estimate=32, buffer=16)
    cfg["data"] = buckets
    cfg["trainer"]["callbacks"] = [cb for cb in cfg["trainer"]["callbacks"] if not cb["class_path"].endswith("Videos")]
    recipe.write_text(yaml.safe_dump(cfg))
    res = run(str(ROOT / "tools" / "fit.py"), "-c", str(recipe), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    assert sorted((tmp_path / "run").rglob("lora/last.safetensors"))


def test_ltx_recipe_with_frame_conditioning_fits_and_animates_an_image(tiny_video, tmp_path):
    """LTXVideoTransformer(frame_conditioning: true) through the recipe: known-frame masks in training, and
    the checkpoint animates a png with the trained method (which a model without it refuses)."""
    import numpy as np
    from PIL import Image

    folder = tiny_video("ltx")
    recipe = tiny_recipe("ltx", folder, tmp_path)
    res = run(str(ROOT / "tools" / "fit.py"), "-c", str(recipe),
              "--model.init_args.unet.init_args.frame_conditioning", "true", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    ckpt = sorted((tmp_path / "run").rglob("last.ckpt"))[0]
    frames, size = RECIPES["ltx"][3:]
    png = tmp_path / "first.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(png)
    out = tmp_path / "animated.mp4"
    res = run(str(ROOT / "tools" / "sample.py"), "--ckpt", str(ckpt), "--image", str(png), "--frames-method",
              "trained", "--prompt", "a red circle moving left", "--out", str(out), "--frames", str(frames),
              "--steps", "2", "--device", "cpu", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    from latentvid.data.video import read_video

    assert read_video(out).shape == (3, frames, size, size)
