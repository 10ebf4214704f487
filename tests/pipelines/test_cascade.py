"""CascadePipeline with tiny stages saved as real checkpoints: the file it writes (read back with
decord), the chain check that runs before any sampling, the YAML checks, tools/sample.py --cascade."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from latentvid.data.video import read_video, video_info
from latentvid.models.latent_diffusion import LatentDiffusion
from latentvid.models.super_resolution import SuperResolutionDiffusion
from latentvid.pipelines.cascade import ChainError, CascadePipeline, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOMLY INITIALISED")  # the tiny stages use a random tower


def cascade_config(paths: dict, *stages: str, **base) -> dict:
    return {"base": {"ckpt": str(paths["base"]), "steps": 2, "guidance": 2.0, **base},
            "stages": [{"name": s, "ckpt": str(paths[s.rstrip("0123456789")]), "steps": 2} for s in stages]}


@pytest.fixture
def no_sampling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("sampling started before the chain was checked")

    monkeypatch.setattr(LatentDiffusion, "sample", refuse)
    monkeypatch.setattr(SuperResolutionDiffusion, "sample", refuse)


def test_cascade_writes_an_mp4_of_the_final_size_frames_and_fps(tiny_cascade, tmp_path):
    config = tmp_path / "cascade.yaml"
    config.write_text(yaml.safe_dump(cascade_config(tiny_cascade, "tsr", "ssr")))
    pipe = CascadePipeline.from_yaml(config)
    plan = pipe.plan()
    assert [(p.name, p.output_shape, p.fps) for p in plan] == [
        ("base", (2, 8, 8), 8.0), ("tsr", (4, 8, 8), 16.0), ("ssr", (4, 16, 16), 16.0)]
    paths = pipe.generate(["a red circle moving left"], tmp_path / "out.mp4", seed=3, progress=False)
    assert paths == [tmp_path / "out.mp4"]
    info = video_info(paths[0])
    assert (info["num_frames"], info["height"], info["width"]) == (4, 16, 16)
    assert info["fps"] == pytest.approx(16.0)
    assert read_video(paths[0]).shape == (3, 4, 16, 16)
    # from Python: the same seed gives the same video, another seed another one
    a = pipe(["a red circle moving left"], seed=3, progress=False)
    assert a.shape == (1, 3, 4, 16, 16) and a.abs().max() <= 1
    assert torch.equal(a, pipe(["a red circle moving left"], seed=3, progress=False))
    assert not torch.equal(a, pipe(["a red circle moving left"], seed=4, progress=False))


def test_several_captions_go_to_a_folder(tiny_cascade, tmp_path):
    pipe = CascadePipeline.from_config(cascade_config(tiny_cascade, "ssr"))
    paths = pipe.generate(["a red circle moving left", "a blue square moving up"], tmp_path / "out", progress=False)
    assert [p.name for p in paths] == ["00_a_red_circle_moving_left.mp4", "01_a_blue_square_moving_up.mp4"]
    assert all(video_info(p)["num_frames"] == 2 and video_info(p)["height"] == 16 for p in paths)


def test_a_mismatched_chain_is_rejected_before_sampling(tiny_cascade, no_sampling):
    # SSR first: it makes 16x16, but the TSR was trained on 8x8 clips
    with pytest.raises(ChainError) as err:
        CascadePipeline.from_config(cascade_config(tiny_cascade, "ssr", "tsr"))
    assert "TSR stage 'tsr' expects 8x8 input but the previous stage ('ssr') gives 16x16" in str(err.value)
    # two SSR stages: the second expects 8x8 again; every problem is listed
    with pytest.raises(ChainError) as err:
        CascadePipeline.from_config(cascade_config(tiny_cascade, "tsr", "ssr", "ssr2"))
    assert "SSR stage 'ssr2' expects 8x8 input but the previous stage ('ssr') gives 16x16" in str(err.value)
    # frames: a 3-frame base cannot feed a TSR trained to double 2 frames
    with pytest.raises(ChainError, match="TSR stage 'tsr' expects 2 input frames but the previous stage \\('base'\\) "
                                         "gives 3"):
        CascadePipeline.from_config(cascade_config(tiny_cascade, "tsr", frames=3))


def test_input_size_in_the_config_overrides_the_recorded_one(tiny_cascade, no_sampling):
    config = cascade_config(tiny_cascade, "ssr")
    config["stages"][0]["input_size"] = [4, 4]
    with pytest.raises(ChainError, match="SSR stage 'ssr' expects 4x4 input but the previous stage \\('base'\\) "
                                         "gives 8x8"):
        CascadePipeline.from_config(config)


def test_config_errors_name_the_file_and_key(tiny_cascade, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": {"ckpt": "x.ckpt", "stepz": 3}}))
    with pytest.raises(ValueError, match=r"bad.yaml: base: unknown key\(s\) \['stepz'\]"):
        load_config(bad)
    with pytest.raises(ValueError, match=r"stages\[0\]: missing key\(s\) \['ckpt'\]"):
        parse_config({"base": {"ckpt": "x.ckpt"}, "stages": [{"name": "ssr"}]})
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        CascadePipeline.from_config({"base": {"ckpt": str(tmp_path / "missing.ckpt")}})
    with pytest.raises(ValueError, match="is a LatentDiffusion, not an SR stage"):
        CascadePipeline.from_config({"base": {"ckpt": str(tiny_cascade["base"])},
                                     "stages": [{"name": "x", "ckpt": str(tiny_cascade["base"])}]})


def test_stage_samplers_are_checked_against_the_registry():
    config = parse_config({"base": {"ckpt": "x.ckpt", "sampler": "dpmpp_2m"},
                           "stages": [{"ckpt": "y.ckpt", "sampler": "heun"}, {"ckpt": "z.ckpt"}]})
    assert [config.base.sampler, *(s.sampler for s in config.stages)] == ["dpmpp_2m", "heun", None]
    with pytest.raises(ValueError, match=r"stages\[1\]\.sampler 'euler' is not one of"):
        parse_config({"base": {"ckpt": "x.ckpt"},
                      "stages": [{"ckpt": "y.ckpt"}, {"ckpt": "z.ckpt", "sampler": "euler"}]})


@pytest.mark.slow
def test_sample_tool_runs_the_cascade(tiny_cascade, tmp_path):
    config = tmp_path / "cascade.yaml"
    config.write_text(yaml.safe_dump(cascade_config(tiny_cascade, "tsr", "ssr")))
    tool = str(ROOT / "tools" / "sample.py")
    out = tmp_path / "cli.mp4"
    res = subprocess.run([sys.executable, tool, "--cascade", str(config), "--prompt", "a green triangle moving up",
                          "--out", str(out), "--fps", "4"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    info = video_info(out)
    assert (info["num_frames"], info["height"], info["width"]) == (4, 16, 16)
    assert info["fps"] == pytest.approx(8.0)  # --fps sets the base's rate; the TSR doubles it
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cascade_config(tiny_cascade, "ssr", "tsr")))
    res = subprocess.run([sys.executable, tool, "--cascade", str(bad), "--prompt", "x", "--out", str(tmp_path / "x.mp4")],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "TSR stage 'tsr' expects 8x8 input" in res.stderr and not (tmp_path / "x.mp4").exists()


def test_recipes_build_and_cascade_yaml_names_their_checkpoints():
    from unittest import mock

    from latentvid.cli import LatentVidCLI
    from latentvid.models.super_resolution import SpatialSuperResolution, TemporalSuperResolution

    cascade = load_config(ROOT / "configs" / "cascade.yaml")
    named = {s.name: s.ckpt for s in cascade.stages}
    for name, cls in (("tsr", TemporalSuperResolution), ("ssr", SpatialSuperResolution)):
        recipe = ROOT / "configs" / f"{name}.yaml"
        with mock.patch.object(sys, "argv", ["latentvid"]):
            cli = LatentVidCLI(args=["-c", str(recipe)], run=False)
        assert isinstance(cli.model, cls)
        raw = yaml.safe_load(recipe.read_text())
        ckpt_cb = next(c for c in raw["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint"))
        # cascade.yaml names the recipe's run root (its newest run's last.ckpt); each run writes its own folder
        assert named[name] == raw["trainer"]["default_root_dir"] and "dirpath" not in ckpt_cb["init_args"]
        # last.ckpt is only written at checkpoint steps: the final step must be one
        assert raw["trainer"]["max_steps"] % ckpt_cb["init_args"]["every_n_train_steps"] == 0
