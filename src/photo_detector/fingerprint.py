"""A cheap fingerprint of a dataset from listings alone (no downloads): what keys the pipeline's cache.

Why: verify-data reads every byte, so it is cached, and something uncached must notice new content behind an
unchanged URI. Cloud Storage keeps every object's size and CRC32C in its listing, so a 120,000-file dataset
is fingerprinted in a few list calls: renaming, adding, removing or changing any file changes the fingerprint,
and nothing else does. A local folder (run-local) is fingerprinted from names, sizes and modification times.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from photo_detector.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fingerprint:
    uri: str
    digest: str
    files: int
    bytes: int


def _digest(entries: list[tuple[str, int, str]]) -> str:
    h = hashlib.sha256()
    for rel, size, checksum in sorted(entries):
        h.update(f"{rel}\0{size}\0{checksum}\n".encode())
    return "fp:" + h.hexdigest()


Entry = tuple[str, int, str]  # (path relative to the dataset root, size in bytes, checksum or mtime)


def fingerprint(uri: str, entries: list[Entry] | None = None) -> Fingerprint:
    """The fingerprint of everything under `uri`: a local folder, listed here, or any store whose listing the
    caller passes as `entries` (gs://: photo_detector.cloud.gcs.listing, at the stage or CLI edge)."""
    if entries is None and uri.startswith("gs://"):
        raise DataError(f"dataset {uri} was not listed", "pass its listing: fingerprint(uri, "
                                                          "photo_detector.cloud.gcs.listing(uri))")
    if entries is None:
        root = Path(uri)
        if not root.is_dir():
            raise DataError(f"dataset {uri} is not a folder", "set data_uri to gs://BUCKET/PATH or a local folder")
        entries = []
        for dirpath, _, names in os.walk(root):
            for name in names:
                st = os.stat(os.path.join(dirpath, name))
                rel = Path(dirpath, name).relative_to(root).as_posix()
                entries.append((rel, st.st_size, str(st.st_mtime_ns)))
    if not entries:
        raise DataError(f"dataset {uri} is empty", "upload the dataset first: photo-detector data upload DIR URI")
    result = Fingerprint(uri, _digest(entries), len(entries), sum(e[1] for e in entries))
    log.info("fingerprint of %s: %s (%d files, %d bytes, from listings only)", uri, result.digest, result.files,
             result.bytes)
    return result

