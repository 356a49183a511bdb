"""`train`, `export`, `evaluate`, `gate`: one model, from checkpoint to pass/fail."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from photo_detector.cli.common import add_config_args, config_from
from photo_detector.errors import PhotoDetectorError


def cmd_train(args: argparse.Namespace) -> int:
    from photo_detector.artifacts import LOGS
    from photo_detector.cloud.gcs import staging_source
    from photo_detector.cloud.weights import fetch_weights
    from photo_detector.train import run_train

    cfg = config_from(args, {"train.epochs": args.epochs, "data.batch_size": args.batch_size,
                         "train.learning_rate": args.learning_rate, "model.weights": args.weights,
                         "train.device": args.device, "train.gpus": args.gpus})
    fetch_weights(cfg.model)
    res = run_train(args.data, args.out, cfg, resume=args.resume, force=args.force,
                    stage=staging_source(args.data))
    m = res.best_metrics
    why = {"early_stopping": " (stopped early)", "budget": f" (time budget of {cfg.train.max_minutes:g} min)"}
    print(f"best epoch {res.best_epoch}/{res.epochs_run}: val_accuracy {m['val_accuracy']:.4f} "
          f"val_f1 {m['val_f1']:.4f}{why.get(res.stopped_by, '')}; {res.seconds:.1f}s; model: {res.onnx_path}; "
          f"logs: tensorboard --logdir {res.out_dir / LOGS}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from photo_detector.export import export_checkpoint

    record = export_checkpoint(args.checkpoint, args.out, config_from(args), args.data, force=args.force)
    val = record.val_metrics
    print(f"exported {args.checkpoint} -> {args.out}: val_accuracy {val['val_accuracy']:.4f} val_f1 "
          f"{val['val_f1']:.4f} on {record.val_images} images; ONNX parity {record.onnx_parity_max_abs_diff:.2e}\n"
          f"deploy it: photo-detector deploy --model {args.out} --local   (or --service NAME)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from photo_detector.evaltables import markdown, robustness_frame, summary_markdown
    from photo_detector.evaluate import run_evaluate

    res = run_evaluate(args.model, args.data, split=args.split, threshold=args.threshold, out_dir=args.out,
                       cfg=config_from(args))
    result = res.to_dict()
    if args.out is not None:
        from photo_detector.io import write_text_atomic
        from photo_detector.reports import evaluation_report

        write_text_atomic(args.out / "report.html", evaluation_report(result))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    cm = res.confusion_matrix
    print(summary_markdown(result).split("\n## Robustness")[0].rstrip())
    print(f"- confusion (rows true real/ai, cols predicted): {cm[0]} {cm[1]}\n")
    print(markdown(robustness_frame(result)))
    if args.out is not None:
        print(f"\nwrote {args.out}: eval.json, evaluation.md, report.html, robustness.csv|md|html, "
              "sources.csv|md|html")
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from photo_detector.gate import run_gate

    def read(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise PhotoDetectorError(f"cannot read metrics file {path}: {exc}",
                                     "pass the eval.json written by `photo-detector evaluate --out`") from None
        return data.get("metrics", data) if isinstance(data, dict) else {}

    cfg = config_from(args, {"gate.min_accuracy": args.min_accuracy, "gate.min_f1": args.min_f1})
    decision = run_gate(read(args.metrics), cfg.gate, read(args.champion) if args.champion else None)
    if args.json:
        print(json.dumps(decision.to_dict(), indent=2))
    else:
        print(f"{'PASSED' if decision.passed else 'FAILED'} ({decision.rule})")
        for c in decision.checks:
            print(f"  {'pass' if c.passed else 'FAIL'}  {c.name}: {c.reason}")
    return 0 if decision.passed else 1


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train, checkpoint and export the model")
    add_config_args(p)
    p.add_argument("--data", type=Path, required=True, help="dataset folder with train/ and val/")
    p.add_argument("--out", type=Path, required=True, help="output folder (checkpoints, metrics, ONNX)")
    p.add_argument("--epochs", type=int, help="train.epochs")
    p.add_argument("--batch-size", type=int, help="data.batch_size")
    p.add_argument("--learning-rate", type=float, help="train.learning_rate")
    p.add_argument("--weights", help="model.weights: pretrained weights file, gs:// URI or hf-hub:ORG/NAME")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="train.device")
    p.add_argument("--gpus", type=int, help="train.gpus: one training process per GPU (DDP); --batch-size stays "
                                            "the global batch")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--force", action="store_true", help="overwrite results already in --out")
    p.set_defaults(func=cmd_train)


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="turn a bare checkpoint (best.pt from anywhere) into a deployable model folder")
    add_config_args(p)
    p.add_argument("checkpoint", type=Path, help="a torch.save file: ours, the training guide's, or a bare state dict")
    p.add_argument("--out", type=Path, required=True, help="model folder to write (ONNX, model.json, smoke images)")
    p.add_argument("--data", type=Path, required=True,
                   help="a dataset with val/{real,ai_generated} (the checkpoint's validation data): ONNX parity, "
                        "validation metrics and the smoke test's known images")
    p.add_argument("--force", action="store_true", help="overwrite results already in --out")
    p.set_defaults(func=cmd_export)


def add_gate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gate", help="decide pass/fail on an eval.json (the quality-gate stage)")
    add_config_args(p)
    p.add_argument("--metrics", type=Path, required=True, help="eval.json of the candidate")
    p.add_argument("--champion", type=Path, help="eval.json of the model in production, if any")
    p.add_argument("--min-accuracy", type=float, help="gate.min_accuracy")
    p.add_argument("--min-f1", type=float, help="gate.min_f1")
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.set_defaults(func=cmd_gate)


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score an exported model on a split's image files")
    p.add_argument("--model", type=Path, required=True, help="a train --out folder (model.onnx + model.json)")
    p.add_argument("--data", type=Path, required=True, help="dataset folder")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--threshold", type=float, help="classification threshold (default: the model's)")
    p.add_argument("--out", type=Path, help="write eval.json, the tables and report.html here")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    add_config_args(p)  # evaluate.* (perturbations, sample cap, intervals) and seed
    p.set_defaults(func=cmd_evaluate)


PARSERS = {"train": add_train, "export": add_export, "gate": add_gate, "evaluate": add_evaluate}
