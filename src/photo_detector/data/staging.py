"""Training rows from whole shards staged to local disk, for packed data on Cloud Storage.

Why: the epoch order visits the shards a window at a time, and within a window every shard is read in small
row-sized pieces in random order. Through the `/gcs/` FUSE mount each piece is a ranged GET; whole objects
through the storage client are sequential transfers, 2.5x faster per connection against fake-gcs-server
(docs/architecture.md, benchmarks/data_scale.py). So `StagedSplit` downloads each shard whole, ahead of its
first use in the epoch's planned reads, to a temporary folder on the boot disk, and deletes it after its last
use, never holding more than a byte limit (`train.stage_mb`, per training process).

The rules that keep it correct:
- Only planned reads are staged: `plan(batches)` is told this process's batches of the epoch, in order, and
  counts each shard's rows. Downloads follow first use; a shard is deleted when its count reaches zero, so
  reading order and thread timing change speed, never which bytes are read.
- The limit must hold every shard live at one time in the plan (one window: `loader.WINDOW_SHARDS` shards);
  `plan` refuses a smaller limit with the key to raise. Bytes are reserved in first-use order, so a reader
  always gets the shard it waits for.
- Every staged copy is checked against the manifest's size and SHA-256 before it is read.
- Reads outside a plan (validation, export) go to the packed folder itself: those are sequential already.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from photo_detector.data.packed import PackedSplit, file_sha256
from photo_detector.errors import ConfigError, DataError, PhotoDetectorError

log = logging.getLogger(__name__)

DOWNLOADS = 4  # whole-shard downloads in flight (4 gave 99 MB/s against fake-gcs-server)


class Fetch(Protocol):
    """Writes the packed folder's file `name` (e.g. `shards/train-00003.u8`) to `dest`, whole."""

    def __call__(self, name: str, dest: Path) -> None: ...


