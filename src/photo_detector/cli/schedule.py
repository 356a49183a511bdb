"""`schedule`, `runs`, `template`: recurring runs, past runs and pipeline templates on Vertex AI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from photo_detector import __version__
from photo_detector.cli.cloud import preflight
from photo_detector.cli.common import add_cloud_args, add_config_args, cloud_settings, parse_labels, print_rows


def cmd_schedule(args: argparse.Namespace) -> int:
    from photo_detector.cloud import schedules

    settings = cloud_settings(args)
    if args.schedule_command == "create":
        preflight(args, settings)
        s = schedules.create_schedule(
            settings, args.template, cron=args.cron, time_zone=args.time_zone, display_name=args.display_name,
            params=args.params, labels=parse_labels(args.labels), max_concurrent_runs=args.max_concurrent_runs,
            max_runs=args.max_runs, start_time=args.start_time, end_time=args.end_time,
            caching={"on": True, "off": False, "default": None}[args.caching])
        info = schedules.describe_schedule(s)
        print(f"created schedule {info['id']} ({info['display_name']}): {info['cron']}, state {info['state']}")
        return 0
    if args.schedule_command == "list":
        print_rows(schedules.list_schedules(settings),
                    ["id", "display_name", "state", "cron", "next_run_time", "started_run_count"], args.json)
        return 0
    info = schedules.change_schedule(settings, args.schedule_id, args.schedule_command)
    print(f"schedule {info['id']}: {info['state']}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from photo_detector.cloud import schedules

    settings = cloud_settings(args)
    if args.runs_command == "list":
        print_rows(schedules.list_runs(settings, args.limit), ["id", "state", "created", "duration_s"], args.json)
        return 0
    if args.runs_command == "get" and args.metrics:
        return _print_epoch_metrics(*schedules.epoch_metrics(settings, args.run_id), as_json=args.json)
    run = (schedules.get_run if args.runs_command == "get" else schedules.cancel_run)(settings, args.run_id)
    if args.json or args.runs_command == "get":
        print(json.dumps(run, indent=2, default=str))
    else:
        print(f"run {run['id']}: {run['state']}")
    return 0


EPOCH_COLUMNS = (("epoch", "epoch", "d"), ("train_loss", "train loss", ".4f"), ("train_accuracy", "train acc", ".4f"),
                 ("val_loss", "val loss", ".4f"), ("val_accuracy", "val acc", ".4f"), ("val_f1", "val f1", ".4f"),
                 ("learning_rate", "lr", ".2e"), ("images_per_second", "img/s", ".0f"), ("seconds", "seconds", ".1f"))


def _print_epoch_metrics(run: dict[str, Any], model_uri: str, rows: list[dict[str, str]], *, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"run": run, "model": model_uri, "epochs": rows}, indent=2, default=str))
        return 0
    print(f"run {run['id']}: {run['state']}; model {model_uri}")
    if not rows:
        print("  no epoch has finished yet")
        return 0
    print("  " + " ".join(f"{title:>10}" for _, title, _ in EPOCH_COLUMNS))
    for row in rows:
        cells = []
        for key, _, fmt in EPOCH_COLUMNS:
            try:
                value = int(row[key]) if fmt == "d" else float(row[key])
                cells.append(f"{value:>10{fmt}}")
            except (KeyError, ValueError):  # a column an older run did not write
                cells.append(f"{'-':>10}")
        print("  " + " ".join(cells))
    return 0


def cmd_template_upload(args: argparse.Namespace) -> int:
    from photo_detector.cloud.templates import upload_template

    res = upload_template(cloud_settings(args), args.file, args.tags or [__version__, "latest"])
    print(f"uploaded {args.file} to {res.host} as {res.package} {res.version} (tags: {', '.join(res.tags)})")
    return 0


def add_schedule(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("schedule", help="recurring pipeline runs (Vertex AI schedules)")
    ssub = p.add_subparsers(dest="schedule_command", required=True, metavar="ACTION")
    p = ssub.add_parser("create", help="run the pipeline on a cron schedule")
    add_config_args(p)
    add_cloud_args(p, "pipeline_root", "service_account", "kfp_repository", "experiment")
    p.add_argument("--cron", required=True, help="5-field cron, e.g. '0 3 * * 1' (Mondays 03:00)")
    p.add_argument("--time-zone", default="Etc/UTC", help="IANA time zone of the cron (default Etc/UTC)")
    p.add_argument("--template", default="compiled/training_pipeline.yaml", help="compiled YAML or NAME:TAG")
    p.add_argument("--display-name")
    p.add_argument("--param", dest="params", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--label", dest="labels", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--max-concurrent-runs", type=int, default=1)
    p.add_argument("--max-runs", type=int, help="stop after this many runs")
    p.add_argument("--start-time", help="ISO 8601; default now")
    p.add_argument("--end-time", help="ISO 8601; default never")
    p.add_argument("--caching", choices=["on", "off", "default"], default="default")
    p.add_argument("--skip-checks", action="store_true", help="create it without the preflight checks")
    p.set_defaults(func=cmd_schedule)
    p = ssub.add_parser("list", help="schedules with state, cron and next run")
    add_config_args(p)
    add_cloud_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_schedule)
    for action in ("pause", "resume", "delete"):
        p = ssub.add_parser(action, help=f"{action} a schedule")
        add_config_args(p)
        add_cloud_args(p)
        p.add_argument("schedule_id", help="the schedule's id or full resource name")
        p.set_defaults(func=cmd_schedule)


def add_runs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="recent pipeline runs")
    rsub = p.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    p = rsub.add_parser("list", help="recent runs, newest first, with state and duration")
    add_config_args(p)
    add_cloud_args(p)
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)
    for action in ("get", "cancel"):
        p = rsub.add_parser(action, help=f"{action} a run")
        add_config_args(p)
        add_cloud_args(p)
        p.add_argument("run_id", help="the run's id or full resource name")
        p.add_argument("--json", action="store_true")
        if action == "get":
            p.add_argument("--metrics", action="store_true",
                           help="the per-epoch table of its train task (while it runs, too)")
        p.set_defaults(func=cmd_runs)


def add_template(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("template", help="pipeline templates in Artifact Registry")
    tsub = p.add_subparsers(dest="template_command", required=True, metavar="ACTION")
    p = tsub.add_parser("upload", help="push a compiled spec to the KFP repository with tags")
    add_config_args(p)
    add_cloud_args(p, "kfp_repository")
    p.add_argument("file", nargs="?", type=Path, default=Path("compiled/training_pipeline.yaml"))
    p.add_argument("--tag", dest="tags", action="append", metavar="TAG",
                   help=f"repeatable; default: {__version__} and latest")
    p.set_defaults(func=cmd_template_upload)


PARSERS = {"schedule": add_schedule, "runs": add_runs, "template": add_template}
