"""`photo-detector`: the command line; every subcommand is a thin call into a library stage function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from photo_detector import __version__
from photo_detector.errors import PhotoDetectorError

log = logging.getLogger("photo_detector")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE|PROFILE",
                   help="YAML overriding the packaged defaults, or a profile name (e.g. sample)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.warmup_epochs=0 (repeatable)")


def _config(args: argparse.Namespace, flags: dict[str, Any] | None = None):
    from photo_detector.config import load_config, parse_override

    overrides = dict(parse_override(o) for o in args.overrides)
    overrides.update({k: v for k, v in (flags or {}).items() if v is not None})
    return load_config(args.config, overrides)


def cmd_config_show(args: argparse.Namespace) -> int:
    print(_config(args).to_yaml(), end="")
    return 0


def cmd_data_sample(args: argparse.Namespace) -> int:
    from photo_detector.data.sample import generate_sample

    res = generate_sample(args.out, per_class=args.per_class, size=args.size, seed=args.seed, force=args.force)
    total = sum(sum(c.values()) for c in res.counts.values())
    counts = ", ".join(f"{s} {c['real']}+{c['ai_generated']}" for s, c in res.counts.items())
    print(f"wrote {total} images ({counts}; real+ai_generated) of {args.size}px to {res.root} "
          f"in {res.seconds:.1f}s")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from photo_detector.train import run_train

    cfg = _config(args, {"train.epochs": args.epochs, "data.batch_size": args.batch_size,
                         "train.learning_rate": args.learning_rate, "model.weights": args.weights,
                         "train.device": args.device})
    res = run_train(args.data, args.out, cfg, resume=args.resume, force=args.force)
    m = res.best_metrics
    print(f"best epoch {res.best_epoch}/{res.epochs_run}: val_accuracy {m['val_accuracy']:.4f} "
          f"val_f1 {m['val_f1']:.4f}{' (stopped early)' if res.stopped_early else ''}; "
          f"{res.seconds:.1f}s; model: {res.onnx_path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from photo_detector.evaluate import run_evaluate

    res = run_evaluate(args.model, args.data, split=args.split, threshold=args.threshold, out_dir=args.out)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
    else:
        cm = res.confusion_matrix
        print(f"{res.split} ({res.n_images} images): accuracy {res.accuracy:.4f}  precision {res.precision:.4f}"
              f"  recall {res.recall:.4f}  f1 {res.f1:.4f}  roc_auc {res.roc_auc:.4f}\n"
              f"confusion (rows true real/ai, cols predicted): {cm[0]} {cm[1]}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from photo_detector.demo import run_demo

    cfg = _config(args, {"train.epochs": args.epochs})
    res = run_demo(args.out, cfg, data=args.data)
    e, d = res.evaluation, res.decision
    print(f"\nrun folder: {res.run_dir}")
    print(f"  model:      {res.train.onnx_path} (best epoch {res.train.best_epoch}, "
          f"val_accuracy {res.train.best_val_accuracy:.4f})")
    print(f"  evaluation: test accuracy {e.accuracy:.4f}, f1 {e.f1:.4f}, roc_auc {e.roc_auc:.4f} "
          f"on {e.n_images} images")
    print(f"  gate:       {'PASSED' if d.passed else 'FAILED'} ({d.rule}): "
          + "; ".join(c.reason for c in d.checks))
    print("  time:       " + ", ".join(f"{k} {v:.1f}s" for k, v in res.seconds.items()))
    return 0 if d.passed else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="photo-detector", description=__doc__)
    parser.add_argument("--version", action="version", version=f"photo-detector {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("config", help="inspect the resolved config")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    p = csub.add_parser("show", help="print the config after defaults, --config and --set")
    _add_config_args(p)
    p.set_defaults(func=cmd_config_show)

    p = sub.add_parser("data", help="datasets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = dsub.add_parser("sample", help="write the offline, deterministic sample dataset")
    p.add_argument("out", type=Path, help="folder to create (train|val|test/{real,ai_generated})")
    p.add_argument("--per-class", type=int, default=800, help="images per class over all splits (70/15/15)")
    p.add_argument("--size", type=int, default=72, help="image side in pixels")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--force", action="store_true", help="replace an existing non-empty folder")
    p.set_defaults(func=cmd_data_sample)

    p = sub.add_parser("train", help="train, checkpoint and export the model")
    _add_config_args(p)
    p.add_argument("--data", type=Path, required=True, help="dataset folder with train/ and val/")
    p.add_argument("--out", type=Path, required=True, help="output folder (checkpoints, metrics, ONNX)")
    p.add_argument("--epochs", type=int, help="train.epochs")
    p.add_argument("--batch-size", type=int, help="data.batch_size")
    p.add_argument("--learning-rate", type=float, help="train.learning_rate")
    p.add_argument("--weights", help="model.weights: pretrained weights file, gs:// URI or hf-hub:ORG/NAME")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="train.device")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--force", action="store_true", help="overwrite results already in --out")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="sample data -> train -> evaluate -> gate, in-process (no kfp)")
    _add_config_args(p)
    p.set_defaults(config="sample")
    p.add_argument("--out", type=Path, default=Path("runs"), help="parent of the timestamped run folder")
    p.add_argument("--data", type=Path, help="dataset folder (default: generate the sample dataset)")
    p.add_argument("--epochs", type=int, help="train.epochs")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("evaluate", help="score an exported model on a split's image files")
    p.add_argument("--model", type=Path, required=True, help="a train --out folder (model.onnx + model.json)")
    p.add_argument("--data", type=Path, required=True, help="dataset folder")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--threshold", type=float, help="classification threshold (default: the model's)")
    p.add_argument("--out", type=Path, help="write eval.json here")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    from photo_detector.progress import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except PhotoDetectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
