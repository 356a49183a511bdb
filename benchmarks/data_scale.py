"""Training memory against dataset size, and what the loader delivers, on product-photo-sized data.

    python benchmarks/data_scale.py [--photos 2000] [--scale 8] [--steps 6] [--batch 8] [--work DIR]

Makes N and scale x N 320 px JPEG photos (the sample generator; N training photos, plus val/test), runs
verify-data on both at the default 224 px profile, then runs the train stage's own code (`_Trainer` and its
`train_epoch` loop) for a fixed number of steps in a child process, sampling the resident memory of the
child and its processes every 50 ms. Reports, as ratios against the N run measured in the same invocation:
- peak RSS at N and scale x N (done when <= 1.15x), and with gpus=2 (gloo, CPU) per process and in total;
- the loader's images/s (streamed shards, no model) against the model's training images/s;
- the time from the start of the stage to the first batch;
- both shard contents: bytes per image and loader images/s on this machine's cores, for decoded squares
  (what verify-data writes) and for source bytes decoded in loader threads by `decode_square`.
- Cloud Storage, against fake-gcs-server: the loader over staged shards (data.staging, what training on
  /gcs/ data does) vs row-sized range reads (what row reads through the /gcs/ mount ask of the bucket) vs
  the same reads from local disk, in images/s, and the time to the first batch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


class _Stop(Exception):
    pass


def _steps_then_stop(steps: int, marks: dict[str, float]) -> Any:
    def checkpoint(step: int, sums: list[float]) -> None:
        if step == 1:
            marks["after_first_step"] = time.perf_counter()
        if step >= steps:
            marks["end"] = time.perf_counter()
            raise _Stop
    return checkpoint


def _child_steps(data_dir: str, overrides: dict[str, Any], steps: int, shard: Any = None) -> dict[str, Any]:
    """In the child: the train stage's trainer for `steps` steps of epoch 1; timings (rank 0's)."""
    import torch

    from photo_detector.config import load_config
    from photo_detector.parallel import Shard
    from photo_detector.train import _Trainer

    shard = shard or Shard()
    t0 = time.perf_counter()
    cfg = load_config(None, overrides)
    torch.manual_seed(cfg.seed)
    trainer = _Trainer(cfg, Path(data_dir), shard)
    trainer.build(load_pretrained=False)
    first = next(trainer.epoch_batches(1))
    t_first = time.perf_counter() - t0
    del first
    marks: dict[str, float] = {"start": time.perf_counter()}
    with contextlib.suppress(_Stop):
        trainer.train_epoch(1, checkpoint=_steps_then_stop(steps, marks))
    step_rate = (steps - 1) * trainer.batch_size / (marks["end"] - marks["after_first_step"])
    # The loader alone: the same streamed reads, no model.
    t = time.perf_counter()
    n = 0
    for i, (idx, _) in enumerate(trainer.epoch_batches(2)):
        n += len(idx)
        if i == 4 * steps:
            break
    loader_rate = n / (time.perf_counter() - t)
    return {"first_batch_s": t_first, "train_img_s": step_rate, "loader_img_s": loader_rate,
            "rows": len(trainer.train_split), "world": shard.world}


def child(args: argparse.Namespace) -> None:
    overrides = json.loads(args.overrides)
    if args.gpus > 1:
        from photo_detector.parallel import launch

        out = launch(_child_steps, (args.data, overrides, args.steps), args.gpus, "gloo")
    else:
        out = _child_steps(args.data, overrides, args.steps)
    print("RESULT " + json.dumps(out), flush=True)


def _tree_rss(pid: int) -> tuple[dict[int, int], int, int]:
    """RSS per process, and the tree's RSS and PSS sums. PSS splits pages shared between the processes (torch's
    libraries, mapped by each) among them, so the PSS sum counts them once: the tree's real host memory."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}, 0, 0
    rss, pss = {}, 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            info = p.memory_full_info()  # /proc/PID/smaps_rollup
            rss[p.pid] = info.rss
            pss += info.pss
    return rss, sum(rss.values()), pss


def measure(data: Path, overrides: dict[str, Any], steps: int, gpus: int) -> dict[str, Any]:
    """Run the child; peak RSS of the largest training process and of the whole process tree."""
    cmd = [sys.executable, __file__, "--child", "--data", str(data), "--steps", str(steps), "--gpus", str(gpus),
           "--overrides", json.dumps({**overrides, "train.gpus": gpus})]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak_each: dict[int, int] = {}
    peak_total = [0, 0]

    def poll() -> None:
        while proc.poll() is None:
            rss, total, pss = _tree_rss(proc.pid)
            for p, v in rss.items():
                peak_each[p] = max(peak_each.get(p, 0), v)
            peak_total[0] = max(peak_total[0], total)
            peak_total[1] = max(peak_total[1], pss)
            time.sleep(0.05)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    thread.join()
    if proc.returncode != 0 or "RESULT " not in out:
        raise SystemExit(f"child failed ({proc.returncode}): {out[-2000:]}")
    result = json.loads(out.split("RESULT ", 1)[1])
    # With gpus > 1 the tree is the launcher plus the training processes: the largest few are the trainers.
    trainers = sorted(peak_each.values(), reverse=True)[:gpus]
    return {**result, "peak_rss_mib": max(trainers) / 2**20, "peak_tree_mib": peak_total[0] / 2**20,
            "peak_tree_pss_mib": peak_total[1] / 2**20, "trainers_mib": [v / 2**20 for v in trainers]}


