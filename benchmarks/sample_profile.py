"""The `sample` profile on the sample data (as `photo-detector demo` runs it): training wall time and val
accuracy on this machine. Target: <= 3 minutes on 2 CPU cores, val accuracy >= 0.90.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from photo_detector.config import load_config
from photo_detector.data.sample import generate_sample
from photo_detector.train import run_train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--per-class", type=int, default=800)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        data = generate_sample(Path(tmp) / "data", per_class=args.per_class).root
        sample_s = time.perf_counter() - t
        res = run_train(data, Path(tmp) / "model", load_config("sample"))
    print(f"sample profile on {os.cpu_count()} cores: data {sample_s:.1f}s, train+export {res.seconds:.1f}s "
          f"({res.epochs_run} epochs{', early stop' if res.stopped_early else ''})")
    print(f"  best val_accuracy {res.best_val_accuracy:.4f} at epoch {res.best_epoch} (target >= 0.90)")
    print(f"  total {sample_s + res.seconds:.1f}s vs 180s budget: {(sample_s + res.seconds) / 180:.2f}x of it")


if __name__ == "__main__":
    main()
