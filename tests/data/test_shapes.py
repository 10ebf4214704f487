"""Tests for latentvid/data/shapes.py: drawing, captions, held-out split, generation on disk."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from latentvid.data.shapes import (
    BACKGROUND,
    COLOURS,
    DIRECTIONS,
    HELD_OUT,
    SHAPES,
    all_combos,
    eval_prompts,
    generate_shapes_dataset,
    image_caption,
    parse_caption,
    read_marker,
    render_clip,
    render_image,
    shape_mask,
    TRAVEL_RANGE,
    video_caption,
)
from latentvid.data.video import read_frames, video_info

# unit vector of the centroid's motion in (x, y) image coordinates, rows growing downward
EXPECTED_MOTION = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def foreground(frames: np.ndarray, threshold: float = 60.0) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, H, W) bool: pixels far from the background colour."""
    dist = np.linalg.norm(frames.astype(np.float64) - np.asarray(BACKGROUND), axis=-1)
    return dist > threshold


def centroids(mask: np.ndarray) -> np.ndarray:
    """(T, H, W) bool -> (T, 2) centroid (x, y) per frame."""
    ys, xs = np.mgrid[: mask.shape[1], : mask.shape[2]]
    area = mask.sum(axis=(1, 2))
    assert (area > 0).all(), "a frame has no foreground"
    return np.stack([(mask * xs).sum(axis=(1, 2)) / area, (mask * ys).sum(axis=(1, 2)) / area], axis=1)


def assert_moves(frames: np.ndarray, direction: str, size: int) -> None:
    c = centroids(foreground(frames))
    ex, ey = EXPECTED_MOTION[direction]
    along = c @ np.array([ex, ey], dtype=np.float64)
    across = c @ np.array([ey, -ex], dtype=np.float64)
    steps = np.diff(along)
    assert (steps > 0.5).all(), f"{direction}: per-frame steps {steps}"
    assert along[-1] - along[0] >= 0.25 * size, f"{direction}: total travel {along[-1] - along[0]}"
    assert np.ptp(across) < 1.0, f"{direction}: drift across the motion {np.ptp(across)}"


# ------------------------------------------------------------------------------------ drawing


@pytest.mark.parametrize("colour", list(COLOURS))
def test_foreground_has_the_named_colour_on_the_background(colour: str) -> None:
    frames = render_clip(colour, "circle", "left", num_frames=4, size=32, rng=np.random.default_rng(1))
    pixels = frames.reshape(-1, 3)
    values, counts = np.unique(pixels, axis=0, return_counts=True)
    assert {tuple(v) for v in values} == {BACKGROUND, COLOURS[colour]}  # hard edges, pure colours
    fg = pixels[foreground(frames).reshape(-1)]
    assert (fg == np.asarray(COLOURS[colour])).all()
    assert tuple(values[np.argmax(counts)]) == BACKGROUND  # the shape is the minority


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_centroid_moves_in_the_named_direction(shape: str, direction: str) -> None:
    for seed in range(5):
        frames = render_clip("white", shape, direction, num_frames=8, size=32, rng=np.random.default_rng(seed))
        assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
        assert_moves(frames, direction, 32)


@pytest.mark.parametrize(("shape", "ratio", "tol"), [("circle", math.pi / 4, 0.04), ("square", 1.0, 0.02),
                                                     ("triangle", 0.5, 0.05)])