def contents(data_root: Path, packed: Path, size: int, seconds: float = 8.0) -> dict[str, Any]:
    """Bytes per image and loader images/s of the two shard contents, threads = usable cores."""
    from concurrent.futures import ThreadPoolExecutor

    from photo_detector.data.loader import Prefetcher, epoch_order
    from photo_detector.data.packed import read_packed
    from photo_detector.io import usable_cores
    from photo_detector.preprocess import decode_square

    split = read_packed(packed, "train")
    cores = usable_cores()
    order = epoch_order(split.counts, 42, 1)
    b = min(64, len(order))
    batches = [order[i:i + b] for i in range(0, len(order) - b + 1, b)] * 20
    t, n = time.perf_counter(), 0
    for b in Prefetcher(split.read, batches, threads=cores):
        n += len(b)
        if time.perf_counter() - t > seconds:
            break
    squares = n / (time.perf_counter() - t)
    sources = [data_root / p for p in split.paths]
    blobs = [p.read_bytes() for p in sources[:2000]]
    with ThreadPoolExecutor(cores) as pool:
        t, n = time.perf_counter(), 0
        while time.perf_counter() - t < seconds:
            n += sum(1 for _ in pool.map(lambda b: decode_square(b, size), blobs[:256]))
        decoded = n / (time.perf_counter() - t)
    return {"squares": {"bytes_per_image": split.row_bytes, "loader_img_s": squares},
            "source": {"bytes_per_image": float(np.mean([len(b) for b in blobs])), "loader_img_s": decoded},
            "threads": cores}


