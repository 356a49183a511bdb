"""What the robustness suite costs the evaluate stage: images/s of each pass (the clean split, then each
perturbation) through the ONNX model and the serving preprocessing, each against the clean pass measured in
the same run, and what a 20,000-image test split costs with `evaluate.max_images_per_perturbation`.

The model is EfficientNet-B0 + head at 224 px (benchmarks/serve.py --make-model: untrained weights, the
production graph); the photos are `data sample --size 320 --format jpeg` product-photo stand-ins.

    python benchmarks/evaluate_suite.py [--per-class 60] [--cap 2000] [--split-size 20000]
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from photo_detector.config import load_config
from photo_detector.data.sample import generate_sample
from photo_detector.evaluate import run_evaluate
from photo_detector.io import usable_cores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=60, help="sample images per class (test split: 15%%)")
    ap.add_argument("--cap", type=int, default=load_config().evaluate.max_images_per_perturbation,
                    help="evaluate.max_images_per_perturbation for the projection (default: the config's)")
    ap.add_argument("--split-size", type=int, default=20_000, help="test split size to project the cost for")
    ap.add_argument("--model-dir", type=Path, help="a folder made by benchmarks/serve.py --make-model")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model_dir
        if model is None:
            model = Path(tmp) / "model"
            subprocess.run([sys.executable, str(Path(__file__).with_name("serve.py")), "--make-model", str(model)],
                           check=True)
        data = generate_sample(Path(tmp) / "data", per_class=args.per_class, size=320, fmt="jpeg").root
        cfg = load_config(None, {"evaluate.bootstrap_samples": 1000})
        start = time.perf_counter()
        res = run_evaluate(model, data, cfg=cfg)
        total = time.perf_counter() - start
    rows = res.robustness
    clean = rows[0]["images_per_second"]
    print(f"evaluate suite on {usable_cores()} cores, {res.n_images} test images (320 px JPEG -> 224 px), "
          f"{len(rows) - 1} perturbations: {total:.1f} s in all")
    print(f"{'pass':<16}{'images':>8}{'img/s':>9}{'vs clean':>10}")
    for r in rows:
        print(f"{r['perturbation']:<16}{r['images']:>8}{r['images_per_second']:>9.1f}"
              f"{r['images_per_second'] / clean:>9.2f}x")
    sampled = min(args.cap, args.split_size) if args.cap else args.split_size
    projected = args.split_size / clean + sum(sampled / r["images_per_second"] for r in rows[1:])
    uncapped = args.split_size / clean + sum(args.split_size / r["images_per_second"] for r in rows[1:])
    print(f"projected for a {args.split_size:,}-image test split: {projected / 60:.1f} min with the cap of "
          f"{args.cap:,} per perturbation ({uncapped / 60:.1f} min uncapped, {projected / uncapped:.2f}x; "
          f"clean pass alone {args.split_size / clean / 60:.1f} min)")


if __name__ == "__main__":
    main()
