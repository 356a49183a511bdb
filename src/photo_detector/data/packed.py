"""The packed dataset: what verify-data hands to training, so the train stage never decodes a file again.

Layout of a packed folder (format 4): `manifest.json` plus `shards/<split>-NNNNN.u8`, fixed-size files of
decoded squares (the shared `decode_square` step), row after row: C-order (count, S, S, 3) uint8 with no
header, and per packed split `index/<split>-labels.u8` (one uint8 label a row) and `index/<split>-paths.json`
(the source paths, in row order). The manifest lists, per packed split, every shard's sample count, byte size
and SHA-256, and the content digest of the source files, so lineage and caching follow content. Per-row lists
stay out of the manifest because every training process parses it: at a million photos they were ~40 MB of
JSON and ~100 MiB of Python objects in each; the labels file is 1 MB and the paths are read only by those
who name files (evaluate, reports). Readers take rows by index with positional reads (never a memory map:
mapped pages count in the reader's resident memory), so a split of any size is read without holding it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from photo_detector.data.layout import SplitFiles
from photo_detector.errors import DataError

MANIFEST = "manifest.json"
SHARD_DIR = "shards"
INDEX_DIR = "index"
# 4: per-row labels and paths in index/ files; 3: sharded squares with the lists in the manifest; 2: one
# memory-mapped .npy per split
FORMAT_VERSION = 4
OLDER = {2: "an unsharded packed store", 3: "per-row lists inside the manifest"}
OPEN_FILES = 64  # shard files a reader keeps open (opening one on Cloud Storage FUSE is a metadata call)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def combine_digest(entries: list[tuple[str, str]]) -> str:
    """sha256 over sorted (relative path, file sha256) pairs: renaming, adding or editing a file changes it."""
    h = hashlib.sha256()
    for rel, digest in sorted(entries):
        h.update(f"{rel}\0{digest}\n".encode())
    return "sha256:" + h.hexdigest()


def dataset_digest(root: Path, splits: dict[str, SplitFiles]) -> str:
    return combine_digest([(p.relative_to(root).as_posix(), file_sha256(p))
                           for files in splits.values() for p in files.paths])


def is_packed(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | Path) -> dict[str, Any]:
    file = Path(path) / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read packed dataset manifest {file}: {exc}", "re-run verify-data") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        older = OLDER.get(version) if isinstance(version, int) else None
        raise DataError(f"{file} has format_version {version!r}, this version reads {FORMAT_VERSION}"
                        + (f" (the folder holds an older packed format: {older})" if older else ""),
                        "re-run verify-data with this version on the source images (the pipeline does so when "
                        "its cache is off or the verify-data image changed)")
    return manifest


def labels_file(split: str) -> str:
    return f"{INDEX_DIR}/{split}-labels.u8"


def paths_file(split: str) -> str:
    return f"{INDEX_DIR}/{split}-paths.json"


@dataclass(frozen=True)
class ShardInfo:
    file: str    # relative to the packed folder
    count: int
    bytes: int
    sha256: str
    start: int   # global index of its first row within the split


class ArraySplit:
    """A split held in memory (image folders decoded by `load_store`; tests): the same reading interface as
    `PackedSplit`, one shard."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, np.asarray(labels, np.int64)
        self.size = int(images.shape[1])

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def counts(self) -> list[int]:
        return [len(self)]

    @property
    def nbytes(self) -> int:
        return int(self.images.nbytes)

    def read(self, indices: np.ndarray) -> np.ndarray:
        return self.images[np.asarray(indices, np.int64)]

    def read_all(self) -> np.ndarray:
        return self.images


