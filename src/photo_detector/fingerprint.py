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


def fingerprint(uri: str) -> Fingerprint:
    """The fingerprint of everything under `uri` (gs://BUCKET/PREFIX or a local folder)."""
    if uri.startswith("gs://"):
        entries = _gcs_entries(uri)
    else:
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


def _gcs_entries(uri: str) -> list[tuple[str, int, str]]:
    from photo_detector.cloud.gcs import client, split_uri

    bucket, prefix = split_uri(uri)
    base = f"{prefix}/" if prefix else ""
    blobs = client().list_blobs(bucket, prefix=base or None, fields="items(name,size,crc32c),nextPageToken")
    return [(b.name[len(base):], int(b.size or 0), b.crc32c or "") for b in blobs if not b.name.endswith("/")]
