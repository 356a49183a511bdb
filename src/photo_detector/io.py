"""Atomic file writes and output-folder guards, so nothing the user had is lost or half-written."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from photo_detector.errors import OutputExistsError


def usable_cores() -> int:
    """Cores this process may run on: the affinity mask (a cpuset, `taskset`), which os.cpu_count()
    ignores, so a process pinned to 2 of 16 cores does not start 16 threads that fight over 2."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


def _create_exclusive(parent: Path, prefix: str, suffix: str, make: Callable[[Path], Any]) -> Path:
    """A fresh, unguessable name in `parent`, created by `make` (which fails if the name exists)."""
    for _ in range(100):
        candidate = parent / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            make(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free temporary name {prefix}*{suffix} in {parent}")


def temp_sibling_dir(path: str | os.PathLike[str]) -> Path:
    """A new empty folder beside `path`, to fill and rename onto it. Unlike `tempfile.mkdtemp` (0700) it has
    the mode `mkdir` gives (0777 less the umask), so what lands at `path` is readable where a plain folder is."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _create_exclusive(path.parent, f".{path.name}.", "", lambda p: p.mkdir(0o777))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success it replaces `path` in one rename.

    The temporary file is created with the mode a plain `open()` gives (0666 less the umask), not
    `tempfile.mkstemp`'s 0600, which the rename would keep: a model folder written this way must be readable
    by the serve container's non-root user, a teammate on a shared disk or a web server showing the reports."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_exclusive(path.parent, f".{path.name}.", ".tmp",
                                 lambda p: os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike[str], writer: Callable[[Path], Any]) -> Path:
    """Call `writer(tmp_path)` and move the result onto `path` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    return write_atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def prepare_output_dir(path: str | os.PathLike[str], *, force: bool = False, resume: bool = False) -> Path:
    """Create `path`, refusing a non-empty folder unless the caller opted in to reuse it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"output path {path} exists and is not a folder", "choose another --out")
    if path.is_dir() and any(path.iterdir()) and not (force or resume):
        raise OutputExistsError(
            f"output folder {path} is not empty",
            "pass --resume to continue its run, --force to overwrite it, or choose another --out",
        )
    path.mkdir(parents=True, exist_ok=True)
    return path
