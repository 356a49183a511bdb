"""Copy folders to and from Cloud Storage: parallel, checksum-verified, skipping unchanged files, atomic.

Unchanged = same size and CRC32C as the other side (the checksum GCS keeps for every object), so a re-run
after an interruption copies only what is missing or different (resumable at file granularity). Downloads
land in a temporary sibling and are renamed into place after the library verified their checksum: no
half-written file is ever visible. Honours STORAGE_EMULATOR_HOST (e.g. fake-gcs-server).

Each worker thread has its own client (the requests session under a shared client is not promised to be
thread-safe), and copies of 2,000+ files fan out to one forked process per core (transfer_processes): the
library costs milliseconds of GIL-bound CPU per small file. Downloads are plain streamed GETs of the listed
mediaLink, checked against the listed CRC32C. The storage library's transfer_manager does not fit: its thread
mode shares one client, its process mode spawns (re-importing the caller's __main__), and neither skips
unchanged files by CRC32C nor downloads to a temporary name first. Every request has a timeout and a retry
deadline ($PHOTO_DETECTOR_GCS_DEADLINE, default 120 s); a failure ends the command with one line naming the
file. Figures: benchmarks/data_transfer.py.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from photo_detector.errors import PhotoDetectorError
from photo_detector.io import atomic_path, usable_cores
from photo_detector.procs import die_with_parent
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
    """This thread's own client (see the module docstring for why not one shared client), per project and
    endpoint (an emulator set after the first call gets a client of its own)."""
    key = (project or "", os.environ.get("STORAGE_EMULATOR_HOST", ""))
    clients = getattr(_local, "clients", None)
    if clients is None:
        clients = _local.clients = {}
    if key not in clients:
        clients[key] = client(project)
    return clients[key]


def listing(uri: str) -> list[tuple[str, int, str]]:
    """(name relative to the prefix, size, CRC32C) of every object under gs://BUCKET/PREFIX, from list calls
    alone: what photo_detector.fingerprint digests."""
    bucket, prefix = split_uri(uri)
    base = f"{prefix}/" if prefix else ""
    blobs = client().list_blobs(bucket, prefix=base or None, fields="items(name,size,crc32c),nextPageToken")
    return [(b.name[len(base):], int(b.size or 0), b.crc32c or "") for b in blobs if not b.name.endswith("/")]


def read_object(uri: str) -> bytes:
    """One object's bytes on this thread's client (how `score gs://...` reads each image)."""
    bucket, name = split_uri(uri)
    return thread_client().bucket(bucket).blob(name).download_as_bytes(timeout=60)


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
    return gcs_crc32c(checksum)


def gcs_crc32c(checksum: Any) -> str:
    """A google_crc32c.Checksum in the form GCS lists: base64 of the big-endian digest."""
    return base64.b64encode(checksum.digest()).decode()


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
    import requests

    if isinstance(exc, OSError) and not isinstance(exc, requests.RequestException) and exc.filename:
        hint = "check the local side: a writable folder with free space, no file where a folder must go"
    cause = getattr(exc, "cause", None) or exc  # a RetryError carries the last error it saw
    message = str(getattr(cause, "message", None) or cause).splitlines()[0][:300]
    return PhotoDetectorError(f"{action} failed: {type(cause).__name__}: {message}", hint)


@functools.cache
def _transfer_errors() -> tuple[type[BaseException], ...]:
    """What a copy can fail with: API errors, retries given up, and transport errors (refused, timed out)."""
    import requests
    from google.api_core import exceptions as gexc
    from google.resumable_media import common

    return gexc.GoogleAPICallError, gexc.RetryError, requests.RequestException, common.InvalidResponse, \
        common.DataCorruption, OSError


def _get_media(session: Any, media_link: str, crc32c: str | None, path: Path) -> None:
    """GET the listed generation's bytes (its mediaLink) into `path`, checked against the listed CRC32C.

    Why not Blob.download_to_filename: for small files the library's download machinery costs ~5 ms of
    GIL-bound CPU per file, twice this plain streamed GET on the same authorized session
    (benchmarks/data_transfer.py prints both, same run)."""
    import google_crc32c
    from google.api_core import exceptions as gexc
    from google.resumable_media import common

    checksum = google_crc32c.Checksum()
    with session.get(media_link, stream=True, timeout=60) as resp:
        if resp.status_code >= 400:
            raise gexc.from_http_response(resp)
        with open(path, "wb") as f:
            for chunk in resp.raw.stream(1 << 20, decode_content=False):  # stored bytes, as listed
                checksum.update(chunk)
                f.write(chunk)
    got = gcs_crc32c(checksum)
    if crc32c and got != crc32c:
        raise common.DataCorruption(resp, f"CRC32C mismatch: listed {crc32c}, received {got}")


@dataclass(frozen=True)
class _Job:
    """What one copy needs, picklable so a worker process can run it."""

    direction: str  # "upload" | "download"
    bucket: str
    prefix: str
    local: str
    project: str | None


# Upload item: (relative path, remote size, remote crc32c); download item: (object name, size, crc32c, mediaLink).
Item = tuple[Any, ...]


def _copy_one(job: _Job, item: Item) -> tuple[str, int]:
    """Copy one file unless the other side already has the same size and CRC32C; -1 = skipped."""
    errors = _transfer_errors()
    if job.direction == "upload":
        rel, size, crc = item
        path = Path(job.local) / rel
        name = f"{job.prefix}/{rel}" if job.prefix else rel
        if size is not None and size == path.stat().st_size and crc == crc32c_of(path):
            return rel, -1
        try:
            blob = thread_client(job.project).bucket(job.bucket).blob(name)
            blob.upload_from_filename(str(path), checksum="crc32c", retry=_retry(), timeout=60)
        except errors as exc:
            raise _gcs_error(f"uploading {path} to gs://{job.bucket}/{name}", exc) from None
        return rel, path.stat().st_size
    name, size, crc, media_link = item
    rel = name[len(job.prefix) + 1:] if job.prefix else name
    target = Path(job.local) / rel
    if target.is_file() and target.stat().st_size == size and crc32c_of(target) == crc:
        return rel, -1
    try:
        with atomic_path(target) as tmp:
            _retry()(_get_media)(thread_client(job.project)._http, media_link, crc, tmp)
    except errors as exc:
        raise _gcs_error(f"downloading gs://{job.bucket}/{name}", exc) from None
    return rel, int(size or 0)


_pool: ThreadPoolExecutor | None = None


def _copy_batch(job: _Job, batch: list[Item], workers: int) -> list[tuple[str, int]]:
    """In a worker process: copy a batch with this process's own thread pool (and thread clients)."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(workers)
    return list(_pool.map(lambda item: _copy_one(job, item), batch))


