"""`setup`, `doctor`, `submit`, `deploy`: a Google Cloud project and what runs in it."""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
from pathlib import Path
from typing import Any

from photo_detector.cli.common import (
    add_cloud_args,
    add_config_args,
    cloud_settings,
    config_from,
    parse_labels,
    tempfile_name,
)
from photo_detector.errors import PhotoDetectorError


def cmd_setup(args: argparse.Namespace) -> int:
    from photo_detector.cloud.project import roles_table, run_setup

    if args.print_roles:
        print(roles_table())
        return 0
    settings = cloud_settings(args)
    settings.require("project")
    marks = {"ok": "ok   ", "would": "would", "done": "done "}

    def show(step: Any, status: str) -> None:
        print(f"  {marks[status]} {step.what}", flush=True)

    print(f"{'plan for' if args.dry_run else 'setting up'} project {settings.project} in {settings.region}:")
    res = run_setup(config_from(args), settings, dry_run=args.dry_run, on_step=show)
    for line in res.printed:
        print(f"\n{line}")
    if args.dry_run:
        print(f"\n{res.changes} change(s) to make; run without --dry-run to make them")
    elif res.changes == 0:
        print("\nnothing to change: the project already has everything photo-detector needs")
    settings_yaml = "gcp:\n" + "".join(f"  {k.split('.', 1)[1]}: {v}\n" for k, v in res.settings.items())
    if args.write_config and not args.dry_run:
        from photo_detector.io import write_text_atomic

        write_text_atomic(args.write_config, settings_yaml)
        print(f"wrote these settings to {args.write_config} (use it with --config {args.write_config}):")
    else:
        print("\nsettings for your config file (or pass --write-config FILE):")
    print(settings_yaml, end="")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from photo_detector.cloud.naming import data_uri
    from photo_detector.cloud.project import run_doctor

    settings = cloud_settings(args)
    spec = None
    if args.template:
        spec, _ = template_spec(args, settings)
    uri = args.data_uri or data_uri(config_from(args), settings.project)
    failed = 0
    for check in run_doctor(config_from(args), settings, spec=spec, data_uri=uri):
        print(f"{'PASS' if check.passed else 'FAIL'}  {check.name:<16} {check.detail}", flush=True)
        if not check.passed:
            failed += 1
            print(f"      fix: {check.fix}", flush=True)
    print(f"\n{failed} check(s) failed" if failed else "\nall checks passed")
    return 1 if failed else 0


def preflight(args: argparse.Namespace, settings: Any) -> None:
    """The fast subset of doctor before anything is sent; refuses with the failing lines. First of all, a spec
    compiled for another project (or for none) is refused with the two fixes, before any request is made."""
    if getattr(args, "skip_checks", False):
        return
    from photo_detector.cloud.naming import check_spec_project, data_uri
    from photo_detector.cloud.project import FAST, run_doctor

    spec, params = template_spec(args, settings)
    uri = params.get("data_uri") or spec["root"]["inputDefinitions"]["parameters"].get("data_uri", {}).get(
        "defaultValue") or data_uri(config_from(args), settings.project)
    check_spec_project(spec, str(uri), settings.require("project"), template=str(args.template),
                       pipeline=config_from(args).pipeline.name)
    failed = [c for c in run_doctor(config_from(args), settings, spec=spec, data_uri=str(uri), only=FAST)
              if not c.passed]
    if failed:
        lines = "\n".join(f"  FAIL {c.name}: {c.detail} -> {c.fix}" for c in failed)
        raise PhotoDetectorError(f"preflight checks failed:\n{lines}\n", "fix them, or pass --skip-checks")


