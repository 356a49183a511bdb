"""An offline, deterministic sample dataset for demos and tests.

`real` images are random crops of the real photographs scikit-learn ships (`china.jpg`, `flower.jpg`),
downscaled with an antialiasing filter and given mild sensor noise. `ai_generated` images start from crops of
the same photos and receive artifacts typical of image generators: a low-resolution render upsampled to the
output size (smoothed texture), the periodic grid left by transposed convolutions, and no sensor noise.
Both classes are PNG files of the same size and mode, so no metadata separates them; only pixels do.
Every image has its own RNG seeded by (seed, split, class, index): the same seed gives the same bytes, and
asking for more images keeps the earlier ones.

CIFAKE-shaped variants, for tests and benchmarks of what real datasets bring: `fmt="jpeg"` with a quality
per class (different qualities are a format shortcut), and `leak`, the share of test/real images that are
near-duplicates (brightened, re-encoded copies) of train/real images, as CIFAR-10's test set has (3.3%).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from photo_detector import CLASS_NAMES, SPLITS
from photo_detector.errors import DataError, OutputExistsError
from photo_detector.io import temp_sibling_dir

SPLIT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
SOURCE_PHOTOS = ("china.jpg", "flower.jpg")


@dataclass(frozen=True)
class SampleResult:
    root: Path
    counts: dict[str, dict[str, int]]
    seconds: float


@cache
def _source_photos() -> tuple[Image.Image, ...]:
    try:
        from sklearn.datasets import load_sample_image
    except ImportError:  # pragma: no cover - depends on the installed extra
        raise DataError("the sample dataset needs scikit-learn's bundled photographs",
                        "pip install 'photo-detector[train]' (or scikit-learn)") from None
    return tuple(Image.fromarray(load_sample_image(name)) for name in SOURCE_PHOTOS)


def split_counts(per_class: int) -> dict[str, int]:
    """Images per class in each split: 70/15/15, at least one each."""
    if per_class < 3:
        raise DataError(f"--per-class {per_class} is too small", "use at least 3 (one image per split)")
    val = max(1, round(per_class * SPLIT_FRACTIONS["val"]))
    test = max(1, round(per_class * SPLIT_FRACTIONS["test"]))
    return {"train": per_class - val - test, "val": val, "test": test}


TILE = 128  # source photos are cut into TILE x TILE tiles; each tile belongs to one split
MIN_TILE_STD = 20.0  # grey-level standard deviation below which a tile is too flat to use


@cache
def _tiles(split: str) -> tuple[tuple[int, int, int], ...]:
    """(photo, left, top) of the tiles whose content only `split` uses: splits never share image content,
    so verify-data's leakage check holds on the sample data as it must on real data. Flat tiles (clipped
    sky) are skipped: their crops would be near-identical whatever the split or class."""
    out = []
    k = 0
    for photo_idx, photo in enumerate(_source_photos()):
        w, h = photo.size
        grey = np.asarray(photo.convert("L"), dtype=np.float32)
        for top in range(0, h - TILE + 1, TILE):
            for left in range(0, w - TILE + 1, TILE):
                if grey[top:top + TILE, left:left + TILE].std() < MIN_TILE_STD:
                    continue
                owner = "test" if k % 7 == 3 else "val" if k % 7 == 5 else "train"
                if owner == split:
                    out.append((photo_idx, left, top))
                k += 1
    return tuple(out)


def _random_crop(rng: np.random.Generator, size: int, split: str) -> Image.Image:
    tiles = _tiles(split)
    photo_idx, tile_left, tile_top = tiles[int(rng.integers(len(tiles)))]
    side = int(rng.uniform(0.5, 1.0) * TILE)
    left = tile_left + int(rng.integers(0, TILE - side + 1))
    top = tile_top + int(rng.integers(0, TILE - side + 1))
    crop = _source_photos()[photo_idx].crop((left, top, left + side, top + side))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop.resize((size, size), Image.Resampling.LANCZOS)


def make_real(rng: np.random.Generator, size: int, split: str = "train") -> np.ndarray:
    img = np.asarray(_random_crop(rng, size, split), dtype=np.float32)
    img = img * rng.uniform(0.85, 1.15)  # exposure
    img += rng.normal(0.0, rng.uniform(1.5, 4.0), img.shape)  # sensor noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_ai(rng: np.random.Generator, size: int, split: str = "train") -> np.ndarray:
    base = _random_crop(rng, size, split)
    factor = int(rng.choice([2, 3, 4]))
    low = base.resize((max(4, size // factor),) * 2, Image.Resampling.BOX)
    method = [Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.NEAREST][int(rng.integers(3))]
    up = low.resize((size, size), method)
    if rng.random() < 0.5:
        up = up.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.4, 1.0))))
    img = np.asarray(up, dtype=np.float32) * rng.uniform(0.85, 1.15)
    if rng.random() < 0.95:  # transposed-convolution checkerboard: +-1 cells of period/2 pixels
        half = int(rng.choice([1, 2, 4]))
        yy, xx = np.mgrid[0:size, 0:size] + rng.integers(0, 2 * half, 2).reshape(2, 1, 1)
        grid = ((xx // half + yy // half) % 2) * 2.0 - 1.0
        img += rng.uniform(3.0, 6.0) * grid[..., None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _save(pixels: np.ndarray, path: Path, quality: int | None) -> None:
    if quality is None:
        Image.fromarray(pixels).save(path, optimize=False, compress_level=6)
    else:
        Image.fromarray(pixels).save(path, format="JPEG", quality=quality)


def _near_copy(source: Path, path: Path, quality: int | None) -> None:
    """A near duplicate: the same picture, 3 grey levels brighter and re-encoded (never identical pixels)."""
    pixels = np.asarray(Image.open(source).convert("RGB"), dtype=np.int16) + 3
    _save(np.clip(pixels, 0, 255).astype(np.uint8), path, max(1, quality - 5) if quality else None)


def generate_sample(out: str | Path, *, per_class: int = 800, size: int = 72, seed: int = 42,
                    force: bool = False, fmt: str = "png", quality: tuple[int, int] = (95, 95),
                    leak: float = 0.0) -> SampleResult:
    """Write `out/{train,val,test}/{real,ai_generated}/img_NNNNN.{png|jpg}`; built in a temp folder, then
    renamed. `quality` is the JPEG quality of (real, ai_generated) with fmt="jpeg"; `leak` the share of
    test/real images replaced by near-duplicates of train/real images (at least one when > 0)."""
    out = Path(out)
    if size < 16:
        raise DataError(f"--size {size} is too small", "use at least 16 pixels")
    if fmt not in ("png", "jpeg"):
        raise DataError(f"--format {fmt} is not png or jpeg", "use --format png or --format jpeg")
    if not 0.0 <= leak < 1.0:
        raise DataError(f"--leak {leak} is not a share in [0, 1)", "e.g. --leak 0.033 (CIFAR-10's test set)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise OutputExistsError(f"{out} already exists and is not empty", "pass --force to replace it")
    counts = split_counts(per_class)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = temp_sibling_dir(out)  # mkdir's mode, not mkdtemp's 0700: the data must be readable
    try:
        makers = (make_real, make_ai)
        suffix = ".png" if fmt == "png" else ".jpg"
        leaked = max(1, round(leak * counts["test"])) if leak > 0 else 0
        for s_idx, split in enumerate(SPLITS):
            for label, name in enumerate(CLASS_NAMES):
                folder = tmp / split / name
                folder.mkdir(parents=True)
                q = None if fmt == "png" else quality[label]
                for i in range(counts[split]):
                    path = folder / f"img_{i:05d}{suffix}"
                    if split == "test" and label == 0 and i < leaked:
                        _near_copy(tmp / "train" / name / f"img_{i * 7 % counts['train']:05d}{suffix}", path, q)
                        continue
                    rng = np.random.default_rng([seed, s_idx, label, i])
                    _save(makers[label](rng, size, split), path, q)
        if out.exists():  # --force: swap in the new tree first, then drop the old one
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return SampleResult(out, {s: dict.fromkeys(CLASS_NAMES, counts[s]) for s in SPLITS},
                        time.perf_counter() - start)
