"""Time-to-accuracy on CIFAKE-shaped data (32 px JPEGs) at several training resolutions: what the `cifake`
profile's image size is chosen from.

Training at 224 px upsamples each 32 px image 49x in pixels; a smaller input is cheaper per image but may
learn less. Each size trains from the same seed on the same data for the same wall-clock budget (constant
learning rate after one warmup epoch, so a cut-off wastes no schedule); the table gives img/s, epochs, the
best validation accuracy inside the budget and the time at which validation accuracy first reached the
target. Baseline: 224 px, the default config's size; ratios are against it, measured in the same run.

    python benchmarks/resolution.py                              # CPU: small budget
    python benchmarks/resolution.py --per-class 6000 --budget 90 --device cuda   # a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from photo_detector.config import load_config
from photo_detector.data.sample import generate_sample
from photo_detector.errors import PhotoDetectorError
from photo_detector.train import run_train


class _Budget(Exception):
    pass


def measure(data: Path, out: Path, size: int, args: argparse.Namespace) -> dict:
    cfg = load_config(None, {
        "data.image_size": size, "data.crop_pct": 1.0, "data.batch_size": args.batch_size,
        "model.pretrained": False, "train.epochs": 1000, "train.warmup_epochs": 1, "train.scheduler": "constant",
        "train.learning_rate": args.lr, "train.early_stopping_patience": 0, "train.device": args.device,
        "augmentation.rotation_degrees": 0.0, "seed": 7})
    rows: list[dict] = []
    start = time.perf_counter()

    def on_epoch_end(row: dict) -> None:
        rows.append({**row, "elapsed": time.perf_counter() - start})
        if rows[-1]["elapsed"] + row["seconds"] > args.budget:  # the next epoch would overrun the budget
            raise _Budget

    with contextlib.suppress(_Budget):
        run_train(data, out, cfg, on_epoch_end=on_epoch_end)
    if not rows:
        raise PhotoDetectorError(f"{size} px: no epoch finished within {args.budget}s", "raise --budget")
    images = sum(r["seconds"] for r in rows)
    hit = next((r["elapsed"] for r in rows if r["val_accuracy"] >= args.target), None)
    return {"size": size, "epochs": len(rows), "seconds": rows[-1]["elapsed"],
            "best_val_accuracy": max(r["val_accuracy"] for r in rows), "time_to_target": hit,
            "epoch_seconds": images / len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64,96,128,224")
    ap.add_argument("--per-class", type=int, default=600, help="CIFAKE-shaped images per class (70/15/15 split)")
    ap.add_argument("--budget", type=float, default=60.0, help="training seconds per size")
    ap.add_argument("--target", type=float, default=0.85, help="validation accuracy whose time is reported")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        data = generate_sample(Path(tmp) / "data", per_class=args.per_class, size=32, fmt="jpeg").root
        print(f"CIFAKE-shaped data: {2 * args.per_class} 32 px JPEGs in {time.perf_counter() - t:.1f}s", flush=True)
        rows = []
        for size in sizes:
            row = measure(data, Path(tmp) / f"m{size}", size, args)
            train_images = sum(1 for _ in (data / "train").rglob("*.jpg"))
            row["img_per_s"] = train_images / row["epoch_seconds"]
            rows.append(row)
            hit = "-" if row["time_to_target"] is None else f"{row['time_to_target']:.1f}s"
            print(f"  {size:>4} px: {row['epochs']:>3} epochs in {row['seconds']:6.1f}s, {row['img_per_s']:7.0f} "
                  f"img/s, best val_accuracy {row['best_val_accuracy']:.4f}, time to {args.target:.2f}: {hit}",
                  flush=True)
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else \
        f"CPU, {os.cpu_count()} cores"
    base = next((r for r in rows if r["size"] == 224), rows[-1])
    print(f"\ntime-to-accuracy on {device}, budget {args.budget:.0f}s per size, target val_accuracy {args.target}")
    print("| size | img/s | x 224 px | epochs | best val acc | time to target |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        hit = "not reached" if r["time_to_target"] is None else f"{r['time_to_target']:.1f} s"
        print(f"| {r['size']} | {r['img_per_s']:.0f} | {r['img_per_s'] / base['img_per_s']:.1f}x | {r['epochs']} | "
              f"{r['best_val_accuracy']:.4f} | {hit} |")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "budget": args.budget, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
