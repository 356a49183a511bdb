"""The packed dataset: what verify-data hands to training, so the train stage never decodes a file again.

Layout of a packed folder: `manifest.json` plus, per packed split, `<split>.images.npy` (N, S, S, 3) uint8
squares (the shared `decode_square` step) and `<split>.labels.npy` (N,) int64. Arrays are memory-mapped on
read. The manifest records the content digest of the source files, so lineage and caching follow content.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from photo_detector.data.layout import SplitFiles
from photo_detector.data.store import ImageStore
from photo_detector.errors import DataError

MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: held-out file lists and the quarantine (evaluate reads them)


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


def save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append .npy to the temporary name
        np.save(f, array, allow_pickle=False)


def is_packed(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | Path) -> dict[str, Any]:
    file = Path(path) / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read packed dataset manifest {file}: {exc}", "re-run verify-data") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{file} has format_version {manifest.get('format_version')!r}, "
                        f"this version reads {FORMAT_VERSION}", "re-run verify-data with this version")
    return manifest


def read_packed(path: str | Path, split: str) -> ImageStore:
    """One split of a packed folder, memory-mapped (no copy until the trainer moves it to its device)."""
    path = Path(path)
    manifest = read_manifest(path)
    if split not in manifest["splits"]:
        raise DataError(f"packed dataset {path} has no '{split}' split (it has {', '.join(manifest['splits'])})",
                        "re-run verify-data on a dataset with that split")
    try:
        images = np.load(path / f"{split}.images.npy", mmap_mode="r", allow_pickle=False)
        labels = np.load(path / f"{split}.labels.npy", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"packed dataset {path} split '{split}' is unreadable: {exc}", "re-run verify-data") from None
    info = manifest["splits"][split]
    if len(images) != info["count"] or len(labels) != info["count"]:
        raise DataError(f"packed dataset {path} split '{split}' holds {len(images)} images, its manifest says "
                        f"{info['count']}", "re-run verify-data")
    source = Path(manifest["source"])
    return ImageStore(images, labels.astype(np.int64), tuple(source / p for p in info["paths"]))
