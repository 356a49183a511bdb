"""CIFAKE (Bird & Lotfi, 2023: 60k real CIFAR-10 images + 60k Stable Diffusion look-alikes, 32x32) laid out as
`train|val|test/{real,ai_generated}`, from Kaggle or from one of its Hugging Face copies.

The copies come in three forms, each handled: image folders `train|test/{REAL,FAKE}` (the Kaggle release),
possibly inside zip archives; class folders `{REAL,FAKE}` with no split (test is then carved out too); and
Parquet shards with an image and a label column (the `datasets` library's export), named by split.

Carved splits are deterministic: a file goes to val (or test) when the first 8 hex digits of the SHA-1 of its
name, as a fraction of 16^8, fall below the fraction asked for. Names, not contents, decide, so the split is
stable across re-downloads.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from photo_detector.data.layout import IMAGE_EXTENSIONS
from photo_detector.errors import DataError, OutputExistsError
from photo_detector.io import temp_sibling_dir

KAGGLE_DATASET = "birdy654/cifake-real-and-ai-generated-synthetic-images"
# Hugging Face copies of CIFAKE, and what each holds (README "CIFAKE" lists them too).
HF_DATASETS = {
    "dragonintelligence/CIFAKE-image-dataset": "the Kaggle release as image folders train|test/{REAL,FAKE}",
    "yanbax/CIFAKE_autotrain_compatible": "the Kaggle train split only (100k), {REAL,FAKE} folders in train.zip; "
                                          "val and test are carved out of it",
    "nnheui/cifake10": "Parquet shards (image, label) per split",
}
HF_DATASET = next(iter(HF_DATASETS))  # the default: closest to the Kaggle release
CLASS_MAP = {"real": "real", "fake": "ai_generated"}
TEST_FRACTION = 1 / 6  # CIFAKE's own test share (20k of 120k), used when a copy has no test split


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


def download(repo_id: str) -> Path:
    """A Hugging Face dataset snapshot (cached by huggingface_hub), or a clear error with what to do."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=repo_id, repo_type="dataset"))
    except Exception as exc:  # offline, auth, not found: all end the same way for the user
        known = "; ".join(HF_DATASETS)
        raise DataError(f"cannot download CIFAKE from Hugging Face ({repo_id}): {type(exc).__name__}",
                        f"check the id (known copies: {known}), or download it by hand (Kaggle {KAGGLE_DATASET}) "
                        "and pass --source DIR") from None


def _unzip(source: Path, into: Path) -> Path:
    """A snapshot with zip archives, extracted next to its other files (the snapshot itself is not touched)."""
    archives = sorted(source.rglob("*.zip"))
    if not archives:
        return source
    for archive in archives:
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(into / archive.stem)
        except zipfile.BadZipFile:
            raise DataError(f"{archive} is not a readable zip archive", "download it again") from None
    return into


def _split_folders(source: Path) -> Iterator[tuple[str | None, str, Path]]:
    """(split or None, class, folder) for every class folder of a published or an unsplit layout."""
    for candidate in (source, *sorted(p for p in source.rglob("*") if p.is_dir())):
        if _find(candidate, "train") and _find(candidate, "test"):
            for split in ("train", "test"):
                for cls in CLASS_MAP:
                    folder = _find(_find(candidate, split), cls)
                    if folder is None:
                        raise DataError(f"{candidate / split} has no {cls.upper()} folder",
                                        "pass the CIFAKE folder as published (train|test/{REAL,FAKE})")
                    yield split, cls, folder
            return
    for candidate in (source, *sorted(p for p in source.rglob("*") if p.is_dir())):
        if all(_find(candidate, cls) for cls in CLASS_MAP):
            for cls in CLASS_MAP:
                yield None, cls, _find(candidate, cls)
            return


def _parquet_images(source: Path, out: Path) -> Path | None:
    """Parquet shards (the `datasets` export: an image column with bytes, a class-label column) written out
    as files under `out/<split>/<CLASS>/`; None when the snapshot holds no Parquet."""
    shards = sorted(source.rglob("*.parquet"))
    if not shards:
        return None
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{source} holds Parquet shards, which need pyarrow",
                        "pip install pyarrow (or pass a copy with image folders)") from None
    import json

    from photo_detector.preprocess import sniff_format

    for shard in shards:
        split = "test" if "test" in shard.name.lower() else "train"
        table = pq.read_table(shard)
        meta = json.loads((table.schema.metadata or {}).get(b"huggingface", b"{}"))
        label_feature = meta.get("info", {}).get("features", {}).get("label", {})
        names = [str(n).lower() for n in label_feature.get("names", [])]
        if "image" not in table.column_names or "label" not in table.column_names or \
                set(names) != set(CLASS_MAP):
            raise DataError(f"{shard} is not CIFAKE as the datasets library writes it",
                            "expected columns image and label with class names FAKE and REAL")
        for k, (image, label) in enumerate(zip(table.column("image").to_pylist(),
                                               table.column("label").to_pylist(), strict=True)):
            data = image["bytes"]
            ext = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}.get(sniff_format(data[:16]) or "", ".img")
            name = Path(image.get("path") or f"{shard.stem}-{k:06d}").stem + ext
            dest = out / split / names[label].upper() / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
    return out


def prepare_cifake(out: str | Path, *, source: str | Path | None = None, hf_id: str | None = None,
                   val_fraction: float = 0.1, force: bool = False) -> CifakeResult:
    """Lay CIFAKE out under `out`: from `source` (a downloaded folder), else the Hugging Face copy `hf_id`
    (default: the first of HF_DATASETS). Built in a temporary sibling, then renamed into place."""
    out = Path(out)
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction {val_fraction} must be in [0, 1)", "e.g. 0.1")
    if out.exists() and any(out.iterdir()) and not force:
        raise OutputExistsError(f"{out} already exists and is not empty", "pass --force to replace it")
    src = Path(source) if source is not None else download(hf_id or HF_DATASET)
    if not src.is_dir():
        raise DataError(f"CIFAKE source {src} is not a folder", "pass the downloaded CIFAKE folder")
    counts = {s: {"real": 0, "ai_generated": 0} for s in ("train", "val", "test")}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling_dir(out)  # mkdir's mode, not mkdtemp's 0700: the data must be readable
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.unpacked.", dir=out.parent))
    try:
        base = _parquet_images(src, work) or _unzip(src, work)
        folders = list(_split_folders(base))
        if not folders:
            raise DataError(f"{src} has no train|test/{{REAL,FAKE}} or {{REAL,FAKE}} folders, nor Parquet shards",
                            "pass the CIFAKE folder as published (train|test/{REAL,FAKE})")
        for split, cls, folder in folders:
            label = CLASS_MAP[cls]
            for f in sorted(folder.iterdir()):
                if f.suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                bucket = val_bucket(f.name)
                if split is None:  # no published split: carve test first, then val, by name
                    target = "test" if bucket < TEST_FRACTION else \
                        "val" if bucket < TEST_FRACTION + val_fraction * (1 - TEST_FRACTION) else "train"
                else:
                    target = "val" if split == "train" and bucket < val_fraction else split
                dest = tmp / target / label / f.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(f, dest)  # same file system: no copy
                except OSError:
                    shutil.copy2(f, dest)
                counts[target][label] += 1
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return CifakeResult(out, str(src), counts)
