"""Tiny base / TSR / SSR checkpoints written by the real training entry point (one step each).

Chain: base 2 frames of 8x8 at 8 fps -> TSR x2 frames (4 of 8x8, 16 fps) -> SSR x2 (4 of 16x16).
"""

import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

TRAINER = {
    "accelerator": "cpu", "devices": 1, "max_steps": 1, "limit_val_batches": 0, "num_sanity_val_steps": 0,
    "logger": False, "enable_model_summary": False, "enable_progress_bar": False,
}
UNET = {"model_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [], "head_dim": 8,
        "norm_groups": 4}
TEXT = {"class_path": "latentvid.conditioning.text.OpenCLIPTextEncoder",
        "init_args": {"random_width": 32, "random_layers": 1, "random_heads": 2, "max_length": 16}}


def recipe(model: dict, num_frames: int, size: int, data_root: Path, ckpt_dir: Path) -> dict:
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(ckpt_dir), "save_last": True}}]
    data = {"class_path": "latentvid.data.datamodule.ShapesDataModule",
            "init_args": {"root": str(data_root), "num_frames": num_frames, "size": size, "batch_size": 2,
                          "clips_per_combo": 1, "image_ratio": 0.0}}
    trainer = {**TRAINER, "callbacks": callbacks, "default_root_dir": str(ckpt_dir)}  # config.yaml goes there too
    return {"seed_everything": 0, "trainer": trainer, "model": model, "data": data}


def base_model() -> dict:
    return {"class_path": "latentvid.models.latent_diffusion.LatentDiffusion",
            "init_args": {"warmup_steps": 1, "sample_steps": 2, "clip_sample": 1.0, "text_encoder": TEXT,
                          "unet": {"class_path": "latentvid.nn.unet3d.UNet3D",
                                   "init_args": {**UNET, "attention_levels": [1], "context_dim": 32}}}}


def sr_model(class_name: str, in_channels: int, **init_args) -> dict:
    unet = {**UNET, "in_channels": in_channels, "out_channels": 3, "context_dim": None, "temporal_attention": False,
            "fps_conditioning": False, "num_extra_conditions": 1}
    return {"class_path": f"latentvid.models.super_resolution.{class_name}",
            "init_args": {"warmup_steps": 1, "sample_steps": 2, "clip_sample": 1.0, "text_encoder": None,
                          **init_args, "unet": {"class_path": "latentvid.nn.unet3d.UNet3D", "init_args": unet}}}


def fit(config: dict, path: Path) -> Path:
    from latentvid.cli import main

    path.write_text(yaml.safe_dump(config))
    with mock.patch.object(sys, "argv", ["latentvid"]):  # pytest's own arguments are not the CLI's
        main(["fit", "-c", str(path)])
    ckpt = Path(config["trainer"]["callbacks"][0]["init_args"]["dirpath"]) / "last.ckpt"
    assert ckpt.is_file(), f"training did not write {ckpt}"
    return ckpt


@pytest.fixture(scope="session")
def tiny_cascade(tmp_path_factory) -> dict:
    """Paths of the three checkpoints (keys base, tsr, ssr) and the folder holding them."""
    import warnings

    tmp = tmp_path_factory.mktemp("cascade")
    data = tmp / "shapes"  # generated once at 4 frames of 16 px; each recipe reads its own size from it
    runs = {
        "base": recipe(base_model(), 2, 8, data, tmp / "base"),
        "tsr": recipe(sr_model("TemporalSuperResolution", 7, frame_factor=2, fill="blank"), 4, 8, data, tmp / "tsr"),
        "ssr": recipe(sr_model("SpatialSuperResolution", 6, scale_factor=2), 4, 16, data, tmp / "ssr"),
    }
    from latentvid.data.shapes import generate_shapes_dataset

    generate_shapes_dataset(data, clips_per_combo=1, num_frames=4, size=16, images_per_combo=1,
                            heldout_clips_per_combo=1)
    paths = {"root": tmp}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random text tower, existing data at another size, few batches
        for name, config in runs.items():
            paths[name] = fit(config, tmp / f"{name}.yaml")
    return paths
