"""tools/prepare_data.py: folder + CSV -> shards (progress, skipped files reported), shapes as shards,
and tools/fit.py trained for a few steps from those shards and from a folder + CSV."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from latentvid.data.clips import ClipSpec
from latentvid.data.shards import ImageShards, VideoShards, iter_shard
from latentvid.data.stream import SampleStream
from latentvid.data.video import write_video

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"


def run(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def prepare(load_script, capsys: pytest.CaptureFixture):
    """``prepare(*argv)``: (exit code, stdout, stderr) of ``prepare_data.py ARGV``, run in-process
    (no interpreter start per call) on a freshly loaded tools/prepare_data.py."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = load_script("tools/prepare_data.py", "prepare_data_tool").main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def shapes(tmp_path_factory, load_script) -> Path:
    """Small shapes data written by the tool as a folder and as shards."""
    tmp = tmp_path_factory.mktemp("prep")
    tool = load_script("tools/prepare_data.py", "prepare_data_tool")
    code = tool.main(["shapes", "--out", str(tmp / "shapes"), "--size", "16", "--frames", "4",
                      "--clips-per-combo", "1", "--shards", str(tmp / "shapes-shards"), "--samples-per-shard", "16"])
    assert code == 0
    return tmp


def test_folder_csv_to_shards_reports_skipped_files(tmp_path: Path, prepare) -> None:
    rows = ["file,text,id"]
    for i in range(5):
        write_video(tmp_path / f"v{i}.mp4", np.full((3, 8, 8, 3), 40 * i, np.uint8), fps=8)
        rows.append(f"v{i}.mp4,caption {i},id.{i}")
    (tmp_path / "junk.mp4").write_text("not a video")
    rows += ["junk.mp4,junk,junk", "gone.mp4,gone,gone"]
    (tmp_path / "index.csv").write_text("\n".join(rows) + "\n")
    code, out, err = prepare("shards", "--root", str(tmp_path), "--index", "index.csv", "--path-column",
                             "file", "--caption-column", "text", "--key-column", "id",
                             "--out", str(tmp_path / "out" / "s-%03d.tar"), "--samples-per-shard", "2")
    assert code == 0, err
    assert "wrote 5 samples in 3 shards" in out
    assert "skipped 2 rows" in out and "junk.mp4: does not decode" in out and "gone.mp4: file not found" in out
    assert "shards <-" in err  # the progress bar
    samples = [s for p in sorted((tmp_path / "out").glob("*.tar")) for s in iter_shard(str(p), [])]
    assert [s["__key__"] for s in samples] == [f"id_{i}" for i in range(5)]  # dots would split the key
    for i, s in enumerate(samples):
        assert s["mp4"] == (tmp_path / f"v{i}.mp4").read_bytes() and s["txt"] == f"caption {i}".encode()
        assert json.loads(s["json"]) == {"caption": f"caption {i}", "key": f"id.{i}", "path": f"v{i}.mp4"}


def test_errors_are_one_line(tmp_path: Path, prepare) -> None:
    (tmp_path / "index.csv").write_text("path,name\nv.mp4,x\n")
    out_pattern = str(tmp_path / "s-%d.tar")
    code, _, err = prepare("shards", "--root", str(tmp_path), "--index", "index.csv", "--out", out_pattern)
    assert code == 2 and err.startswith("error: ") and "no column 'caption'" in err and len(err.splitlines()) == 1
    code, out, err = prepare("shards", "--root", str(tmp_path), "--index", "index.csv",
                             "--caption-column", "name", "--out", out_pattern)
    assert code == 2 and "nothing written" in err and "v.mp4: file not found" in out
    code, _, err = prepare("shards", "--root", str(tmp_path / "nope"), "--index", "i.csv", "--out", out_pattern)
    assert code == 2 and "nope" in err
    code, _, err = prepare("shards", "--root", str(tmp_path), "--index", "index.csv",
                           "--caption-column", "name", "--out", str(tmp_path / "no-field.tar"))
    assert code == 2 and "integer field" in err


def test_shapes_shards_hold_the_same_samples_as_the_folder(shapes: Path) -> None:
    spec = ClipSpec(num_frames=4, size=16)
    for name, source in (("videos", VideoShards), ("heldout", VideoShards), ("images", ImageShards)):
        index = [json.loads(line) for line in (shapes / "shapes" / f"{name}.jsonl").read_text().splitlines()]
        items = list(SampleStream(source(str(shapes / "shapes-shards" / f"{name}-*.tar")), spec, shuffle=False))
        assert sorted((it["key"], it["caption"]) for it in items) == sorted((r["key"], r["caption"]) for r in index)
        assert sum(it["skipped"] for it in items) == 0
    assert (shapes / "shapes-shards" / "eval_prompts.txt").is_file()


def _source(class_path: str, init_args: str) -> str:
    return f"{{class_path: {class_path}, init_args: {{{init_args}}}}}"


def _data_config(path: Path, video: str, images: str) -> Path:
    path.write_text(f"""
class_path: latentvid.data.video_text.VideoTextDataModule
init_args:
  video: {video}
  images: {images}
  image_ratio: 0.25
  clip: {{num_frames: 4, size: 16, fps: 8}}
  batch_size: 4
  num_workers: 2
""")
    return path


def _fit(tmp: Path, data_config: Path) -> subprocess.CompletedProcess:
    return run(str(ROOT / "tools" / "fit.py"), "-c", str(TINY), "--data", str(data_config),
               "--trainer.default_root_dir", str(tmp / "run"),
               "--trainer.callbacks+=latentvid.callbacks.data_health.DataHealth",
               cwd=tmp)


@pytest.mark.slow
def test_fit_from_shards(shapes: Path) -> None:
    shards = shapes / "shapes-shards"
    config = _data_config(shapes / "shards.yaml",
                          _source("latentvid.data.shards.VideoShards", f"urls: '{shards}/videos-*.tar'"),
                          _source("latentvid.data.shards.ImageShards", f"urls: '{shards}/images-*.tar'"))
    res = _fit(shapes / "from_shards", config)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "max_steps=3` reached" in res.stderr + res.stdout
    assert list((shapes / "from_shards" / "run").rglob("last.ckpt"))


@pytest.mark.slow
def test_fit_from_folder_and_csv(shapes: Path) -> None:
    folder = shapes / "shapes"
    rows = [json.loads(line) for line in (folder / "videos.jsonl").read_text().splitlines()]
    (folder / "videos.csv").write_text("path,caption\n" + "".join(f"{r['path']},{r['caption']}\n" for r in rows))
    config = _data_config(shapes / "folder.yaml",
                          _source("latentvid.data.folder.VideoFolder", f"root: '{folder}', index: videos.csv"),
                          _source("latentvid.data.folder.ImageFolder", f"root: '{folder}', index: images.jsonl"))
    res = _fit(shapes / "from_folder", config)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "max_steps=3` reached" in res.stderr + res.stdout
    ckpts = list((shapes / "from_folder" / "run").rglob("last.ckpt"))
    assert ckpts
    import torch

    state = torch.load(ckpts[0], map_location="cpu", weights_only=True)  # plain hyperparameters and state
    assert state["global_step"] == 3
    assert state["datamodule_hyper_parameters"]["num_frames"] == 4
    assert "VideoTextDataModule" in state and state["VideoTextDataModule"]["progress"]["video"]["done_units"]