class StagedSplit:
    """A `PackedSplit` whose planned reads come from staged copies of its shards (same interface)."""

    def __init__(self, remote: PackedSplit, fetch: Fetch, limit_bytes: int, root: str | Path | None = None, *,
                 downloads: int = DOWNLOADS) -> None:
        """`limit_bytes`: what this process may hold on disk (train.stage_mb); `downloads` in flight."""
        self.remote, self.fetch, self.limit = remote, fetch, int(limit_bytes)
        self.downloads = max(1, downloads)
        self.labels, self.size, self.shards = remote.labels, remote.size, remote.shards
        self.dir = Path(tempfile.mkdtemp(prefix="photo-detector-stage-", dir=root))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.dir, True)  # also at interpreter exit
        self.local = PackedSplit(self.dir, remote.split, remote.size, remote.labels, remote.shards)
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._queue: list[int] = []
        self._next = 0
        self._left: dict[int, int] = {}      # planned rows still to read, per shard
        self._staged: set[int] = set()
        self._failed: dict[int, BaseException] = {}
        self._broken: BaseException | None = None  # the first download failure: no shard after it will come
        self._reserved = 0                   # bytes of shards staged or being downloaded
        self._closed = False
        self.stats = {"downloaded_bytes": 0, "download_seconds": 0.0, "wait_seconds": 0.0, "peak_bytes": 0}

    def __len__(self) -> int:
        return len(self.remote)

    @property
    def counts(self) -> list[int]:
        return self.remote.counts

    @property
    def nbytes(self) -> int:
        return self.remote.nbytes

    def plan(self, batches: Sequence[np.ndarray]) -> None:
        """Stage for these reads (this process's batches of an epoch, in reading order); forgets any earlier
        plan and its staged copies."""
        self._stop()
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        left: dict[int, int] = {}
        for t, b in enumerate(batches):
            ks, n = np.unique(self.remote.shard_of(np.asarray(b, np.int64)), return_counts=True)
            for k, c in zip(ks.tolist(), n.tolist(), strict=True):
                first.setdefault(k, t)
                last[k] = t
                left[k] = left.get(k, 0) + c
        change = np.zeros(len(batches) + 1, np.int64)  # a shard is live from its first to its last read
        for k, t in first.items():
            change[t] += self.shards[k].bytes
            change[last[k] + 1] -= self.shards[k].bytes
        peak = int(np.cumsum(change).max())
        if peak > self.limit:
            raise ConfigError(f"train.stage_mb allows {self.limit / 2**20:.1f} MiB of staged shards per training "
                              f"process, but one window of this epoch's order needs {peak / 2**20:.1f} MiB at once",
                              f"raise train.stage_mb to at least {math.ceil(2 * peak / 2**20)} (two windows: one "
                              "read, one downloading), lower verify.shard_mb, or set train.stage_mb=0 to read "
                              "rows through the mount")
        with self._cond:
            self._queue = sorted(first, key=lambda k: (first[k], k))
            self._next, self._left, self._closed = 0, left, False
            self.stats = {k: type(v)(0) for k, v in self.stats.items()}  # per plan: what finish() reports
        self._threads = [threading.Thread(target=self._download_loop, name=f"photo-detector-stage-{i}", daemon=True)
                         for i in range(min(self.downloads, len(self._queue)))]
        for th in self._threads:
            th.start()
        log.info("staging %d shard(s) (%.1f MiB) from %s to %s; at most %.1f MiB on disk, %.1f MiB needed at once",
                 len(self._queue), sum(self.shards[k].bytes for k in self._queue) / 2**20, self.remote.root,
                 self.dir, self.limit / 2**20, peak / 2**20)

    def _download_loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and self._broken is None and self._next < len(self._queue) and \
                        self._reserved + self.shards[self._queue[self._next]].bytes > self.limit:
                    self._cond.wait()
                if self._closed or self._broken is not None or self._next >= len(self._queue):
                    return
                k = self._queue[self._next]
                self._next += 1
                self._reserved += self.shards[k].bytes
                self.stats["peak_bytes"] = max(self.stats["peak_bytes"], self._reserved)
            try:
                seconds = self._download(k)
            except BaseException as exc:  # handed to the reader that needs this shard, or any later one
                with self._cond:
                    self._failed[k] = exc
                    self._broken = self._broken or exc
                    self._cond.notify_all()
                return
            with self._cond:  # moved into place under the lock, so disk_bytes never counts a file twice
                part = self.dir / f"{self.shards[k].file}.part"
                os.replace(part, self.dir / self.shards[k].file)
                self._staged.add(k)
                self.stats["downloaded_bytes"] += self.shards[k].bytes
                self.stats["download_seconds"] += seconds
                self._cond.notify_all()

    def _download(self, k: int) -> float:
        """Shard k into `<file>.part`, checked against the manifest; the caller moves it into place."""
        s = self.shards[k]
        dest = self.dir / s.file
        part = dest.with_name(dest.name + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            self.fetch(s.file, part)
        except PhotoDetectorError:
            raise
        except Exception as exc:
            raise DataError(f"cannot stage shard {s.file} of {self.remote.root}: {type(exc).__name__}: {exc}",
                            "check that the training service account can read the bucket, or set "
                            "train.stage_mb=0 to read rows through the mount") from None
        size = part.stat().st_size if part.is_file() else -1
        if size != s.bytes or file_sha256(part) != s.sha256:
            part.unlink(missing_ok=True)
            raise DataError(f"staged copy of {self.remote.root / s.file} does not match the manifest (size "
                            f"{size}, manifest {s.bytes}, or its SHA-256)",
                            "re-run verify-data; the packed folder was changed after it was written")
        return time.perf_counter() - start

    def _wait(self, ks: list[int]) -> None:
        """Until shards `ks` are staged; a failed download is raised in every reader that still waits (its own
        error for its shard, else the first), so no reader waits for a download that will not come."""
        start = time.perf_counter()
        with self._cond:
            for k in ks:
                while k not in self._staged:
                    if k in self._failed or self._broken is not None:
                        raise self._failed.get(k) or self._broken  # type: ignore[misc]
                    if self._closed:
                        raise PhotoDetectorError("the staged split was closed while a read waited")
                    self._cond.wait(timeout=1.0)
            self.stats["wait_seconds"] += time.perf_counter() - start

    def read(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        """Rows `indices`: from staged copies when the current plan covers their shards, else from the packed
        folder. Planned rows count down their shard's uses; a shard is deleted after its last."""
        idx = np.asarray(indices, np.int64)
        ks, n = np.unique(self.remote.shard_of(idx), return_counts=True)
        with self._cond:
            planned = bool(len(idx)) and all(self._left.get(k, 0) >= c for k, c in zip(ks.tolist(), n.tolist(),
                                                                                       strict=True))
        if not planned:
            return self.remote.read(idx)
        self._wait(ks.tolist())
        out = self.local.read(idx)
        with self._cond:
            for k, c in zip(ks.tolist(), n.tolist(), strict=True):
                self._left[k] -= c
                if self._left[k] == 0:
                    self._evict(k)
            self._cond.notify_all()
        return out

    def disk_bytes(self) -> int:
        """Bytes of the staged and partly downloaded shards in the folder now: what train.stage_mb bounds."""
        total = 0
        with self._cond:  # moves into place and deletions of staged copies happen under it
            for f in self.dir.rglob("*"):
                with contextlib.suppress(FileNotFoundError):  # a failed download's partial file, just removed
                    total += f.stat().st_size if f.is_file() else 0
        return total

    def _evict(self, k: int) -> None:
        """(Lock held.) Deletes shard k's copy and returns its bytes to the limit."""
        self.local.release(k)
        (self.dir / self.shards[k].file).unlink(missing_ok=True)
        self._staged.discard(k)
        self._reserved -= self.shards[k].bytes

    def read_shard(self, k: int) -> np.ndarray:
        return self.remote.read_shard(k)

    def read_all(self) -> np.ndarray:
        return self.remote.read_all()

    def _stop(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for th in self._threads:
            th.join()
        self._threads = []
        with self._cond:
            for k in list(self._staged):
                self._evict(k)
            self._left, self._queue, self._failed, self._broken = {}, [], {}, None
            self._reserved = 0
        for part in self.dir.rglob("*.part"):
            part.unlink(missing_ok=True)

    def finish(self) -> None:
        """Ends the plan (all its shards are deleted by then unless the epoch stopped early) and logs what
        staging cost: the read wait is time the training step waited for a download."""
        st = self.stats
        self._stop()
        if st["downloaded_bytes"]:
            log.info("staged %.1f MiB of shards (%.0f MB/s per download, %d in flight, peak %.1f MiB on disk); "
                     "reads waited %.1f s for staging", st["downloaded_bytes"] / 2**20,
                     st["downloaded_bytes"] / 1e6 / max(st["download_seconds"], 1e-9), self.downloads,
                     st["peak_bytes"] / 2**20, st["wait_seconds"])

    def close(self) -> None:
        """Stops downloading and deletes the staging folder."""
        self._stop()
        self.local.close()
        self._cleanup()