def test_fill_ratio_of_bounding_box_identifies_the_shape(shape: str, ratio: float, tol: float) -> None:
    for seed in range(4):
        mask = foreground(render_image("green", shape, size=64, rng=np.random.default_rng(seed))[None])[0]
        rows, cols = np.nonzero(mask)
        box = (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
        assert mask.sum() / box == pytest.approx(ratio, abs=tol)


def test_shape_mask_matches_closed_form_areas() -> None:
    r = 20.0
    assert shape_mask("circle", 64, 32.0, 32.0, r).sum() == pytest.approx(math.pi * r * r, rel=0.02)
    assert shape_mask("square", 64, 32.0, 32.0, r).sum() == pytest.approx(4 * r * r, rel=0.02)
    tri = shape_mask("triangle", 64, 32.0, 32.0, r)
    assert tri.sum() == pytest.approx(2 * r * r, rel=0.05)
    rows = np.nonzero(tri.any(axis=1))[0]
    assert tri[rows[0]].sum() < tri[rows[-1]].sum()  # apex up, base down


def test_render_is_deterministic_from_the_generator() -> None:
    a = render_clip("red", "triangle", "up", rng=np.random.default_rng(7))
    b = render_clip("red", "triangle", "up", rng=np.random.default_rng(7))
    c = render_clip("red", "triangle", "up", rng=np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(render_image("blue", "square", 32, np.random.default_rng(3)),
                                  render_image("blue", "square", 32, np.random.default_rng(3)))


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_shape_stays_in_frame(direction: str) -> None:
    for seed in range(10):
        for shape in SHAPES:
            mask = foreground(render_clip("yellow", shape, direction, size=32, rng=np.random.default_rng(seed)))
            areas = mask.sum(axis=(1, 2))
            assert areas.min() >= 0.8 * areas.max()  # sub-pixel sampling of small shapes varies ~10 %
            for frame in mask:  # a clipped shape would have a non-square bounding box
                rows, cols = np.nonzero(frame)
                assert abs(np.ptp(rows) - np.ptp(cols)) <= 1
                assert np.ptp(rows) + 1 >= 2 * 32 / 5 - 1


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_extend_to_continues_the_same_clip_at_the_same_step(direction: str) -> None:
    for seed in range(5):
        clip = render_clip("green", "square", direction, num_frames=9, rng=np.random.default_rng(seed))
        long = render_clip("green", "square", direction, num_frames=9, rng=np.random.default_rng(seed), extend_to=40)
        assert long.shape == (40, 32, 32, 3)
        np.testing.assert_array_equal(long[:9], clip)  # the same draws, the same first frames
        centre = [np.argwhere(m).mean(0) for m in foreground(long)[:9]]  # (row, col) per in-frame frame
        step = (centre[-1] - centre[0]) / 8
        area = foreground(long[:1]).sum()
        for t, m in enumerate(foreground(long)):
            if m.sum() == area:  # wholly inside: its centre is where the constant step puts it
                np.testing.assert_allclose(np.argwhere(m).mean(0), centre[0] + t * step, atol=1.0)  # whole pixels
        assert foreground(long[-1:]).sum() == 0  # 40 frames at >= 0.3 x 32 px per 8 frames: it has left


def test_leave_frame_lets_the_shape_leave_from_a_start_inside() -> None:
    left_frame = 0
    for seed in range(40):
        clip = render_clip("blue", "circle", "right", rng=np.random.default_rng(seed), leave_frame=True)
        areas = foreground(clip).sum(axis=(1, 2))
        assert areas[0] >= 0.8 * areas.max()  # it starts wholly inside
        left_frame += areas[-1] < 0.8 * areas[0]
        inside = render_clip("blue", "circle", "right", rng=np.random.default_rng(seed))
        assert foreground(inside).sum(axis=(1, 2)).min() >= 0.8 * areas[0]  # without it, never
    assert 8 <= left_frame <= 32  # a fair share, not all: the start is uniform over the frame


def _travel(frames: np.ndarray) -> float:
    """Centroid displacement (pixels) from the first to the last frame of (T, H, W, 3) frames."""
    masks = foreground(frames)
    return float(np.linalg.norm(np.argwhere(masks[-1]).mean(0) - np.argwhere(masks[0]).mean(0)))


def test_travel_range_sets_the_distance_a_clip_covers() -> None:
    for seed in range(12):
        for lo, hi in [(0.1, 0.1), (0.45, 0.45)]:
            clip = render_clip("red", "square", "down", num_frames=9, rng=np.random.default_rng(seed), travel_range=(lo, hi))
            assert abs(_travel(clip) - lo * 32) <= 1.0  # whole pixels
        default = render_clip("red", "square", "down", num_frames=9, rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(default, render_clip("red", "square", "down", num_frames=9,
                                                           rng=np.random.default_rng(seed), travel_range=TRAVEL_RANGE))
    for bad in [(0.0, 0.5), (0.5, 0.3), (0.2, 1.5), ("a", 0.5), (0.3,)]:
        with pytest.raises(ValueError, match="travel_range"):
            render_clip("red", "square", "down", travel_range=bad)


def test_extend_to_needs_a_longer_clip() -> None:
    with pytest.raises(ValueError, match="extend_to"):
        render_clip("red", "circle", "left", num_frames=9, extend_to=9)


def test_bad_words_raise() -> None:
    with pytest.raises(ValueError, match="purple"):
        render_clip("purple", "circle", "left")
    with pytest.raises(ValueError, match="sideways"):
        video_caption("red", "circle", "sideways")


# ------------------------------------------------------------------------------------ captions


def test_caption_grammar_round_trip() -> None:
    for colour, shape, direction in all_combos():
        caption = video_caption(colour, shape, direction)
        assert caption == f"a {colour} {shape} moving {direction}"
        assert parse_caption(caption) == {"colour": colour, "shape": shape, "direction": direction}
        assert parse_caption(image_caption(colour, shape)) == {"colour": colour, "shape": shape}
    assert video_caption("red", "circle", "left") == "a red circle moving left"


@pytest.mark.parametrize("bad", ["a red circle moving", "a red blob moving left", "the red circle",
                                 "a red circle going left", "a  red circle", "", "a red circle moving left now"])
def test_parse_caption_rejects_bad_input_naming_it(bad: str) -> None:
    with pytest.raises(ValueError, match=repr(bad).replace("[", r"\[")):
        parse_caption(bad)


def test_held_out_combos_leave_every_word_in_training() -> None:
    assert len(set(HELD_OUT)) == len(HELD_OUT) == 6
    train = [c for c in all_combos() if c not in set(HELD_OUT)]
    for i, vocab in enumerate((tuple(COLOURS), SHAPES, DIRECTIONS)):
        assert {c[i] for c in train} == set(vocab)
    prompts = eval_prompts()
    assert prompts[: len(HELD_OUT)] == [video_caption(*c) for c in HELD_OUT]
    assert all(tuple(parse_caption(p).values()) not in set(HELD_OUT) for p in prompts[len(HELD_OUT):])


# ------------------------------------------------------------------------------ data on disk


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


SMALL = dict(seed=3, clips_per_combo=1, num_frames=6, size=24, fps=8, images_per_combo=1, heldout_clips_per_combo=1)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes_dataset(root, **SMALL)
    return root


def test_generated_index_excludes_held_out_and_covers_every_word(small_root: Path) -> None:
    videos = _read_jsonl(small_root / "videos.jsonl")
    combos = {(v["colour"], v["shape"], v["direction"]) for v in videos}
    assert len(videos) == 60 - len(HELD_OUT)
    assert combos.isdisjoint(HELD_OUT)
    assert {c for c, _, _ in combos} == set(COLOURS)
    assert {s for _, s, _ in combos} == set(SHAPES)
    assert {d for _, _, d in combos} == set(DIRECTIONS)
    heldout = _read_jsonl(small_root / "heldout.jsonl")
    assert [(h["colour"], h["shape"], h["direction"]) for h in heldout] == list(HELD_OUT)
    images = _read_jsonl(small_root / "images.jsonl")
    assert {(i["colour"], i["shape"]) for i in images} == {(c, s) for c in COLOURS for s in SHAPES}
    for row in videos + heldout:
        assert set(row) == {"key", "path", "caption", "fps", "num_frames", "colour", "shape", "direction"}
        assert row["caption"] == video_caption(row["colour"], row["shape"], row["direction"])
        assert (small_root / row["path"]).suffix == ".mp4" and not Path(row["path"]).is_absolute()
    for row in images:
        assert row["caption"] == image_caption(row["colour"], row["shape"])
        assert (small_root / row["path"]).is_file()
    lines = (small_root / "eval_prompts.txt").read_text().splitlines()
    assert lines == eval_prompts()
    assert read_marker(small_root)["params"]["seed"] == SMALL["seed"]


def test_generated_mp4s_decode_to_the_captioned_content(small_root: Path) -> None:
    rows = _read_jsonl(small_root / "videos.jsonl")[::7] + _read_jsonl(small_root / "heldout.jsonl")
    for row in rows:
        frames = read_frames(small_root / row["path"])
        assert frames.shape == (SMALL["num_frames"], SMALL["size"], SMALL["size"], 3)
        # yuv420p stores chroma per 2x2 block, so edge pixels blend with the background; classify
        # every pixel to its nearest palette colour: the named colour must hold the foreground
        palette = np.array([BACKGROUND] + list(COLOURS.values()), dtype=np.float64)
        nearest = np.linalg.norm(frames[..., None, :] - palette, axis=-1).argmin(-1)  # (T, H, W)
        votes = np.bincount(nearest[nearest > 0], minlength=len(palette))
        assert votes.argmax() == 1 + list(COLOURS).index(row["colour"]), row["key"]
        assert votes.max() >= 0.8 * votes.sum(), (row["key"], votes)
        assert_moves(frames, row["direction"], SMALL["size"])


def test_generation_is_deterministic_and_skips_a_complete_folder(small_root: Path, tmp_path: Path) -> None:
    other = tmp_path / "again"
    generate_shapes_dataset(other, **SMALL)
    for name in ("videos.jsonl", "images.jsonl", "heldout.jsonl"):
        assert (other / name).read_text() == (small_root / name).read_text()
    key = "green_triangle_down_00"
    np.testing.assert_array_equal(read_frames(other / f"videos/{key}.mp4"),
                                  read_frames(small_root / f"videos/{key}.mp4"))
    different = tmp_path / "seed4"
    generate_shapes_dataset(different, **{**SMALL, "seed": 4})
    assert not np.array_equal(read_frames(different / f"videos/{key}.mp4"),
                              read_frames(small_root / f"videos/{key}.mp4"))

    # complete folder, same parameters: untouched
    stamp = (other / f"videos/{key}.mp4").stat().st_mtime_ns
    generate_shapes_dataset(other, **SMALL)
    assert (other / f"videos/{key}.mp4").stat().st_mtime_ns == stamp
    # other parameters: refused without overwrite
    with pytest.raises(ValueError, match="overwrite"):
        generate_shapes_dataset(other, **{**SMALL, "clips_per_combo": 2})


def test_leave_ratio_renders_the_first_clips_of_each_combination_leaving(small_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "leave"
    generate_shapes_dataset(root, **{**SMALL, "clips_per_combo": 2, "num_frames": 9, "leave_ratio": 0.5})
    assert read_marker(root)["params"]["leave_ratio"] == 0.5
    assert "leave_ratio" not in read_marker(small_root)["params"]  # folders made without it still match
    rows = {r["key"]: r for r in _read_jsonl(root / "videos.jsonl")}
    drops = {k: 0 for k in ("00", "01")}
    for key, row in rows.items():
        areas = foreground(read_frames(root / row["path"])).sum(axis=(1, 2))
        drops[key[-2:]] += areas[-1] < 0.6 * areas[0]
    assert drops["01"] == 0 and drops["00"] >= 10  # only clip 0 of each combination may leave
    again = tmp_path / "plain"
    generate_shapes_dataset(again, **{**SMALL, "clips_per_combo": 2, "num_frames": 9})
    assert (again / "heldout.jsonl").read_text() == (root / "heldout.jsonl").read_text()
    # held out: unchanged. The decoded frames agree up to the encoder, which is not bit-exact between runs
    # (up to 10 levels seen on the background under load); a shape one pixel off differs by 150+ at its edge
    held = read_frames(root / "heldout" / "red_circle_right_00.mp4").astype(np.int64)
    assert np.abs(held - read_frames(again / "heldout" / "red_circle_right_00.mp4")).max() <= 32
    with pytest.raises(ValueError, match="leave_ratio"):
        generate_shapes_dataset(tmp_path / "bad", **{**SMALL, "leave_ratio": 1.5})


def test_travel_range_slows_the_training_clips_only(small_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "slow"
    generate_shapes_dataset(root, **{**SMALL, "num_frames": 9, "travel_range": (0.1, 0.15)})
    assert read_marker(root)["params"]["travel_range"] == [0.1, 0.15]
    assert "travel_range" not in read_marker(small_root)["params"]  # the default is not recorded
    for row in _read_jsonl(root / "videos.jsonl"):
        assert _travel(read_frames(root / row["path"])) <= 0.15 * SMALL["size"] + 1.0
    for row in _read_jsonl(root / "heldout.jsonl"):  # evaluation clips keep the data's speeds
        assert _travel(read_frames(root / row["path"])) >= TRAVEL_RANGE[0] * SMALL["size"] - 1.0
    generate_shapes_dataset(root, **{**SMALL, "num_frames": 9, "travel_range": [0.1, 0.15]})  # same: left alone
    with pytest.raises(ValueError, match="overwrite"):
        generate_shapes_dataset(root, **{**SMALL, "num_frames": 9, "travel_range": (0.1, 0.2)})
    with pytest.raises(ValueError, match="travel_range"):
        generate_shapes_dataset(tmp_path / "bad", **{**SMALL, "travel_range": (0.6, 0.2)})


def test_frame_rates_cycle_over_each_combinations_clips_with_the_motion_per_second_kept(
        small_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "rates"
    size, lo, hi = SMALL["size"], *TRAVEL_RANGE
    generate_shapes_dataset(root, **{**SMALL, "clips_per_combo": 3, "num_frames": 9, "frame_rates": [8, 32]})
    assert read_marker(root)["params"]["frame_rates"] == [8.0, 32.0]
    assert "frame_rates" not in read_marker(small_root)["params"]  # all at fps: not recorded
    rows = _read_jsonl(root / "videos.jsonl")
    for row in rows:
        k = int(row["key"][-2:])
        rate = (8.0, 32.0)[k % 2]  # clip k at frame_rates[k % 2]: 0 and 2 at 8 fps, 1 at 32
        assert row["fps"] == rate and video_info(root / row["path"])["fps"] == pytest.approx(rate)
        travel = _travel(read_frames(root / row["path"]))  # the data's travel per second, sampled 4x as densely
        scale = 8.0 / rate
        assert lo * scale * size - 1.0 <= travel <= min(hi * scale * size, size) + 1.0, row["key"]
    for row in _read_jsonl(root / "heldout.jsonl"):  # evaluation clips stay at the data's rate and speeds
        assert row["fps"] == 8.0 and _travel(read_frames(root / row["path"])) >= lo * size - 1.0
    for bad in ([], [8, 0], ["x"], [8, 2]):  # 2 fps: 0.5 x 8 / 2 = 2 frame sides per clip
        with pytest.raises(ValueError, match="frame_rates"):
            generate_shapes_dataset(tmp_path / "bad", **{**SMALL, "frame_rates": bad})
    assert not (tmp_path / "bad").exists()


def test_incomplete_folder_is_regenerated(tmp_path: Path) -> None:
    root = tmp_path / "half"
    generate_shapes_dataset(root, **SMALL)
    (root / ".complete").unlink()  # as if interrupted before the marker
    (root / "videos.jsonl").write_text("")  # half-written index
    (root / "videos" / "stale.mp4").write_bytes(b"junk")
    generate_shapes_dataset(root, **SMALL)
    assert read_marker(root) is not None
    assert len(_read_jsonl(root / "videos.jsonl")) == 54
    assert not (root / "videos" / "stale.mp4").exists()
    assert not list(root.rglob("*.tmp*"))


def test_prepare_data_tool_generates_shapes(tmp_path: Path, capsys: pytest.CaptureFixture, load_script) -> None:
    tool = load_script("tools/prepare_data.py", "prepare_data")
    out = tmp_path / "tool"
    rc = tool.main(["shapes", "--out", str(out), "--size", "16", "--frames", "4", "--clips-per-combo", "1",
                    "--images-per-combo", "1", "--heldout-clips-per-combo", "1", "--seed", "5"])
    assert rc == 0
    assert "54 training clips" in capsys.readouterr().out
    assert read_marker(out)["params"]["size"] == 16
    assert read_frames(out / "videos" / "red_circle_left_00.mp4").shape == (4, 16, 16, 3)
    with pytest.raises(SystemExit):
        tool.main(["--help"])