def template_spec(args: argparse.Namespace, settings: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    import tempfile

    from photo_detector.cloud.vertex import load_template, parse_parameters

    with tempfile.TemporaryDirectory() as tmp:
        _, spec, _ = load_template(settings, args.template, Path(tmp))
    return spec, parse_parameters(spec, args.params)


def cmd_submit(args: argparse.Namespace) -> int:
    from photo_detector.cloud.vertex import submit

    settings = cloud_settings(args)
    preflight(args, settings)
    caching = {"on": True, "off": False, "default": None}[args.caching]
    res = submit(settings, args.template, params=args.params, labels=parse_labels(args.labels), caching=caching,
                 job_id=args.job_id, experiment=args.cloud_experiment, sync=args.sync,
                 poll_seconds=args.poll_seconds, on_state=lambda s: print(f"state: {s}", flush=True))
    print(f"submitted {res.job_id}\n  {res.resource_name}\n  {res.console_url}")
    if args.sync:
        print(f"finished: {res.state}")
        for line in res.errors:
            print(f"  {line}")
        return 0 if res.state == "PIPELINE_STATE_SUCCEEDED" else 1
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    cfg = config_from(args, {"deploy.service_name": args.service, "deploy.region": args.region,
                         "deploy.project": args.project})
    if args.local:
        return _deploy_local(args, cfg)
    from photo_detector.cloud.deploy import run_deploy, target
    from photo_detector.cloud.naming import image_uri
    from photo_detector.serving.app import resolve_model

    source = str(args.model)
    model_dir = resolve_model(source)
    model_uri = source if source.startswith("gs://") else str(Path(source).resolve())
    if not args.dry_run and not source.startswith("gs://"):
        model_uri = _upload_local_model(args, cfg, model_dir)
    plan = args.plan or Path(tempfile_name("deploy-plan", ".json"))
    serve_image = image_uri(cfg, "serve", target(cfg)[0] or None)
    res = run_deploy(model_dir, model_uri, cfg, serve_image=serve_image, dry_run=args.dry_run, plan_path=plan)
    if args.dry_run:
        print(Path(plan).read_text(), end="")
        print(f"dry run: {res.service} would serve model {res.model_version}; plan in {plan}", file=sys.stderr)
    elif not res.changed:
        print(f"{res.service} already serves {res.revision} ({res.model_version}) with all traffic: nothing done")
    else:
        print(f"{res.service}: {res.revision} now has 100% of traffic (previous: {res.previous_revision})\n"
              f"  url: {res.url}")
    return 0


def _upload_local_model(args: argparse.Namespace, cfg: Any, model_dir: Path) -> str:
    """Cloud Run cannot read a laptop folder: copy it next to the pipeline's artifacts first."""
    from photo_detector.cloud.gcs import upload_folder
    from photo_detector.cloud.run_service import model_version
    from photo_detector.cloud.settings import resolve

    root = resolve(cfg, {"pipeline_root": args.pipeline_root}).require("pipeline_root").rstrip("/")
    uri = f"{root}/models/{model_version(model_dir)}"
    upload_folder(model_dir, uri)
    return uri


def _deploy_local(args: argparse.Namespace, cfg: Any) -> int:
    """The same smoke test as a Cloud Run rollout, against the service started on loopback."""
    from photo_detector.artifacts import read_record
    from photo_detector.keys import hash_key, new_key
    from photo_detector.serving.app import create_app, resolve_model
    from photo_detector.serving.auth import KeyChecker
    from photo_detector.serving.local import running
    from photo_detector.smoke import smoke_test

    model_dir = resolve_model(str(args.model))
    record = read_record(model_dir)
    key = new_key()
    app = create_app(str(model_dir), cfg, KeyChecker([hash_key(key)]))
    with running(app, port=args.port or 0) as url:
        report = smoke_test(url, key, model_dir, record, ready_timeout=60)
        print(f"local service {url}: smoke test passed")
        for check in report.checks:
            print(f"  ok  {check}")
        if args.keep_running:
            print(f"serving until Ctrl-C; X-API-Key: {key}", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
    return 0


def add_deploy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deploy", help="roll a model out to Cloud Run safely (or --local, or --dry-run)")
    add_config_args(p)
    p.add_argument("--model", required=True, help="a train --out folder, or the gs:// URI of one")
    p.add_argument("--service", help="deploy.service_name")
    p.add_argument("--region", help="deploy.region (Cloud Run)")
    p.add_argument("--project", help="deploy.project (default: gcp.project / $PHOTO_DETECTOR_PROJECT)")
    p.add_argument("--pipeline-root", help="gs:// folder a local model is uploaded under before deploying")
    p.add_argument("--dry-run", action="store_true", help="print the service that would be applied")
    p.add_argument("--plan", type=Path, help="write the plan JSON here")
    p.add_argument("--local", action="store_true", help="start the service on loopback and smoke-test it")
    p.add_argument("--port", type=int, help="with --local: the port (default: any free one)")
    p.add_argument("--keep-running", action="store_true", help="with --local: keep serving after the test")
    p.set_defaults(func=cmd_deploy)


def add_submit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit a pipeline run to Vertex AI Pipelines")
    add_config_args(p)
    add_cloud_args(p, "pipeline_root", "service_account", "kfp_repository", "experiment")
    p.add_argument("--template", default="compiled/training_pipeline.yaml",
                   help="a compiled YAML, or NAME:TAG of a template in the Artifact Registry KFP repository")
    p.add_argument("--param", dest="params", action="append", default=[], metavar="NAME=VALUE",
                   help="pipeline parameter, typed and checked against the spec (repeatable)")
    p.add_argument("--label", dest="labels", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--job-id", help="run id (default: <pipeline>-<timestamp>-<random>, always unique)")
    p.add_argument("--caching", choices=["on", "off", "default"], default="default",
                   help="default = each task's compiled caching setting")
    p.add_argument("--sync", action="store_true", help="follow the run until it ends; exit 1 unless it succeeded")
    p.add_argument("--skip-checks", action="store_true", help="submit without the preflight checks (the spec's "
                                                              "project, then doctor's fast subset: credentials, "
                                                              "bucket, images, data)")
    p.add_argument("--poll-seconds", type=float, default=30.0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_submit)


def add_setup(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("setup", help="create what photo-detector needs in a Google Cloud project (idempotent)")
    add_config_args(p)
    add_cloud_args(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--write-config", type=Path, metavar="FILE", help="write the resulting gcp settings here")
    p.add_argument("--print-roles", action="store_true", help="print the roles table (as in the README) and exit")
    p.set_defaults(func=cmd_setup)


def add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check the project: one PASS/FAIL line per prerequisite, with the fix")
    add_config_args(p)
    add_cloud_args(p, "pipeline_root", "service_account")
    p.add_argument("--template", help="also check that every image this compiled spec (or NAME:TAG) names exists")
    p.add_argument("--data-uri", help="the dataset to check (default: pipeline.data_uri / the derived one)")
    p.set_defaults(func=cmd_doctor, params=[])


PARSERS = {"deploy": add_deploy, "submit": add_submit, "setup": add_setup, "doctor": add_doctor}
