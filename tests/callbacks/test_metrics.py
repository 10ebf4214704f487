"""SampleMetrics: sampling at validation, FVD real/generated dispatch, logging, schedule, checkpoints, YAML."""

from __future__ import annotations

import csv
import textwrap
import warnings

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

import latentvid.callbacks.metrics as metrics_module
from latentvid.callbacks.metrics import SampleMetrics, flatten_result, sample_plan
from latentvid.conditioning.text import OpenCLIPTextEncoder
from latentvid.data.shapes import render_clip, video_caption
from latentvid.data.video import from_uint8
from latentvid.metrics.fvd import FrechetVideoDistance
from latentvid.metrics.shapes import ShapesProbe
from latentvid.models.latent_diffusion import LatentDiffusion
from latentvid.nn.unet3d import UNet3D

T, SIZE = 4, 16
CAPTIONS = ["a red circle moving left", "a blue square moving up", "a green triangle moving right"]


class TinyExtractor(nn.Module):
    """Fixed random projection of a (B, 3, T, 8, 8) clip to 6 features, tanh'd (float64)."""

    feature_dim = 6

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.proj = nn.Parameter(torch.randn(3 * T * 8 * 8, 6, generator=gen, dtype=torch.float64) / 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x.flatten(1) @ self.proj)  # (B, 6)


def tiny_model() -> LatentDiffusion:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random text tower warns that it is random
        text = OpenCLIPTextEncoder(random_width=32, random_layers=1, random_heads=2, max_length=16)
    unet = UNet3D(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), head_dim=8,
                  context_dim=32, norm_groups=4)
    # lr = 0: the weights that sampled at validation are still there after fit, for the reference
    return LatentDiffusion(unet, text, lr=0.0, warmup_steps=1, sample_steps=2, clip_sample=1.0)


def items(n: int, seed: int, still: int | None = None) -> list[dict]:
    rng = np.random.default_rng(seed)
    combos = [("red", "circle", "left"), ("blue", "square", "up"), ("green", "triangle", "right"),
              ("yellow", "circle", "down")]
    out = []
    for i in range(n):
        combo = combos[i % len(combos)]
        video = from_uint8(render_clip(*combo, num_frames=T, size=SIZE, rng=rng))  # (3, T, H, W)
        mask = torch.ones(T, dtype=torch.bool)
        if i == still:  # an image: frame 0 valid, the rest zeros and masked
            video[:, 1:] = 0
            mask[1:] = False
        out.append({"video": video, "caption": video_caption(*combo), "fps": torch.tensor(8.0), "frame_mask": mask})
    return out


def fvd_metric() -> FrechetVideoDistance:
    return FrechetVideoDistance(TinyExtractor(), num_frames=T, resize=8)


def test_sample_plan_is_the_same_for_any_world_size():
    full = sample_plan(CAPTIONS, 2, 4, seed=10)
    assert full == [(10, [CAPTIONS[0]] * 2 + [CAPTIONS[1]] * 2), (11, [CAPTIONS[2]] * 2)]
    for world in (2, 3):
        shards = [sample_plan(CAPTIONS, 2, 4, seed=10, rank=r, world_size=world) for r in range(world)]
        assert sorted(b for shard in shards for b in shard) == sorted(full)
    assert sample_plan(CAPTIONS, 1, 1, seed=0, rank=1, world_size=2) == [(1, [CAPTIONS[1]])]
    with pytest.raises(ValueError, match="rank"):
        sample_plan(CAPTIONS, 1, 1, seed=0, rank=2, world_size=2)


def test_flatten_result():
    value = {"colour": torch.tensor(0.5), "nested": {"a": 1.0}}
    assert dict(flatten_result("probe", value)) == {"probe_colour": 0.5, "probe_nested_a": 1.0}
    assert dict(flatten_result("fvd", torch.tensor(3.0, dtype=torch.float64))) == {"fvd": 3.0}
    with pytest.raises(ValueError, match="fvd"):
        list(flatten_result("fvd", torch.zeros(2)))


def test_constructor_rejects_bad_metrics(tmp_path):
    with pytest.raises(TypeError, match="probe"):
        SampleMetrics({"probe": object()})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="at least one"):
        SampleMetrics({})
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        SampleMetrics({"probe": ShapesProbe()}, sampler="euler")
    assert SampleMetrics({"probe": ShapesProbe()}, sampler="dpmpp_2m").sampler == "dpmpp_2m"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\n\n a blue square \n")
    assert SampleMetrics({"probe": ShapesProbe()}, captions=str(prompts)).resolve_captions(None) == [
        "a red circle moving left", "a blue square"]
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        SampleMetrics({"probe": ShapesProbe()}, captions=str(tmp_path / "missing.txt")).resolve_captions(None)


