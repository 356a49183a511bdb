"""`data upload` / `data download` throughput against fake-gcs-server: a sixth of CIFAKE (20,000 files of
32 px) each way, target <= 60 s each on 2 cores. Baselines, same run, on the first 4,000 files: the same copy
with one client shared by the eight threads (what the code did before), and the emulator's own ceiling:
bare HTTP media uploads (requests, one session per thread, no client library), which no client can beat.
Downloads of the same subset: ours against the library's Blob.download_to_filename with a client per thread
(what the code did before). The emulator's throughput drifts with the host's load (2-3x over an hour on a
shared 2-core VM), so only the ratios within one run compare.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fakes import fake_gcs

from photo_detector.cloud.gcs import download_prefix, upload_folder
from photo_detector.data.sample import generate_sample


def shared_client_upload(src: Path, files: list[Path], bucket: str, prefix: str, workers: int) -> float:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    shared = storage.Client(project="p", credentials=AnonymousCredentials()).bucket(bucket)
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda p: shared.blob(f"{prefix}/{p.relative_to(src).as_posix()}").upload_from_filename(
            str(p), checksum="crc32c"), files))
    return time.perf_counter() - start


def library_download(bucket: str, names: list[str], dest: Path, workers: int) -> float:
    from photo_detector.cloud.gcs import thread_client

    def get(name: str) -> None:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        thread_client().bucket(bucket).blob(name).download_to_filename(str(target), checksum="crc32c")

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(get, names))
    return time.perf_counter() - start


def raw_http_upload(url: str, files: list[Path], workers: int, bucket: str) -> float:
    import threading

    import requests

    local = threading.local()

    def put(p: Path) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        local.session.post(f"{url}/upload/storage/v1/b/{bucket}/o", params={"uploadType": "media", "name": f"x/{p}"},
                           data=p.read_bytes(), timeout=60).raise_for_status()

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(put, files))
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    with tempfile.TemporaryDirectory() as tmp, fake_gcs() as server:
        storage.Client(project="p", credentials=AnonymousCredentials()).create_bucket("data")
        t = time.perf_counter()
        src = generate_sample(Path(tmp) / "src", per_class=args.files // 2, size=32, fmt="jpeg").root
        files = sorted(p for p in src.rglob("*") if p.is_file())
        print(f"{len(files)} files of 32 px ({sum(p.stat().st_size for p in files) / 1e6:.1f} MB) made in "
              f"{time.perf_counter() - t:.1f}s; {len(os.sched_getaffinity(0))} cores, {args.workers} workers",
              flush=True)
        t = time.perf_counter()
        up = upload_folder(src, "gs://data/ours", workers=args.workers)
        up_s = time.perf_counter() - t
        t = time.perf_counter()
        down = download_prefix("gs://data/ours", Path(tmp) / "back", workers=args.workers)
        down_s = time.perf_counter() - t
        t = time.perf_counter()
        again = upload_folder(src, "gs://data/ours", workers=args.workers)
        again_s = time.perf_counter() - t
        # Same-size runs into fresh buckets: the emulator slows as a bucket fills, so only these compare.
        n_base = min(4000, len(files))
        gcs = storage.Client(project="p", credentials=AnonymousCredentials())
        subset = Path(tmp) / "subset"
        for f in files[:n_base]:
            (subset / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (subset / f.relative_to(src)).hardlink_to(f)
        gcs.create_bucket("ours-subset")
        t = time.perf_counter()
        upload_folder(subset, "gs://ours-subset/x", workers=args.workers)
        ours_s = time.perf_counter() - t
        gcs.create_bucket("shared-subset")
        base_s = shared_client_upload(src, files[:n_base], "shared-subset", "x", args.workers)
        gcs.create_bucket("raw-subset")
        raw_s = raw_http_upload(server.url, files[:n_base], args.workers, "raw-subset")
        t = time.perf_counter()
        download_prefix("gs://ours-subset/x", Path(tmp) / "ours-back", workers=args.workers)
        ours_down_s = time.perf_counter() - t
        names = [b.name for b in gcs.list_blobs("ours-subset", prefix="x/")]
        lib_down_s = library_download("ours-subset", names, Path(tmp) / "lib-back", args.workers)
    up_rate, down_rate = len(up.copied) / up_s, len(down.copied) / down_s
    ours_rate, base_rate, raw_rate = n_base / ours_s, n_base / base_s, n_base / raw_s
    print(f"  upload    {len(up.copied):>6} files in {up_s:6.1f}s  {up_rate:7.0f} files/s  (target <= 60 s)")
    print(f"  download  {len(down.copied):>6} files in {down_s:6.1f}s  {down_rate:7.0f} files/s  (target <= 60 s)")
    print(f"  re-upload {len(again.skipped):>6} unchanged, {len(again.copied)} copied, in {again_s:.1f}s")
    print(f"  {n_base} files into fresh buckets: ours {ours_rate:.0f} files/s; one shared client "
          f"{base_rate:.0f} files/s (ours / it = {ours_rate / base_rate:.2f}x); bare HTTP, the emulator's "
          f"ceiling, {raw_rate:.0f} files/s (ours / it = {ours_rate / raw_rate:.2f}x)")
    print(f"  {n_base} files back: ours {n_base / ours_down_s:.0f} files/s; Blob.download_to_filename "
          f"{n_base / lib_down_s:.0f} files/s (ours / it = {lib_down_s / ours_down_s:.2f}x)")


if __name__ == "__main__":
    main()
