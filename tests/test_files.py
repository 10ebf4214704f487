"""latentvid/files.py: writes land whole or not at all, leave no temporary files behind, and get the mode
any new file gets."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from latentvid.files import atomic_path, write_json_atomic, write_text_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "report.json"
    write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_path(target) as tmp:
            Path(tmp).write_text("{half")
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"a": 1}  # the old file, untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]


def test_temporary_names_are_hidden_beside_the_target_and_keep_the_suffix_on_request(tmp_path: Path) -> None:
    seen = []
    for keep in (False, True):
        with atomic_path(tmp_path / "clip.mp4", keep_suffix=keep) as tmp:
            seen.append(Path(tmp))
            assert not (tmp_path / "clip.mp4").exists() or keep  # only replaced at the end
            Path(tmp).write_bytes(b"x")
    assert all(p.parent == tmp_path and p.name.startswith(".clip.mp4.") for p in seen)
    assert seen[0].suffix == ".tmp" and seen[1].name.endswith(".tmp.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_text_and_json(tmp_path: Path) -> None:
    assert write_text_atomic(tmp_path / "a.txt", "héllo\n").read_text(encoding="utf-8") == "héllo\n"
    path = write_json_atomic(tmp_path / "b.json", {"x": [1, 2]}, indent=None)
    assert path.read_text() == '{"x": [1, 2]}\n'
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "c.json", {"x": float("nan")}, allow_nan=False)
    assert not (tmp_path / "c.json").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_umasks_mode_not_mkstemps_private_one(tmp_path: Path, umask: int) -> None:
    script = textwrap.dedent(f"""
        import os
        os.umask({umask})
        from latentvid.files import write_text_atomic
        write_text_atomic({str(tmp_path / "a.txt")!r}, "x")
        with open({str(tmp_path / "b.txt")!r}, "w") as f:  # what a plain open() gives, for comparison
            f.write("x")
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    mode = (tmp_path / "a.txt").stat().st_mode & 0o777
    assert mode == (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o666 & ~umask
