"""`compile`, `run-local`, `demo` and `config show`: the pipeline as a whole, on this machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from photo_detector.cli.common import add_config_args, config_from


def cmd_config_show(args: argparse.Namespace) -> int:
    print(config_from(args).to_yaml(), end="")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from photo_detector.cloud.naming import image_registry, project_id
    from photo_detector.pipelines.compile import compile_pipeline

    cfg = config_from(args, {"images.registry": args.registry, "images.tag": args.image_tag})
    project = project_id(cfg, args.project) or None
    path = compile_pipeline(cfg, args.output, project)
    print(f"compiled {cfg.pipeline.name} with images {image_registry(cfg, project)}/<image>:{cfg.images.tag} "
          f"to {path}")
    return 0


def cmd_run_local(args: argparse.Namespace) -> int:
    from photo_detector.pipelines.local_run import run_local

    cfg = config_from(args, {"train.epochs": args.epochs})
    res = run_local(cfg, out=args.out, data=args.data, per_class=args.per_class,
                    verbose=args.stream or args.verbose)
    print(f"\nrun folder: {res.run_dir}  ({res.wall_seconds:.1f}s; kfp overhead "
          f"{res.kfp_overhead_per_task:.2f}s per task over {len(res.stages)} tasks)")
    for record in res.stages:
        summary = record.get("summary") or {}
        details = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items())
        print(f"  {record['stage']:<13} {record['status']:<9} {record['seconds']:6.1f}s  {details}")
    if not res.succeeded:
        log_path = res.task_logs.get(res.failed_task or "")
        print(f"\ntask {res.failed_task} FAILED: {res.error}", file=sys.stderr)
        print(f"its log: {log_path or res.run_dir / 'logs'}", file=sys.stderr)
        return 1
    gate = res.stage("quality-gate")
    passed = bool(gate and gate["summary"]["passed"])
    print(f"\ngate {'PASSED' if passed else 'FAILED'}: " + "; ".join(gate["summary"]["checks"] if gate else []))
    if res.stage("deploy"):
        print(f"deploy (dry run): plan in {res.stage('deploy')['summary']['plan']}")
    else:
        print("deploy skipped (gate failed or auto_deploy false)")
    return 0 if passed else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from photo_detector.cloud.weights import fetch_weights
    from photo_detector.demo import run_demo

    cfg = config_from(args, {"train.epochs": args.epochs})
    fetch_weights(cfg.model)
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


def add_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="inspect the resolved config")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    p = csub.add_parser("show", help="print the config after defaults, --config and --set")
    add_config_args(p)
    p.set_defaults(func=cmd_config_show)


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="sample data -> train -> evaluate -> gate, in-process (no kfp)")
    add_config_args(p)
    p.set_defaults(config="sample")
    p.add_argument("--out", type=Path, default=Path("runs"), help="parent of the timestamped run folder")
    p.add_argument("--data", type=Path, help="dataset folder (default: generate the sample dataset)")
    p.add_argument("--epochs", type=int, help="train.epochs")
    p.set_defaults(func=cmd_demo)


def add_compile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile", help="compile the KFP pipeline spec Vertex AI runs")
    add_config_args(p)
    p.add_argument("--output", type=Path, default=Path("compiled/training_pipeline.yaml"))
    p.add_argument("--registry", help="images.registry: where the stage images live")
    p.add_argument("--image-tag", help="images.tag: e.g. the commit the images were built from")
    p.add_argument("--project", help="the project whose registry and data bucket the spec names (default: "
                                     "$PHOTO_DETECTOR_PROJECT or gcp.project; none = the placeholder PROJECT_ID)")
    p.set_defaults(func=cmd_compile)


def add_run_local(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run-local", help="run the whole KFP pipeline locally (kfp local, no cloud)")
    add_config_args(p)
    p.set_defaults(config="sample")
    p.add_argument("--data", type=Path, help="dataset folder (default: generate the sample dataset)")
    p.add_argument("--out", type=Path, default=Path("runs"), help="parent of the timestamped run folder")
    p.add_argument("--per-class", type=int, default=800, help="sample images per class when generating")
    p.add_argument("--epochs", type=int, help="train.epochs")
    p.add_argument("--verbose", dest="stream", action="store_true",
                   help="stream every task's full output (default: one line per stage start and end, one per loop; the "
                        "full output is in <run folder>/logs/<task>.log either way)")
    p.set_defaults(func=cmd_run_local)


PARSERS = {"config": add_config, "demo": add_demo, "compile": add_compile, "run-local": add_run_local}
