"""What training reads and in what order: splits (packed shards on disk, or image folders decoded in memory),
the epoch's global sample order, and a background prefetcher that keeps a bounded number of batches ready.

The rules that keep results independent of the machine:
- The order of epoch e is a permutation drawn from (seed, e) alone: shards shuffled, then samples shuffled
  within windows of `WINDOW_SHARDS` consecutive shards. Every process computes the same order, whatever the
  number of processes, and a resumed run recomputes it instead of storing it.
- Global batch b is positions [b*B, (b+1)*B) of that order; each process reads only its rows of each batch
  (parallel.Shard.rows), so N processes read the data once between them.
- Reading is I/O only (positional reads of uint8 rows); nothing random happens in loader threads, so the
  prefetch depth and thread count change speed, never results.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from photo_detector.config import Config
from photo_detector.data.layout import discover_split
from photo_detector.data.packed import ArraySplit, dataset_digest, is_packed, read_manifest, read_packed
from photo_detector.data.store import load_store, store_size_for
from photo_detector.errors import DataError

log = logging.getLogger(__name__)

# Shards mixed by the in-window shuffle: 16 x 128 MiB = 2 GiB of data, while only batches are in memory.
WINDOW_SHARDS = 16
PREFETCH_BATCHES = 4  # batches read ahead of the one training; memory is this many batches, at any data size
LOADER_THREADS = 4    # positional reads release the GIL; on Cloud Storage FUSE several reads in flight hide latency


class Split(Protocol):
    labels: np.ndarray
    size: int

    def __len__(self) -> int: ...
    @property
    def counts(self) -> list[int]: ...
    @property
    def nbytes(self) -> int: ...
    def read(self, indices: np.ndarray) -> np.ndarray: ...
    def read_all(self) -> np.ndarray: ...


def epoch_order(counts: Sequence[int], seed: int, epoch: int, window: int = WINDOW_SHARDS) -> np.ndarray:
    """The global sample order of `epoch`: a permutation of all rows from (seed, epoch) only. Shards (given
    by their row counts) are shuffled, grouped `window` at a time, and rows shuffled within each group, so a
    reader touches a window of shards at a time (sequential-friendly storage) while every row still lands
    anywhere in the window. One shard (data in memory) gives a plain permutation."""
    rng = np.random.Generator(np.random.PCG64([seed & 0xFFFFFFFF, epoch, 0x5EED]))
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    shard_order = rng.permutation(len(counts))
    parts = []
    for g in range(0, len(shard_order), window):
        rows = np.concatenate([np.arange(starts[k], starts[k + 1]) for k in shard_order[g:g + window]])
        parts.append(rng.permutation(rows))
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class Prefetcher:
    """Reads `batches` (index arrays) with `read` in background threads, `depth` batches ahead, and yields
    them in order. Threads, not processes: reads are I/O that releases the GIL, and threads die with the
    process by construction. `close()` (or leaving the iteration) cancels what was not started."""

    def __init__(self, read: Callable[[np.ndarray], Any], batches: Sequence[np.ndarray], *,
                 depth: int = PREFETCH_BATCHES, threads: int = LOADER_THREADS) -> None:
        self.read, self.batches, self.depth = read, batches, max(1, depth)
        self.pool = ThreadPoolExecutor(max(1, min(threads, self.depth)), thread_name_prefix="photo-detector-loader")
        self.pending: deque[Future[Any]] = deque()
        self.next = 0

    def _fill(self) -> None:
        while len(self.pending) < self.depth and self.next < len(self.batches):
            self.pending.append(self.pool.submit(self.read, self.batches[self.next]))
            self.next += 1

    def __iter__(self) -> Iterator[Any]:
        try:
            self._fill()
            while self.pending:
                batch = self.pending.popleft().result()
                self._fill()
                yield batch
        finally:
            self.close()

    def close(self) -> None:
        for f in self.pending:
            f.cancel()
        self.pending.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)


def open_split(data_dir: Path, split: str, cfg: Config, manifest: dict[str, Any] | None = None,
               size: int | None = None) -> Split:
    """A split to read: a packed folder's shards (nothing loaded), or an image folder decoded into memory
    (the local path for small data; large data goes through verify-data)."""
    if is_packed(data_dir):
        return read_packed(data_dir, split, manifest)
    files = discover_split(data_dir, split)
    size = size or store_size_for(files.paths, cfg.data.resize_size)
    store = load_store(files, size, cfg.data.num_workers)
    return ArraySplit(store.images, store.labels)


def load_data(data_dir: Path, cfg: Config) -> tuple[Split, Split, int, str]:
    """Train/val splits, their square size and the dataset's content digest, from a packed folder (written
    by verify-data: no decoding, nothing read yet) or from image folders (decoded here)."""
    resize = cfg.data.resize_size
    if is_packed(data_dir):
        manifest = read_manifest(data_dir)
        if manifest["resize_size"] != resize:
            raise DataError(f"packed dataset {data_dir} was made for resize size {manifest['resize_size']} "
                            f"(image_size {manifest.get('image_size')}), this config needs {resize}",
                            "run verify-data with the same data.image_size and data.crop_pct as training")
        train, val = (read_packed(data_dir, s, manifest) for s in ("train", "val"))
        log.info("packed dataset %s (digest %s): %d train rows in %d shard(s), %d val rows, %.1f MB on disk",
                 data_dir, manifest["digest"], len(train), len(train.shards), len(val),
                 (train.nbytes + val.nbytes) / 1e6)
        return train, val, int(manifest["store_size"]), manifest["digest"]
    splits = {s: discover_split(data_dir, s) for s in ("train", "val")}
    if (data_dir / "test").is_dir():
        splits["test"] = discover_split(data_dir, "test")
    size = store_size_for(splits["train"].paths, resize)
    train, val = (open_split(data_dir, s, cfg, size=size) for s in ("train", "val"))
    return train, val, size, dataset_digest(data_dir, splits)


class Rows:
    """A split's images as a read-only array-like (len, int / slice / index-array access, `shape`), read from
    its shards on each access: what export hands to calibration, the ONNX parity check and the smoke images,
    which take the validation images a batch at a time, so the split is never loaded whole."""

    def __init__(self, split: Split) -> None:
        self.split = split
        self.shape = (len(split), split.size, split.size, 3)
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            return self.split.read(np.arange(len(self.split))[key])
        idx = np.asarray(key, np.int64)
        rows = self.split.read(idx.reshape(-1))
        return rows[0] if idx.ndim == 0 else rows

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.split.read_all()
        return out.astype(dtype) if dtype is not None else out


def batches_of(n: int | range, batch_size: int) -> list[np.ndarray]:
    """Consecutive index arrays over `n` rows (or a range of them): sequential reading, e.g. validation."""
    r = range(n) if isinstance(n, int) else n
    return [np.arange(i, min(i + batch_size, r.stop), dtype=np.int64) for i in range(r.start, r.stop, batch_size)]
