"""`data upload` / `data download` throughput against fake-gcs-server: a sixth of CIFAKE (20,000 files of
32 px) each way, target <= 60 s each on 2 cores. Baseline, same run: the same copy with one client shared by
the eight threads (what the code did before), on the first 4,000 files.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    with tempfile.TemporaryDirectory() as tmp, fake_gcs():
        storage.Client(project="p", credentials=AnonymousCredentials()).create_bucket("data")
        t = time.perf_counter()
        src = generate_sample(Path(tmp) / "src", per_class=args.files // 2, size=32, fmt="jpeg").root
        files = sorted(p for p in src.rglob("*") if p.is_file())
        print(f"{len(files)} files of 32 px ({sum(p.stat().st_size for p in files) / 1e6:.1f} MB) made in "
              f"{time.perf_counter() - t:.1f}s; {os.cpu_count()} cores, {args.workers} workers", flush=True)
        t = time.perf_counter()
        up = upload_folder(src, "gs://data/ours", workers=args.workers)
        up_s = time.perf_counter() - t
        t = time.perf_counter()
        down = download_prefix("gs://data/ours", Path(tmp) / "back", workers=args.workers)
        down_s = time.perf_counter() - t
        t = time.perf_counter()
        again = upload_folder(src, "gs://data/ours", workers=args.workers)
        again_s = time.perf_counter() - t
        n_base = min(4000, len(files))
        base_s = shared_client_upload(src, files[:n_base], "data", "shared", args.workers)
    up_rate, down_rate, base_rate = len(up.copied) / up_s, len(down.copied) / down_s, n_base / base_s
    print(f"  upload    {len(up.copied):>6} files in {up_s:6.1f}s  {up_rate:7.0f} files/s  (target <= 60 s)")
    print(f"  download  {len(down.copied):>6} files in {down_s:6.1f}s  {down_rate:7.0f} files/s  (target <= 60 s)")
    print(f"  re-upload {len(again.skipped):>6} unchanged, {len(again.copied)} copied, in {again_s:.1f}s")
    print(f"  baseline: one shared client, {n_base} files: {base_rate:.0f} files/s; "
          f"ours / baseline = {up_rate / base_rate:.2f}x")


if __name__ == "__main__":
    main()