# Below this many files one process is enough: starting workers costs ~1 s.
PROCESS_MIN_FILES = 2000
BATCH = 100


def transfer_processes(n_files: int) -> int:
    """Worker processes for a copy: one per core up to 4 ($PHOTO_DETECTOR_GCS_PROCESSES overrides).

    Why processes: the client library spends 2-5 ms of GIL-bound CPU per small file, so threads alone top
    out at a few hundred files/s however many connections are open (CIFAKE is 120,000 files)."""
    if sys.platform != "linux":  # the workers are forked, which only Linux makes safe to rely on
        return 1
    env = os.environ.get("PHOTO_DETECTOR_GCS_PROCESSES")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise PhotoDetectorError(f"PHOTO_DETECTOR_GCS_PROCESSES={env!r} is not a number",
                                     "set it to a whole number of processes, or unset it") from None
    if n_files < PROCESS_MIN_FILES:
        return 1
    return max(1, min(4, usable_cores()))


def _run(job: _Job, items: list[Item], desc: str, workers: int, result: SyncResult) -> None:
    """Copy `items` with `workers` threads in each of transfer_processes() processes; the first failure
    cancels what has not started and is raised."""

    def record(done: list[tuple[str, int]], bar: Any) -> None:
        for rel, size in done:
            if size >= 0:
                result.copied.append(rel)
                result.bytes_copied += size
            else:
                result.skipped.append(rel)
        bar.update(len(done))

    processes = transfer_processes(len(items))
    with progress(total=len(items), desc=desc, unit="file") as bar:
        if processes == 1:
            with ThreadPoolExecutor(workers) as threads:
                futures = [threads.submit(_copy_one, job, item) for item in items]
                try:
                    for future in futures:
                        record([future.result()], bar)
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # fork: spawn/forkserver re-import the caller's __main__, which breaks scripts without a main guard.
        # The parent holds no lock-taking threads here (the listing ran in this thread).
        context = multiprocessing.get_context("fork")
        # Each worker dies with this process, however it dies: no orphan races the resumed copy.
        with ProcessPoolExecutor(processes, mp_context=context, initializer=die_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            futures = [pool.submit(_copy_batch, job, items[i:i + BATCH], workers)
                       for i in range(0, len(items), BATCH)]
            try:
                for future in as_completed(futures):
                    record(future.result(), bar)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise


def download_prefix(uri: str, dest: str | Path, *, workers: int = 8, project: str | None = None) -> SyncResult:
    """Mirror every object under gs://BUCKET/PREFIX into `dest` (relative paths kept)."""

    bucket_name, prefix = split_uri(uri)
    try:
        items = [(b.name, b.size, b.crc32c, b.media_link) for b in thread_client(project).list_blobs(
            bucket_name, prefix=f"{prefix}/" if prefix else None, retry=_retry(), timeout=60,
            fields="items(name,size,crc32c,mediaLink),nextPageToken") if not b.name.endswith("/")]
    except _transfer_errors() as exc:
        raise _gcs_error(f"listing {uri}", exc) from None
    if not items:
        raise PhotoDetectorError(f"nothing found under {uri}", "check the path (it is a prefix, not a file)")
    result = SyncResult()
    _run(_Job("download", bucket_name, prefix, str(dest), project), items, f"download {uri}", workers, result)
    log.info("downloaded %d files (%d bytes), %d unchanged, from %s to %s", len(result.copied),
             result.bytes_copied, len(result.skipped), uri, dest)
    return result


def upload_folder(src: str | Path, uri: str, *, workers: int = 8, project: str | None = None) -> SyncResult:
    """Mirror the files of `src` to gs://BUCKET/PREFIX; objects appear whole (single or resumable upload)."""

    src = Path(src)
    if not src.is_dir():
        raise PhotoDetectorError(f"{src} is not a folder", "pass the folder to upload")
    bucket_name, prefix = split_uri(uri)
    try:
        remote = {b.name: (b.size, b.crc32c) for b in thread_client(project).list_blobs(
            bucket_name, prefix=f"{prefix}/" if prefix else None, fields="items(name,size,crc32c),nextPageToken",
            retry=_retry(), timeout=60)}
    except _transfer_errors() as exc:
        raise _gcs_error(f"listing {uri}", exc) from None
    items = []
    for path in sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith(".") and
                       ".tmp" not in p.suffixes):
        rel = path.relative_to(src).as_posix()
        items.append((rel, *remote.get(f"{prefix}/{rel}" if prefix else rel, (None, None))))
    result = SyncResult()
    _run(_Job("upload", bucket_name, prefix, str(src), project), items, f"upload {src}", workers, result)
    log.info("uploaded %d files (%d bytes), %d unchanged, from %s to %s", len(result.copied), result.bytes_copied,
             len(result.skipped), src, uri)
    return result


