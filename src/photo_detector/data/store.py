"""Decode a split once into a uint8 array store, the form training reads every epoch.

Why: decoding and resizing files every epoch (a PIL DataLoader) dominates CPU time for small images.
Decoding once into (N, S, S, 3) uint8 lets augmentation run batched on the training device.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from photo_detector.data.layout import SplitFiles
from photo_detector.errors import DataError
from photo_detector.io import usable_cores
from photo_detector.preprocess import decode_square
from photo_detector.progress import progress

log = logging.getLogger(__name__)


@dataclass
class ImageStore:
    """Decoded images (N, S, S, 3) uint8 with labels (N,) int64; HWC so torch sees channels_last NCHW."""

    images: np.ndarray
    labels: np.ndarray
    paths: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def size(self) -> int:
        return int(self.images.shape[1])


def store_size_for(paths: Iterable[Path], resize_size: int, *, skip_unreadable: bool = False) -> int:
    """min(resize_size, largest shorter side): never store more pixels than the data or the model has.

    Header reads only. `skip_unreadable` is for verify-data, whose full decode reports such files itself.
    """
    largest = 0
    for path in paths:
        try:
            with Image.open(path) as img:
                largest = max(largest, min(img.size))
        except Exception as exc:  # Pillow raises many types on broken files
            if skip_unreadable:
                continue
            raise DataError(f"cannot read image {path}: {exc}", "remove or replace the file") from None
        if largest >= resize_size:
            return resize_size
    return min(largest, resize_size) if largest else resize_size


def worker_count(num_workers: int) -> int:
    """A configured worker count; 0 means one per core."""
    return num_workers if num_workers > 0 else usable_cores()


def load_store(files: SplitFiles, size: int, num_workers: int = 0) -> ImageStore:
    """Decode every file of a split into one array, in parallel threads (Pillow releases the GIL)."""
    images = np.empty((len(files), size, size, 3), dtype=np.uint8)

    def decode(i: int) -> None:
        path = files.paths[i]
        try:
            images[i] = decode_square(path, size)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot decode image {path}: {exc}", "remove or replace the file") from None

    with ThreadPoolExecutor(worker_count(num_workers)) as pool, \
            progress(total=len(files), desc=f"decode {files.split}", unit="img") as bar:
        for _ in pool.map(decode, range(len(files))):
            bar.update(1)
    log.info("decoded %d %s images into a %dx%d store (%.1f MB)", len(files), files.split, size, size,
             images.nbytes / 1e6)
    return ImageStore(images, np.asarray(files.labels, dtype=np.int64), files.paths)
