"""tools/evaluate.py: probe / FVD / CLIP / PSNR / SSIM on folders of real mp4 files and on a trained checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latentvid.data.video_log import slug
from latentvid.data.shapes import render_clip, video_caption
from latentvid.data.video import read_video, write_video

ROOT = Path(__file__).resolve().parents[2]
EVALUATE = ROOT / "tools" / "evaluate.py"
TINY = ROOT / "tests" / "configs" / "tiny.yaml"

# Every colour, shape and direction at least twice.
COMBOS = [("red", "circle", "left"), ("green", "square", "up"), ("blue", "triangle", "right"),
          ("yellow", "circle", "down"), ("white", "square", "left"), ("red", "triangle", "up"),
          ("green", "circle", "right"), ("blue", "square", "down"), ("yellow", "triangle", "left"),
          ("white", "circle", "up"), ("red", "square", "right"), ("green", "triangle", "down")]
CAPTIONS = [video_caption(*c) for c in COMBOS]


@pytest.fixture(scope="module")
def tool(load_script):
    return load_script("tools/evaluate.py", "evaluate_tool")


def write_shapes(folder: Path, combos=COMBOS, frames: int = 8, size: int = 32, seed: int = 0) -> list[Path]:
    """Ground-truth clips named as tools/sample.py names its outputs."""
    rng = np.random.default_rng(seed)
    paths = []
    for i, combo in enumerate(combos):
        path = folder / f"{i:02d}_{slug(video_caption(*combo))}.mp4"
        write_video(path, render_clip(*combo, num_frames=frames, size=size, rng=rng), fps=8)
        paths.append(path)
    return paths


def write_noise(folder: Path, names: list[str], frames: int = 8, size: int = 32, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    for name in names:
        write_video(folder / name, rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8), fps=8)


def printed_table(stdout: str) -> dict[str, tuple[float, str]]:
    """metric -> (value, n) from the printed table."""
    lines = stdout.strip().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.split()[:3] == ["metric", "value", "n"])
    rows = {}
    for ln in lines[start + 1:]:
        if ln.startswith("wrote "):
            break
        name, value, n = ln.split(None, 2)
        rows[name] = (float(value), n)
    return rows


def test_probe_on_ground_truth_clips_is_perfect_and_matches_json(tool, tmp_path, capsys):
    write_shapes(tmp_path / "gt")
    out = tmp_path / "gt.json"
    tool.main(["--generated", str(tmp_path / "gt"), "--out", str(out)])
    table = printed_table(capsys.readouterr().out)
    report = json.loads(out.read_text())
    for key in ("colour", "shape", "direction", "all"):
        entry = report["metrics"][f"probe/{key}"]
        assert entry == {"value": 1.0, "n": 12}
        assert table[f"probe/{key}"] == (1.0, "12")
    assert [v["caption"] for v in report["videos"]] == CAPTIONS
    assert report["probe_per_caption"][CAPTIONS[3]] == {"n": 1, "colour": 1.0, "shape": 1.0, "direction": 1.0,
                                                        "all": 1.0}
    assert report["videos"][2]["probe"] == {"colour": "blue", "shape": "triangle", "direction": "right"}
    # Deterministic: a second run writes the same report (but for its own --out).
    tool.main(["--generated", str(tmp_path / "gt"), "--out", str(tmp_path / "again.json")])
    again = json.loads((tmp_path / "again.json").read_text())
    report["args"].pop("out"), again["args"].pop("out")
    assert again == report


def test_probe_on_noise_is_near_chance(tool, tmp_path, capsys):
    write_noise(tmp_path / "noise", [f"{i:02d}_{slug(c)}.mp4" for i, c in enumerate(CAPTIONS)])
    out = tmp_path / "noise.json"
    tool.main(["--generated", str(tmp_path / "noise"), "--out", str(out)])
    table = printed_table(capsys.readouterr().out)
    metrics = json.loads(out.read_text())["metrics"]
    # chance: colour 1/5, shape 1/3, direction 1/4, all 1/60
    assert metrics["probe/colour"]["value"] <= 0.4
    assert metrics["probe/shape"]["value"] <= 0.5
    assert metrics["probe/direction"]["value"] <= 0.4
    assert metrics["probe/all"]["value"] <= 0.1
    for name, (value, n) in table.items():
        assert value == pytest.approx(metrics[name]["value"], rel=1e-5, abs=1e-9) and n == "12"


def test_captions_jsonl_overrides_file_names(tool, tmp_path):
    folder = tmp_path / "gen"
    paths = write_shapes(folder, COMBOS[:6])
    # Neutral names; the captions come from the index, three of them with the wrong colour.
    rows = []
    for i, path in enumerate(paths):
        caption = CAPTIONS[i]
        if i < 3:
            caption = caption.replace(COMBOS[i][0], "white" if COMBOS[i][0] != "white" else "red")
        path.rename(folder / f"clip{i}.mp4")
        rows.append({"path": f"clip{i}.mp4", "caption": caption})
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = tool.main(["--generated", str(folder), "--out", str(tmp_path / "r.json")])
    assert report["metrics"]["probe/colour"]["value"] == pytest.approx(3 / 6)
    assert report["metrics"]["probe/shape"]["value"] == 1.0
    assert [v["name"] for v in report["videos"]] == [f"clip{i}.mp4" for i in range(6)]
    # a listed file that is missing is named
    (folder / "clip5.mp4").unlink()
    with pytest.raises(SystemExit, match="clip5.mp4"):
        tool.main(["--generated", str(folder), "--out", str(tmp_path / "r.json")])


def reference_fvd(gen: list[Path], real: list[Path], seed: int, frames: int, size: int) -> float:
    """The metric built by hand: same seeded random I3D, clips decoded here."""
    from latentvid.metrics.fvd import FrechetVideoDistance

    torch.manual_seed(seed)
    fvd = FrechetVideoDistance("i3d", allow_random_init=True, num_frames=frames, resize=size)
    fvd.update(torch.stack([read_video(p) for p in gen]), real=False)
    fvd.update(torch.stack([read_video(p) for p in real]), real=True)
    return fvd.compute().item()


def test_fvd_random_init_self_zero_other_positive(tool, tmp_path):
    a = write_shapes(tmp_path / "a", COMBOS[:5], frames=4, size=16, seed=0)
    b = write_shapes(tmp_path / "b", COMBOS[5:11], frames=4, size=16, seed=1)
    (tmp_path / "b" / "index.jsonl").write_text("".join(json.dumps({"path": p.name}) + "\n" for p in b))
    common = ["--metrics", "fvd", "--fvd-random-init", "--fvd-size", "32", "--seed", "3"]
    same = tool.main(["--generated", str(tmp_path / "a"), "--real", str(tmp_path / "a"), *common,
                      "--out", str(tmp_path / "same.json")])["metrics"]["fvd"]
    other = tool.main(["--generated", str(tmp_path / "a"), "--real", str(tmp_path / "b" / "index.jsonl"), *common,
                       "--out", str(tmp_path / "other.json")])["metrics"]["fvd"]
    assert other["n"] == 5 and other["n_real"] == 6 and other["num_frames"] == 4 and other["random_init"]
    # A random I3D's features are tiny (~1e-7), so compare against the other folder's distance.
    assert other["value"] > 0
    assert abs(same["value"]) <= 1e-4 * other["value"]
    assert other["value"] == pytest.approx(reference_fvd(a, b, seed=3, frames=4, size=32), rel=1e-4)
    # folder and JSONL index of the same files agree
    folder = tool.main(["--generated", str(tmp_path / "a"), "--real", str(tmp_path / "b"), *common,
                        "--out", str(tmp_path / "folder.json")])["metrics"]["fvd"]
    assert folder["value"] == other["value"]


def reference_psnr_ssim(gen: list[Path], real: list[Path]) -> tuple[float, float]:
    """Per-frame PSNR and Gaussian SSIM (Wang et al. 2004: 11 taps, sigma 1.5) in numpy/scipy on
    [0, 1] RGB, averaged over all frames. Borders as torchmetrics treats them: mirror padding
    (edge pixel not repeated) and the whole frame averaged, not only the fully covered interior."""
    from scipy.ndimage import correlate1d

    taps = np.arange(11) - 5
    window = np.exp(-(taps / 1.5) ** 2 / 2)
    window /= window.sum()

    def blur(x):  # (..., H, W) -> (..., H, W)
        return correlate1d(correlate1d(x, window, axis=-1, mode="mirror"), window, axis=-2, mode="mirror")

    c1, c2 = 0.01**2, 0.03**2
    psnrs, ssims = [], []
    for g, r in zip(gen, real):
        x = (read_video(g).numpy().astype(np.float64) + 1) / 2  # (3, T, H, W)
        y = (read_video(r).numpy().astype(np.float64) + 1) / 2
        for t in range(x.shape[1]):
            xf, yf = x[:, t], y[:, t]  # (3, H, W)
            psnrs.append(10 * np.log10(1.0 / np.mean((xf - yf) ** 2)))
            mx, my = blur(xf), blur(yf)
            vx, vy, cov = blur(xf * xf) - mx**2, blur(yf * yf) - my**2, blur(xf * yf) - mx * my
            s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
            ssims.append(s.mean())
    return float(np.mean(psnrs)), float(np.mean(ssims))


def test_psnr_ssim_pairs_by_file_name(tool, tmp_path):
    gen = write_shapes(tmp_path / "gen", COMBOS[:4], frames=4, size=32, seed=0)
    # references: the same clips with noise added, under the same names
    rng = np.random.default_rng(5)
    real = []
    for path in gen:
        frames = np.asarray(read_video(path).permute(1, 2, 3, 0).add(1).mul(127.5).round().numpy(), dtype=np.float64)
        noisy = np.clip(frames + rng.normal(0, 12, frames.shape), 0, 255).astype(np.uint8)
        write_video(tmp_path / "real" / path.name, noisy, fps=8)
        real.append(tmp_path / "real" / path.name)
    args = ["--generated", str(tmp_path / "gen"), "--metrics", "psnr,ssim"]
    same = tool.main([*args, "--real", str(tmp_path / "gen"), "--out", str(tmp_path / "same.json")])["metrics"]
    assert same["psnr"]["value"] == float("inf") and same["ssim"]["value"] == pytest.approx(1.0, abs=1e-6)
    assert json.loads((tmp_path / "same.json").read_text())["metrics"]["psnr"]["value"] == "inf"
    noisy = tool.main([*args, "--real", str(tmp_path / "real"), "--out", str(tmp_path / "noisy.json")])["metrics"]
    psnr, ssim = reference_psnr_ssim(gen, real)
    assert 15 < psnr < 40 and ssim < 0.99
    assert noisy["psnr"]["value"] == pytest.approx(psnr, rel=1e-4)
    assert noisy["ssim"]["value"] == pytest.approx(ssim, rel=1e-4)
    # a generated file without a same-named reference is an error naming it
    real[1].rename(tmp_path / "real" / "renamed.mp4")
    with pytest.raises(SystemExit, match=gen[1].name):
        tool.main([*args, "--real", str(tmp_path / "real"), "--out", str(tmp_path / "x.json")])


def test_clip_score_from_a_local_open_clip_folder(tool, tmp_path):
    import open_clip

    from latentvid.metrics.clip_score import VideoCLIPScore

    size = 32
    model_cfg = {"embed_dim": 16,
                 "vision_cfg": {"layers": 1, "width": 32, "head_width": 16, "patch_size": 8, "image_size": size},
                 "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    torch.manual_seed(0)
    model = open_clip.CLIP(**model_cfg).eval()
    folder = tmp_path / "tiny-clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    paths = write_shapes(tmp_path / "gen", COMBOS[:3], frames=4, size=size)
    report = tool.main(["--generated", str(tmp_path / "gen"), "--metrics", "clip,probe",
                        "--clip-arch", f"local-dir:{folder}", "--out", str(tmp_path / "c.json")])
    ref = VideoCLIPScore(model=model)
    ref.update(torch.stack([read_video(p) for p in paths]), CAPTIONS[:3])
    assert report["metrics"]["clip"]["value"] == pytest.approx(ref.compute().item(), rel=1e-5)
    assert report["metrics"]["clip"]["n"] == 3


def test_bad_inputs_end_in_one_line(tool, tmp_path):
    write_shapes(tmp_path / "gen", COMBOS[:2], frames=4, size=16)
    base = ["--generated", str(tmp_path / "gen"), "--out", str(tmp_path / "r.json")]
    with pytest.raises(SystemExit, match="--real"):
        tool.main([*base, "--metrics", "fvd"])
    with pytest.raises(SystemExit, match="nope.pt"):
        tool.main([*base, "--metrics", "fvd", "--real", str(tmp_path / "gen"), "--i3d", str(tmp_path / "nope.pt")])
    with pytest.raises(SystemExit, match="open_clip"):
        tool.main([*base, "--metrics", "clip"])
    (tmp_path / "gen" / "00_a_photo_of_a_cat.mp4").write_bytes((tmp_path / "gen").glob("01_*").__next__().read_bytes())
    with pytest.raises(SystemExit, match="a photo of a cat"):
        tool.main(base)
    assert not (tmp_path / "r.json").exists()


def test_missing_i3d_weights_exit_with_one_line(tmp_path):
    write_shapes(tmp_path / "gen", COMBOS[:2], frames=4, size=16)
    res = subprocess.run([sys.executable, str(EVALUATE), "--generated", str(tmp_path / "gen"), "--metrics", "fvd",
                          "--real", str(tmp_path / "gen"), "--out", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("evaluate.py:")]
    assert "rgb_imagenet.pt" in line and "--i3d" in line
    assert not (tmp_path / "r.json").exists()


# ---- from a checkpoint ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-step tiny checkpoint written by tools/fit.py (as in test_fit_sample.py)."""
    tmp = tmp_path_factory.mktemp("fit")
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "fit.py"), "-c", str(TINY),
                          "--trainer.default_root_dir", str(tmp / "run"), "--data.init_args.root", str(tmp / "shapes")],
                         cwd=tmp, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    (ckpt,) = sorted((tmp / "run").rglob("last.ckpt"))
    return tmp, ckpt


