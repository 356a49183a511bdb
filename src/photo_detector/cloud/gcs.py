"""Copy folders to and from Cloud Storage: parallel, checksum-verified, skipping unchanged files, atomic.

Unchanged = same size and CRC32C as the other side (the checksum GCS keeps for every object), so a re-run
after an interruption copies only what is missing or different (resumable at file granularity). Downloads
land in a temporary sibling and are renamed into place after the library verified their checksum: no
half-written file is ever visible. Honours STORAGE_EMULATOR_HOST (e.g. fake-gcs-server).
"""

from __future__ import annotations

import base64
import logging
import os
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from photo_detector.errors import PhotoDetectorError
from photo_detector.io import atomic_path
from photo_detector.progress import progress

log = logging.getLogger(__name__)


def split_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("gs://"):
        raise PhotoDetectorError(f"'{uri}' is not a gs:// URI", "use gs://BUCKET/PATH")
    bucket, _, prefix = uri.removeprefix("gs://").partition("/")
    if not bucket:
        raise PhotoDetectorError(f"'{uri}' names no bucket", "use gs://BUCKET/PATH")
    return bucket, prefix.strip("/")


def client(project: str | None = None) -> Any:
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project or "emulator", credentials=AnonymousCredentials())
    return storage.Client(project=project)


def crc32c_of(path: Path) -> str:
    """Base64 big-endian CRC32C, the form GCS reports."""
    import google_crc32c

    checksum = google_crc32c.Checksum()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            checksum.update(block)
    return base64.b64encode(struct.pack(">I", int.from_bytes(checksum.digest(), "big"))).decode()


@dataclass
class SyncResult:
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_copied: int = 0


def _gcs_error(action: str, exc: Exception) -> PhotoDetectorError:
    code = getattr(exc, "code", None)
    hints = {403: "check that the account may read/write the bucket", 404: "check the bucket and path",
             401: "run `gcloud auth application-default login`"}
    hint = hints.get(code or 0, "retry; copies resume where they stopped")
    return PhotoDetectorError(f"{action} failed: {type(exc).__name__}: {getattr(exc, 'message', exc)}", hint)


def _run(items: list[Any], work: Callable[[Any], tuple[str, int]], desc: str, workers: int,
         result: SyncResult) -> None:
    with ThreadPoolExecutor(workers) as pool, progress(total=len(items), desc=desc, unit="file") as bar:
        for rel, size in pool.map(work, items):
            if size >= 0:
                result.copied.append(rel)
                result.bytes_copied += size
            else:
                result.skipped.append(rel)
            bar.update(1)


def download_prefix(uri: str, dest: str | Path, *, workers: int = 8, project: str | None = None) -> SyncResult:
    """Mirror every object under gs://BUCKET/PREFIX into `dest` (relative paths kept)."""
    from google.api_core import exceptions as gexc

    bucket_name, prefix = split_uri(uri)
    dest = Path(dest)
    gcs = client(project)
    try:
        blobs = [b for b in gcs.list_blobs(bucket_name, prefix=f"{prefix}/" if prefix else None)
                 if not b.name.endswith("/")]
    except gexc.GoogleAPICallError as exc:
        raise _gcs_error(f"listing {uri}", exc) from None
    if not blobs:
        raise PhotoDetectorError(f"nothing found under {uri}", "check the path (it is a prefix, not a file)")
    result = SyncResult()

    def fetch(blob: Any) -> tuple[str, int]:
        rel = blob.name[len(prefix) + 1:] if prefix else blob.name
        target = dest / rel
        if target.is_file() and target.stat().st_size == blob.size and crc32c_of(target) == blob.crc32c:
            return rel, -1
        try:
            with atomic_path(target) as tmp:
                blob.download_to_filename(str(tmp), checksum="crc32c")
        except gexc.GoogleAPICallError as exc:
            raise _gcs_error(f"downloading gs://{bucket_name}/{blob.name}", exc) from None
        return rel, int(blob.size or 0)

    _run(blobs, fetch, f"download {uri}", workers, result)
    log.info("downloaded %d files (%d bytes), %d unchanged, from %s to %s", len(result.copied),
             result.bytes_copied, len(result.skipped), uri, dest)
    return result


def upload_folder(src: str | Path, uri: str, *, workers: int = 8, project: str | None = None) -> SyncResult:
    """Mirror the files of `src` to gs://BUCKET/PREFIX; objects appear whole (single or resumable upload)."""
    from google.api_core import exceptions as gexc

    src = Path(src)
    if not src.is_dir():
        raise PhotoDetectorError(f"{src} is not a folder", "pass the folder to upload")
    bucket_name, prefix = split_uri(uri)
    gcs = client(project)
    bucket = gcs.bucket(bucket_name)
    try:
        remote = {b.name: b for b in gcs.list_blobs(bucket_name, prefix=f"{prefix}/" if prefix else None)}
    except gexc.GoogleAPICallError as exc:
        raise _gcs_error(f"listing {uri}", exc) from None
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith(".") and
                   ".tmp" not in p.suffixes)
    result = SyncResult()

    def send(path: Path) -> tuple[str, int]:
        rel = path.relative_to(src).as_posix()
        name = f"{prefix}/{rel}" if prefix else rel
        have = remote.get(name)
        if have is not None and have.size == path.stat().st_size and have.crc32c == crc32c_of(path):
            return rel, -1
        blob = bucket.blob(name)
        try:
            blob.upload_from_filename(str(path), checksum="crc32c")
        except gexc.GoogleAPICallError as exc:
            raise _gcs_error(f"uploading {path} to gs://{bucket_name}/{name}", exc) from None
        return rel, path.stat().st_size

    _run(files, send, f"upload {src}", workers, result)
    log.info("uploaded %d files (%d bytes), %d unchanged, from %s to %s", len(result.copied), result.bytes_copied,
             len(result.skipped), src, uri)
    return result
