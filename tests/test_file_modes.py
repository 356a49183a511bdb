"""Atomic writes give the final file the mode a plain open() gives it (0666 less the umask), not mkstemp's
0600: a model folder written by a stage must be readable by the serve container's non-root user, a teammate
on a shared disk or a web server showing the reports. (Every artifact of the stage chain is checked the same
way by tools/rehearse_images.py and tests/test_docker_images.py.)"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from photo_detector.io import atomic_path, temp_sibling_dir, write_json_atomic, write_text_atomic


@pytest.fixture(params=[0o022, 0o027, 0o077])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_atomic_writes_get_the_mode_open_gives(tmp_path: Path, umask: int) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert mode(plain) == 0o666 & ~umask
    written = [write_json_atomic(tmp_path / "model.json", {"a": 1}), write_text_atomic(tmp_path / "r.md", "# r")]
    with atomic_path(tmp_path / "sub" / "best.npy") as tmp:
        np.save(open(tmp, "wb"), np.zeros(3))  # noqa: SIM115 - a writer that opens the temp path itself
    written.append(tmp_path / "sub" / "best.npy")
    assert {p.name: mode(p) for p in written} == {p.name: mode(plain) for p in written}
    assert sorted(p.name for p in tmp_path.rglob(".*")) == [], "no temporary file left behind"


def test_replacing_a_file_keeps_the_content_atomic_and_the_mode_fresh(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "config.yaml"
    target.write_text("old")
    target.chmod(0o600)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old", "a failed write leaves what was there"
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and mode(target) == 0o666 & ~umask


def test_temporary_sibling_folders_get_the_mode_mkdir_gives(tmp_path: Path, umask: int) -> None:
    from photo_detector.data.sample import generate_sample

    folder = temp_sibling_dir(tmp_path / "out")
    assert folder.parent == tmp_path and folder.name.startswith(".out.") and mode(folder) == 0o777 & ~umask
    root = generate_sample(tmp_path / "data", per_class=4, size=16, seed=1).root
    assert mode(root) == 0o777 & ~umask, "the sample dataset's folder is as readable as a mkdir'd one"