def test_trainer_logs_metrics_on_schedule_and_keeps_them_out_of_checkpoints(tmp_path):
    model = tiny_model()
    val = items(4, seed=1, still=2)
    callback = SampleMetrics({"probe": ShapesProbe(), "fvd": fvd_metric()}, captions=CAPTIONS, num_per_caption=2,
                             steps=2, seed=5, batch_size=2, every_n_validations=2)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=4, val_check_interval=2, limit_val_batches=1,
                      num_sanity_val_steps=1, log_every_n_steps=1, logger=CSVLogger(tmp_path),
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[callback])
    trainer.fit(model, DataLoader(items(8, seed=0), batch_size=2), DataLoader(val, batch_size=4))

    # Reference: the same samples drawn by hand (batch j of the caption-major list uses seed 5 + j),
    # scored by fresh metrics; FVD's real set is the validation clips minus the still.
    model.eval()
    probe, fvd = ShapesProbe(), fvd_metric()
    for seed, caps in [(5, [CAPTIONS[0]] * 2), (6, [CAPTIONS[1]] * 2), (7, [CAPTIONS[2]] * 2)]:
        videos = model.sample(caps, T, SIZE, SIZE, steps=2, generator=torch.Generator().manual_seed(seed))
        probe.update(videos, caps)
        fvd.update(videos, real=False)
    fvd.update(torch.stack([val[i]["video"] for i in (0, 1, 3)]), real=True)
    logged = trainer.callback_metrics
    for key, value in probe.compute().items():
        assert logged[f"val/probe_{key}"].item() == pytest.approx(value.item(), abs=1e-6), key  # logged as float32
    assert logged["val/fvd"].item() == pytest.approx(fvd.compute().item(), rel=1e-5)

    # every_n_validations=2: scored at the first of the two validations (the sanity check not counted).
    with open(f"{trainer.logger.log_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    loss_steps = sorted(int(r["step"]) for r in rows if r.get("val/loss"))
    probe_steps = [int(r["step"]) for r in rows if r.get("val/probe_all")]
    assert len(loss_steps) == 2 and probe_steps == loss_steps[:1]
    assert int(callback.metrics["probe"].num_clips) == 0, "metrics are reset after logging"

    # The metrics (and the extractor's weights) are not part of the model checkpoint.
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    ckpt = torch.load(tmp_path / "model.ckpt", map_location="cpu", weights_only=True)
    assert set(ckpt["state_dict"]) == set(tiny_model().state_dict())

    def tensors(obj) -> int:
        if isinstance(obj, torch.Tensor):
            return 1
        if isinstance(obj, dict):
            return sum(tensors(v) for v in obj.values())
        return sum(tensors(v) for v in obj) if isinstance(obj, (list, tuple)) else 0

    assert tensors(ckpt.get("callbacks", {})) == 0


def docstring_yaml() -> str:
    """The example config in the module docstring."""
    doc = metrics_module.__doc__
    block = doc.split("Example (", 1)[1].split("::\n", 1)[1].split("\nDispatch:", 1)[0]
    return textwrap.dedent(block)


def test_docstring_yaml_example_parses_and_instantiates():
    import yaml
    from jsonargparse import ArgumentParser
    from lightning.pytorch import Callback

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--callbacks", type=list[Callback])
    example = yaml.safe_load(docstring_yaml())
    cfg = parser.parse_object({"callbacks": example})
    assert cfg.callbacks[0].class_path == "latentvid.callbacks.metrics.SampleMetrics"
    assert set(cfg.callbacks[0].init_args.metrics) == {"probe", "fvd", "clip"}
    # a misspelt key is caught by the signatures
    bad = yaml.safe_load(docstring_yaml().replace("num_frames: 8", "num_frame: 8"))
    with pytest.raises(Exception, match="num_frame"):
        parser.parse_object({"callbacks": bad})
    # instantiable once the weight paths are real (here: a random I3D, no CLIP)
    example[0]["init_args"]["metrics"]["fvd"]["init_args"] = {"allow_random_init": True, "num_frames": 8}
    del example[0]["init_args"]["metrics"]["clip"]
    (callback,) = parser.instantiate_classes(parser.parse_object({"callbacks": example})).callbacks
    assert isinstance(callback, SampleMetrics) and callback.num_per_caption == 2
    assert isinstance(callback.metrics["probe"], ShapesProbe)
    assert isinstance(callback.metrics["fvd"], FrechetVideoDistance) and callback.metrics["fvd"].num_frames == 8


@pytest.mark.parametrize("reset_real", [True, False])
def test_real_clips_are_counted_once_per_statistics(reset_real):
    """FVD with reset_real_features=False keeps the first run's real statistics instead of adding
    the same clips again; with True it re-encodes them each run. Stills never count as real."""
    from types import SimpleNamespace

    model = tiny_model().eval()
    fvd = FrechetVideoDistance(TinyExtractor(), num_frames=T, resize=8, reset_real_features=reset_real)
    callback = SampleMetrics({"fvd": fvd}, captions=CAPTIONS[:2], steps=2)
    trainer = SimpleNamespace(sanity_checking=False, global_rank=0, world_size=1, datamodule=None)
    val = items(4, seed=1, still=2)
    batch = {key: torch.stack([it[key] for it in val]) for key in ("video", "frame_mask")}
    for _ in range(2):  # two scored validation runs
        callback.on_validation_batch_end(trainer, model, None, batch, batch_idx=0)
        assert int(fvd.fake_n) == 2 and int(fvd.real_n) == 3
        fvd.compute()