MOUNT_ENV = "PHOTO_DETECTOR_GCS_MOUNT"  # where buckets appear as folders; Vertex AI custom jobs: /gcs


def mounted_uri(path: str | Path) -> str | None:
    """gs://BUCKET/PATH of a path under the Cloud Storage FUSE mount (`/gcs/BUCKET/PATH` on Vertex AI, or
    $PHOTO_DETECTOR_GCS_MOUNT laid out the same way), else None (a local folder)."""
    mount = Path(os.environ.get(MOUNT_ENV, "/gcs")).absolute()
    try:
        rel = Path(path).absolute().relative_to(mount)
    except ValueError:
        return None
    return f"gs://{rel.as_posix()}" if rel.parts else None


@dataclass(frozen=True)
class FolderObjects:
    """Whole objects of the folder gs://BUCKET/PREFIX, through the storage client, the `Fetch` that
    data.staging stages shards with (a plain value, so it pickles into every training process)."""

    uri: str

    def __call__(self, name: str, dest: Path) -> None:
        bucket, prefix = split_uri(self.uri)
        blob = thread_client().bucket(bucket).blob(f"{prefix}/{name}" if prefix else name)
        try:
            blob.download_to_filename(str(dest), timeout=120, retry=_retry(), checksum="crc32c")
        except _transfer_errors() as exc:
            raise _gcs_error(f"staging gs://{bucket}/{blob.name}", exc) from None


def staging_source(data_dir: str | Path) -> FolderObjects | None:
    """What stages a packed folder's shards when it is on Cloud Storage through the mount; None for a local
    folder (read in place)."""
    uri = mounted_uri(data_dir)
    return FolderObjects(uri) if uri else None