def cloud_storage(packed: Path, mib: int = 256, batch: int = 32) -> dict[str, Any]:
    """Against fake-gcs-server: the built path (data.staging: whole shards downloaded ahead of use, an epoch's
    window order, read by the loader's threads) against row-sized range reads (what row reads through the
    /gcs/ mount turn into) and the same reads from local disk; MB/s, images/s and the time to the first batch."""
    from concurrent.futures import ThreadPoolExecutor

    from fakes import fake_gcs  # tests/fakes.py: fake-gcs-server, started quiet
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from photo_detector.cloud.gcs import FolderObjects
    from photo_detector.data.loader import Prefetcher, epoch_order
    from photo_detector.data.packed import read_packed
    from photo_detector.data.staging import StagedSplit

    split = read_packed(packed, "train")
    with fake_gcs():
        client = storage.Client(project="bench", credentials=AnonymousCredentials())
        bucket = client.create_bucket("bench-data")
        shards, total = [], 0
        for s in split.shards:
            if total >= mib * 2**20:
                break
            bucket.blob(f"verified/{s.file}").upload_from_filename(str(packed / s.file))
            shards.append(s)
            total += s.bytes
        order = epoch_order([s.count for s in shards], seed=0, epoch=1)
        batches = [order[i:i + batch] for i in range(0, len(order) - batch + 1, batch)]

        def loader(read: Any) -> tuple[float, float]:
            t = time.perf_counter()
            first = None
            for _ in Prefetcher(read, batches):
                first = first if first is not None else time.perf_counter() - t
            return len(batches) * batch / (time.perf_counter() - t), first or 0.0

        with tempfile.TemporaryDirectory() as tmp:
            staged = StagedSplit(split, FolderObjects("gs://bench-data/verified"), 2 * total, tmp)
            staged.plan(batches)
            staged_img_s, staged_first = loader(staged.read)
            st = dict(staged.stats)
            staged.close()
        local_img_s, local_first = loader(split.read)
        row = split.row_bytes
        reads = [(s.file, i * row) for s in shards for i in range(0, s.count, 1)][:600]
        with ThreadPoolExecutor(8) as pool:
            t = time.perf_counter()
            list(pool.map(lambda fr: bucket.blob(f"verified/{fr[0]}").download_as_bytes(start=fr[1],
                                                                                      end=fr[1] + row - 1), reads))
            ranged = len(reads) * row / (time.perf_counter() - t) / 1e6
    return {"staged_mib": total / 2**20, "shards": len(shards), "staged_img_s": staged_img_s,
            "staged_first_s": staged_first, "staged_mb_s": st["downloaded_bytes"] / 1e6 / st["download_seconds"],
            "staged_wait_s": st["wait_seconds"], "local_img_s": local_img_s, "local_first_s": local_first,
            "row_range_mb_s": ranged, "row_range_img_s": ranged * 1e6 / row, "row_reads": len(reads)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=2000, help="training photos of the small set (N)")
    ap.add_argument("--scale", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "photo-detector-data-scale")
    ap.add_argument("--skip-gcs", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--gpus", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    from photo_detector.config import load_config
    from photo_detector.data.packed import FORMAT_VERSION
    from photo_detector.data.sample import generate_sample, split_counts
    from photo_detector.verify import run_verify

    overrides = {"data.batch_size": args.batch, "model.pretrained": False, "train.device": "cpu",
                 "train.precision": "fp32", "verify.min_images_per_class": 2, "data.num_workers": 0}
    cfg = load_config(None, overrides)
    sets = {}
    for n in (args.photos, args.photos * args.scale):
        per_class = next(k for k in range(n // 2, n) if 2 * split_counts(k)["train"] >= n)
        root, packed = args.work / f"photos-{n}", args.work / f"verified-{n}"
        if not (root / "test").is_dir():
            print(f"generating {n} training photos (320 px JPEG) in {root}", file=sys.stderr, flush=True)
            generate_sample(root, per_class=per_class, size=320, fmt="jpeg", quality=(90, 90), force=True)
        manifest = packed / "manifest.json"
        if not manifest.is_file() or json.loads(manifest.read_text()).get("format_version") != FORMAT_VERSION:
            t = time.perf_counter()
            run_verify(root, packed, cfg)
            print(f"verify-data {n}: {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
        sets[n] = (root, packed)

    n, big = args.photos, args.photos * args.scale
    runs = {"N": measure(sets[n][1], overrides, args.steps, 1),
            f"{args.scale}N": measure(sets[big][1], overrides, args.steps, 1),
            f"{args.scale}N gpus=2": measure(sets[big][1], overrides, args.steps, 2)}
    base = runs["N"]["peak_rss_mib"]
    print(f"\n## Train stage, {args.steps} steps of batch {args.batch} at 224 px, CPU ({os.cpu_count()} cores)\n")
    print("| run | training rows | peak RSS (MiB) | vs N | whole tree RSS / PSS (MiB) | first batch (s) "
          "| loader img/s | model img/s | loader / model |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        print(f"| {name} | {r['rows']} | {r['peak_rss_mib']:.0f} | {r['peak_rss_mib'] / base:.2f}x | "
              f"{r['peak_tree_mib']:.0f} / {r['peak_tree_pss_mib']:.0f} | {r['first_batch_s']:.1f} | "
              f"{r['loader_img_s']:.0f} | {r['train_img_s']:.1f} | {r['loader_img_s'] / r['train_img_s']:.0f}x |")
    two, one = runs[f"{args.scale}N gpus=2"], runs[f"{args.scale}N"]
    print(f"\ngpus=2: each training process {', '.join(f'{v:.0f}' for v in two['trainers_mib'])} MiB "
          f"({max(two['trainers_mib']) / one['peak_rss_mib']:.2f}x one process); the whole tree (launcher + 2 "
          f"trainers) {two['peak_tree_mib']:.0f} MiB RSS, {two['peak_tree_pss_mib']:.0f} MiB PSS "
          f"({two['peak_tree_pss_mib'] / one['peak_tree_pss_mib']:.2f}x one process's PSS)")

    c = contents(sets[n][0], sets[n][1], int(load_config(None, overrides).data.resize_size))
    print(f"\n## Shard contents ({c['threads']} loader threads)\n")
    print("| content | bytes/image | loader img/s |")
    print("|---|---|---|")
    for name in ("squares", "source"):
        print(f"| {name} | {c[name]['bytes_per_image'] / 1e3:.1f} KB | {c[name]['loader_img_s']:.0f} |")
    if not args.skip_gcs:
        g = cloud_storage(sets[big][1])
        print(f"\n## Cloud Storage (fake-gcs-server, {g['staged_mib']:.0f} MiB in {g['shards']} shards, one epoch's "
              "window order, batch 32)\n")
        print("| read path | loader img/s | vs staged | first batch (s) |")
        print("|---|---|---|---|")
        print(f"| staged: whole shards through the client, 4 in flight (built) | {g['staged_img_s']:.0f} | 1.00x | "
              f"{g['staged_first_s']:.2f} |")
        print(f"| row-sized range reads, 8 in flight (row reads via the mount) | {g['row_range_img_s']:.0f} | "
              f"{g['row_range_img_s'] / g['staged_img_s']:.2f}x | |")
        print(f"| local disk (the same reads, no Cloud Storage) | {g['local_img_s']:.0f} | "
              f"{g['local_img_s'] / g['staged_img_s']:.2f}x | {g['local_first_s']:.2f} |")
        print(f"\nstaged downloads: {g['staged_mb_s']:.0f} MB/s each, 4 in flight; reads waited "
              f"{g['staged_wait_s']:.1f} s for staging; row range reads {g['row_range_mb_s']:.0f} MB/s")

if __name__ == "__main__":
    main()