@pytest.mark.slow
def test_checkpoint_samples_n_per_prompt_reproducibly(tool, trained):
    tmp, ckpt = trained
    prompts = tmp / "prompts.txt"
    prompts.write_text("a red circle moving left\n\na blue square moving up\n")
    common = ["--ckpt", str(ckpt), "--prompts", str(prompts), "--num-per-prompt", "2", "--steps", "2",
              "--frames", "4", "--seed", "7", "--device", "cpu"]
    first = tool.main([*common, "--save-videos", str(tmp / "s1"), "--out", str(tmp / "r1.json")])
    second = tool.main([*common, "--save-videos", str(tmp / "s2"), "--out", str(tmp / "r2.json")])
    saved = sorted((tmp / "s1").glob("*.mp4"))
    assert [p.name for p in saved] == ["00_a_red_circle_moving_left.mp4", "01_a_red_circle_moving_left.mp4",
                                       "02_a_blue_square_moving_up.mp4", "03_a_blue_square_moving_up.mp4"]
    assert read_video(saved[0]).shape == (3, 4, 16, 16)  # size from the checkpoint's datamodule hparams
    report = json.loads((tmp / "r1.json").read_text())
    assert report["seeds"] == [7, 8, 9, 10] and report["checkpoint"]["ema"] is True
    assert report["metrics"]["probe/all"]["n"] == 4
    assert first["metrics"] == second["metrics"] and first["videos"] == [
        {**v, "path": v["path"].replace("/s2/", "/s1/")} for v in second["videos"]]
    for a, b in zip(saved, sorted((tmp / "s2").glob("*.mp4"))):
        assert torch.equal(read_video(a), read_video(b))
    # per-video seeds: sampling three at a time gives the same seeds and the same videos' readings
    batched = tool.main([*common, "--batch-size", "3", "--save-videos", str(tmp / "s3"), "--out", str(tmp / "r4.json")])
    assert batched["seeds"] == [7, 8, 9, 10] and batched["metrics"] == first["metrics"]
    assert [v["probe"] for v in batched["videos"]] == [v["probe"] for v in first["videos"]]
    for a, b in zip(saved, sorted((tmp / "s3").glob("*.mp4"))):
        torch.testing.assert_close(read_video(a), read_video(b), atol=2 / 255, rtol=0)  # a rounding flip at most
    # Independent of the tool: the EMA model sampled by hand with seed + j gives the same probe readings.
    from latentvid.metrics.shapes import classify_video

    from latentvid.evaluation import load_model

    model, _ = load_model(str(ckpt), ema=True)
    for j, row in enumerate(report["videos"]):
        video = model.sample([row["caption"]], 4, 16, 16, steps=2, generator=torch.Generator().manual_seed(7 + j))
        assert classify_video(video[0]) == row["probe"]
    # the saved folder (with its captions.jsonl) can be re-scored
    again = tool.main(["--generated", str(tmp / "s1"), "--out", str(tmp / "r3.json")])
    assert [v["caption"] for v in again["videos"]] == [v["caption"] for v in report["videos"]]
