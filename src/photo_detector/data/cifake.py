"""CIFAKE (Bird & Lotfi, 2023: 60k real CIFAR-10 images + 60k Stable Diffusion look-alikes, 32x32) laid out as
`train|val|test/{real,ai_generated}`.

The published layout is `train|test/{REAL,FAKE}`. Our val split is carved out of train, deterministically:
a file goes to val when the first 8 hex digits of the SHA-1 of its name, as a fraction of 16^8, fall below
`val_fraction` (default 0.1). Names, not contents, decide, so the split is stable across re-downloads.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from photo_detector.data.layout import IMAGE_EXTENSIONS
from photo_detector.errors import DataError, OutputExistsError

HF_DATASET = "dragonintelligence/CIFAKE-image-dataset"
KAGGLE_DATASET = "birdy654/cifake-real-and-ai-generated-synthetic-images"
CLASS_MAP = {"real": "real", "fake": "ai_generated"}


@dataclass
class CifakeResult:
    root: Path
    source: str
    counts: dict[str, dict[str, int]]


def val_bucket(name: str) -> float:
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 16**8


def _find(folder: Path, name: str) -> Path | None:
    return next((p for p in folder.iterdir() if p.is_dir() and p.name.lower() == name), None) \
        if folder.is_dir() else None


def _download() -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=HF_DATASET, repo_type="dataset"))
    except Exception as exc:  # offline, auth, not found: all end the same way for the user
        raise DataError(f"cannot download CIFAKE from Hugging Face ({HF_DATASET}): {type(exc).__name__}",
                        f"download it by hand (Hugging Face {HF_DATASET} or Kaggle {KAGGLE_DATASET}) and pass "
                        "--source DIR (the folder with train/ and test/)") from None


def _locate(source: Path) -> Path:
    """The folder holding train/ and test/ (downloads often nest it one or two levels down)."""
    for candidate in (source, *sorted(p for p in source.rglob("*") if p.is_dir())):
        if _find(candidate, "train") and _find(candidate, "test"):
            return candidate
    raise DataError(f"{source} has no train/ and test/ folders with REAL and FAKE inside",
                    "pass the CIFAKE folder as published (train|test/{REAL,FAKE})")


def prepare_cifake(out: str | Path, *, source: str | Path | None = None, val_fraction: float = 0.1,
                   force: bool = False) -> CifakeResult:
    out = Path(out)
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction {val_fraction} must be in [0, 1)", "e.g. 0.1")
    if out.exists() and any(out.iterdir()) and not force:
        raise OutputExistsError(f"{out} already exists and is not empty", "pass --force to replace it")
    src = Path(source) if source is not None else _download()
    if not src.is_dir():
        raise DataError(f"CIFAKE source {src} is not a folder", "pass the downloaded CIFAKE folder")
    base = _locate(src)
    counts = {s: {"real": 0, "ai_generated": 0} for s in ("train", "val", "test")}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for split in ("train", "test"):
            split_dir = _find(base, split)
            for cls, label in CLASS_MAP.items():
                class_dir = _find(split_dir, cls) if split_dir else None
                if class_dir is None:
                    raise DataError(f"{base / split} has no {cls.upper()} folder",
                                    "pass the CIFAKE folder as published")
                for f in sorted(class_dir.iterdir()):
                    if f.suffix.lower() not in IMAGE_EXTENSIONS:
                        continue
                    target_split = "val" if split == "train" and val_bucket(f.name) < val_fraction else split
                    dest = tmp / target_split / label / f.name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        os.link(f, dest)  # same file system: no copy
                    except OSError:
                        shutil.copy2(f, dest)
                    counts[target_split][label] += 1
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return CifakeResult(out, str(src), counts)