class PackedSplit:
    """One split of a packed folder, on disk: rows by global index, read with positional reads into one
    array (thread-safe; reads release the GIL, so loader threads overlap them)."""

    def __init__(self, root: Path, split: str, size: int, labels: np.ndarray, shards: list[ShardInfo]) -> None:
        self.root, self.split, self.size, self.labels, self.shards = root, split, size, labels, shards
        self.row_bytes = size * size * 3
        self._starts = np.array([s.start for s in shards], np.int64)
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def counts(self) -> list[int]:
        return [s.count for s in self.shards]

    @property
    def nbytes(self) -> int:
        return len(self) * self.row_bytes

    @functools.cached_property
    def paths(self) -> tuple[str, ...]:
        """Source paths (relative to the manifest's `source`) in row order; read on first use only."""
        file = self.root / paths_file(self.split)
        try:
            paths = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"packed dataset {self.root}: cannot read {file}: {exc}", "re-run verify-data") from None
        if not isinstance(paths, list) or len(paths) != len(self):
            raise DataError(f"packed dataset {self.root}: {file} does not list one path per row ({len(self)})",
                            "re-run verify-data")
        return tuple(paths)

    def shard_of(self, idx: np.ndarray) -> np.ndarray:
        """The shard holding each global row index."""
        return np.searchsorted(self._starts, idx, side="right") - 1

    def _fd(self, k: int) -> int:
        with self._lock:
            fd = self._fds.get(k)
            if fd is not None:
                self._fds.move_to_end(k)
                return fd
            path = self.root / self.shards[k].file
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                raise DataError(f"packed dataset {self.root}: cannot open shard {path}: {exc}",
                                "re-run verify-data") from None
            self._fds[k] = fd
            while len(self._fds) > OPEN_FILES:
                os.close(self._fds.popitem(last=False)[1])
            return fd

    def release(self, k: int) -> None:
        """Close shard `k`'s file if it is open (a staged copy about to be deleted frees its disk only then)."""
        with self._lock:
            fd = self._fds.pop(k, None)
            if fd is not None:
                os.close(fd)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __del__(self) -> None:
        self.close()

    def read(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        """Rows `indices` (any order) as (n, S, S, 3) uint8. Per shard, in file order, runs of consecutive
        rows are one `preadv` straight into the output: sequential reads, no intermediate copy."""
        idx = np.asarray(indices, np.int64)
        out = np.empty((len(idx), self.size, self.size, 3), np.uint8)
        if not len(idx):
            return out
        if idx.min() < 0 or idx.max() >= len(self):
            raise IndexError(f"row index out of range for {len(self)} rows")
        order = np.argsort(idx, kind="stable")
        shard_of = self.shard_of(idx[order])
        views = out.reshape(len(idx), self.row_bytes)
        i = 0
        while i < len(order):  # one run: consecutive rows of one shard
            k, first = int(shard_of[i]), int(idx[order[i]])
            j = i + 1
            while j < len(order) and shard_of[j] == k and idx[order[j]] == first + (j - i) and j - i < 256:
                j += 1
            buffers = [memoryview(views[int(o)]) for o in order[i:j]]
            offset = (first - self.shards[k].start) * self.row_bytes
            got = os.preadv(self._fd(k), buffers, offset)
            if got != self.row_bytes * (j - i):
                raise DataError(f"packed dataset {self.root}: shard {self.shards[k].file} is shorter than its "
                                "manifest says", "re-run verify-data")
            i = j
        return out

    def read_shard(self, k: int) -> np.ndarray:
        """Shard `k` whole, checked against its manifest checksum (the resident path loads shard by shard)."""
        s = self.shards[k]
        out = np.empty((s.count, self.size, self.size, 3), np.uint8)
        with open(self.root / s.file, "rb") as f:
            got = f.readinto(memoryview(out.reshape(-1)))
        if got != s.bytes or hashlib.sha256(out.reshape(-1)).hexdigest() != s.sha256:
            raise DataError(f"packed dataset {self.root}: shard {s.file} does not match its manifest (size or "
                            "SHA-256)", "re-run verify-data; the folder was changed or truncated")
        return out

    def read_all(self) -> np.ndarray:
        """The whole split in memory, checksums checked (small data only: tests, tools)."""
        if not self.shards:
            return np.empty((0, self.size, self.size, 3), np.uint8)
        return np.concatenate([self.read_shard(k) for k in range(len(self.shards))])


def read_packed(path: str | Path, split: str, manifest: dict[str, Any] | None = None) -> PackedSplit:
    """One split of a packed folder; checks that every shard is there with the size its manifest says."""
    path = Path(path)
    manifest = manifest or read_manifest(path)
    if split not in manifest["splits"]:
        raise DataError(f"packed dataset {path} has no '{split}' split (it has {', '.join(manifest['splits'])})",
                        "re-run verify-data on a dataset with that split")
    info, size = manifest["splits"][split], int(manifest["store_size"])
    shards, start = [], 0
    for s in info["shards"]:
        shards.append(ShardInfo(s["file"], int(s["count"]), int(s["bytes"]), s["sha256"], start))
        start += int(s["count"])
        file = path / s["file"]
        actual = file.stat().st_size if file.is_file() else None
        if actual != int(s["bytes"]) or int(s["bytes"]) != int(s["count"]) * size * size * 3:
            raise DataError(f"packed dataset {path} split '{split}': shard {file} is "
                            + ("missing" if actual is None else f"{actual} bytes, its manifest says {s['bytes']}"),
                            "re-run verify-data")
    try:
        labels = np.fromfile(path / labels_file(split), np.uint8).astype(np.int64)
    except OSError as exc:
        raise DataError(f"packed dataset {path} split '{split}': cannot read its labels: {exc}",
                        "re-run verify-data") from None
    if start != info["count"] or len(labels) != start:
        raise DataError(f"packed dataset {path} split '{split}' holds {start} rows in its shards and {len(labels)} "
                        f"labels, its manifest says {info['count']}", "re-run verify-data")
    return PackedSplit(path, split, size, labels, shards)
