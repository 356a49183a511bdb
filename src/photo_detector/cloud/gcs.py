"""Copy folders to and from Cloud Storage: parallel, checksum-verified, skipping unchanged files, atomic.

Unchanged = same size and CRC32C as the other side (the checksum GCS keeps for every object), so a re-run
after an interruption copies only what is missing or different (resumable at file granularity). Downloads
land in a temporary sibling and are renamed into place after the library verified their checksum: no
half-written file is ever visible. Honours STORAGE_EMULATOR_HOST (e.g. fake-gcs-server).

Each worker thread has its own client (the requests session under a shared client is not promised to be
thread-safe); against fake-gcs-server it copies at the emulator's own ceiling (0.98x bare HTTP media
uploads, benchmarks/data_transfer.py). The storage library's
transfer_manager does not fit: in thread mode it shares one client the same way, and neither mode skips
unchanged files by CRC32C or downloads to a temporary name first. Every request has a timeout and a retry
deadline ($PHOTO_DETECTOR_GCS_DEADLINE, default 120 s); a failure ends the command with one line naming the
file. (The "hang at 0%" once seen in tests was the emulator's undrained log pipe: tests/fakes.py::fake_gcs.)
"""

from __future__ import annotations

import base64
import logging
import os
import struct
import threading
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


_local = threading.local()


def thread_client(project: str | None = None) -> Any:
    """This thread's own client (see the module docstring for why not one shared client)."""
    key = project or ""
    clients = getattr(_local, "clients", None)
    if clients is None:
        clients = _local.clients = {}
    if key not in clients:
        clients[key] = client(project)
    return clients[key]


def _retry() -> Any:
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_deadline(float(os.environ.get("PHOTO_DETECTOR_GCS_DEADLINE", "120")))


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
    hint = hints.get(code or 0, "re-run the same command: copies resume where they stopped")
    cause = getattr(exc, "cause", None) or exc  # a RetryError carries the last error it saw
    message = str(getattr(cause, "message", None) or cause).splitlines()[0][:300]
    return PhotoDetectorError(f"{action} failed: {type(cause).__name__}: {message}", hint)


def _transfer_errors() -> tuple[type[BaseException], ...]:
    """What a copy can fail with: API errors, retries given up, and transport errors (refused, timed out)."""
    import requests
    from google.api_core import exceptions as gexc
    from google.resumable_media import common

    return gexc.GoogleAPICallError, gexc.RetryError, requests.RequestException, common.InvalidResponse, \
        common.DataCorruption, OSError


def _run(items: list[Any], work: Callable[[Any], tuple[str, int]], desc: str, workers: int,
         result: SyncResult) -> None:
    """Copy in `workers` threads; the first failure cancels what has not started and is raised."""
    with ThreadPoolExecutor(workers) as pool, progress(total=len(items), desc=desc, unit="file") as bar:
        futures = [pool.submit(work, item) for item in items]
        try:
            for future in futures:
                rel, size = future.result()
                if size >= 0:
                    result.copied.append(rel)
                    result.bytes_copied += size
                else:
                    result.skipped.append(rel)
                bar.update(1)
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def download_prefix(uri: str, dest: str | Path, *, workers: int = 8, project: str | None = None) -> SyncResult:
    """Mirror every object under gs://BUCKET/PREFIX into `dest` (relative paths kept)."""

    bucket_name, prefix = split_uri(uri)
    dest = Path(dest)
    errors = _transfer_errors()
    try:
        blobs = [b for b in thread_client(project).list_blobs(bucket_name, prefix=f"{prefix}/" if prefix else None,
                                                               retry=_retry(), timeout=60)
                 if not b.name.endswith("/")]
    except errors as exc:
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
            mine = thread_client(project).bucket(bucket_name).blob(blob.name)
            with atomic_path(target) as tmp:
                mine.download_to_filename(str(tmp), checksum="crc32c", retry=_retry(), timeout=60)
        except errors as exc:
            raise _gcs_error(f"downloading gs://{bucket_name}/{blob.name}", exc) from None
        return rel, int(blob.size or 0)

    _run(blobs, fetch, f"download {uri}", workers, result)
    log.info("downloaded %d files (%d bytes), %d unchanged, from %s to %s", len(result.copied),
             result.bytes_copied, len(result.skipped), uri, dest)
    return result


def upload_folder(src: str | Path, uri: str, *, workers: int = 8, project: str | None = None) -> SyncResult:
    """Mirror the files of `src` to gs://BUCKET/PREFIX; objects appear whole (single or resumable upload)."""

    src = Path(src)
    if not src.is_dir():
        raise PhotoDetectorError(f"{src} is not a folder", "pass the folder to upload")
    bucket_name, prefix = split_uri(uri)
    errors = _transfer_errors()
    try:
        remote = {b.name: (b.size, b.crc32c) for b in thread_client(project).list_blobs(
            bucket_name, prefix=f"{prefix}/" if prefix else None, fields="items(name,size,crc32c),nextPageToken",
            retry=_retry(), timeout=60)}
    except errors as exc:
        raise _gcs_error(f"listing {uri}", exc) from None
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith(".") and
                   ".tmp" not in p.suffixes)
    result = SyncResult()

    def send(path: Path) -> tuple[str, int]:
        rel = path.relative_to(src).as_posix()
        name = f"{prefix}/{rel}" if prefix else rel
        have = remote.get(name)
        if have is not None and have[0] == path.stat().st_size and have[1] == crc32c_of(path):
            return rel, -1
        try:
            blob = thread_client(project).bucket(bucket_name).blob(name)
            blob.upload_from_filename(str(path), checksum="crc32c", retry=_retry(), timeout=60)
        except errors as exc:
            raise _gcs_error(f"uploading {path} to gs://{bucket_name}/{name}", exc) from None
        return rel, path.stat().st_size

    _run(files, send, f"upload {src}", workers, result)
    log.info("uploaded %d files (%d bytes), %d unchanged, from %s to %s", len(result.copied), result.bytes_copied,
             len(result.skipped), src, uri)
    return result
