"""`photo-detector`: the command line; every subcommand is a thin call into a library stage function."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

from photo_detector import __version__
from photo_detector.errors import DataError, PhotoDetectorError
from photo_detector.io import prepare_output_dir

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

    quality = (args.jpeg_quality, args.fake_jpeg_quality or args.jpeg_quality)
    res = generate_sample(args.out, per_class=args.per_class, size=args.size, seed=args.seed, force=args.force,
                          fmt=args.format, quality=quality, leak=args.leak)
    total = sum(sum(c.values()) for c in res.counts.values())
    counts = ", ".join(f"{s} {c['real']}+{c['ai_generated']}" for s, c in res.counts.items())
    print(f"wrote {total} images ({counts}; real+ai_generated) of {args.size}px to {res.root} "
          f"in {res.seconds:.1f}s")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from photo_detector.artifacts import LOGS
    from photo_detector.train import run_train

    cfg = _config(args, {"train.epochs": args.epochs, "data.batch_size": args.batch_size,
                         "train.learning_rate": args.learning_rate, "model.weights": args.weights,
                         "train.device": args.device, "train.gpus": args.gpus})
    res = run_train(args.data, args.out, cfg, resume=args.resume, force=args.force)
    m = res.best_metrics
    why = {"early_stopping": " (stopped early)", "budget": f" (time budget of {cfg.train.max_minutes:g} min)"}
    print(f"best epoch {res.best_epoch}/{res.epochs_run}: val_accuracy {m['val_accuracy']:.4f} "
          f"val_f1 {m['val_f1']:.4f}{why.get(res.stopped_by, '')}; {res.seconds:.1f}s; model: {res.onnx_path}; "
          f"logs: tensorboard --logdir {res.out_dir / LOGS}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from photo_detector.export import export_checkpoint

    record = export_checkpoint(args.checkpoint, args.out, _config(args), args.data, force=args.force)
    val = record.val_metrics
    print(f"exported {args.checkpoint} -> {args.out}: val_accuracy {val['val_accuracy']:.4f} val_f1 "
          f"{val['val_f1']:.4f} on {record.val_images} images; ONNX parity {record.onnx_parity_max_abs_diff:.2e}\n"
          f"deploy it: photo-detector deploy --model {args.out} --local   (or --service NAME)")
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


def cmd_verify_data(args: argparse.Namespace) -> int:
    import tempfile

    from photo_detector.verify import run_verify

    cfg = _config(args, {"data.image_size": args.image_size})
    with contextlib.ExitStack() as stack:
        out = args.out or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="verify-")))
        if args.out is not None:
            prepare_output_dir(args.out, force=args.force)
        try:
            res = run_verify(args.data, out, cfg)
            failed = None
        except DataError as exc:
            failed = exc
            report = json.loads((out / "verify_report.json").read_text()) if (out / "verify_report.json").exists() \
                else None
            if report is None:
                raise
        if args.json:
            print(json.dumps(report if failed else res.to_dict(), indent=2))
        elif failed:
            print((out / "verify_report.md").read_text(), end="")
        else:
            print(res.markdown(), end="")
    if failed:
        return 2
    return 1 if args.strict and res.warnings else 0


def cmd_gate(args: argparse.Namespace) -> int:
    from photo_detector.gate import run_gate

    def read(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise PhotoDetectorError(f"cannot read metrics file {path}: {exc}",
                                     "pass the eval.json written by `photo-detector evaluate --out`") from None
        return data.get("metrics", data) if isinstance(data, dict) else {}

    cfg = _config(args, {"gate.min_accuracy": args.min_accuracy, "gate.min_f1": args.min_f1})
    decision = run_gate(read(args.metrics), cfg.gate, read(args.champion) if args.champion else None)
    if args.json:
        print(json.dumps(decision.to_dict(), indent=2))
    else:
        print(f"{'PASSED' if decision.passed else 'FAILED'} ({decision.rule})")
        for c in decision.checks:
            print(f"  {'pass' if c.passed else 'FAIL'}  {c.name}: {c.reason}")
    return 0 if decision.passed else 1


def cmd_deploy(args: argparse.Namespace) -> int:
    cfg = _config(args, {"deploy.service_name": args.service, "deploy.region": args.region,
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
    from photo_detector.serving.app import create_app, resolve_model
    from photo_detector.serving.auth import KeyChecker, hash_key, new_key
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


def tempfile_name(prefix: str, suffix: str) -> str:
    import tempfile

    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix)
    os.close(fd)
    return name


def cmd_compile(args: argparse.Namespace) -> int:
    from photo_detector.cloud.naming import image_registry, project_id
    from photo_detector.pipelines.compile import compile_pipeline

    cfg = _config(args, {"images.registry": args.registry, "images.tag": args.image_tag})
    project = project_id(cfg, args.project) or None
    path = compile_pipeline(cfg, args.output, project)
    print(f"compiled {cfg.pipeline.name} with images {image_registry(cfg, project)}/<image>:{cfg.images.tag} "
          f"to {path}")
    return 0


def cmd_run_local(args: argparse.Namespace) -> int:
    from photo_detector.pipelines.local_run import run_local

    cfg = _config(args, {"train.epochs": args.epochs})
    res = run_local(cfg, out=args.out, data=args.data, per_class=args.per_class)
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


def _add_cloud_args(p: argparse.ArgumentParser, *names: str) -> None:
    from photo_detector.cloud.settings import SOURCES

    for name in ("project", "region", *names):
        key, env, flag = SOURCES[name]
        p.add_argument(flag, dest=f"cloud_{name}", metavar=name.upper(), help=f"{key} (env {env})")


def _settings(args: argparse.Namespace):
    from photo_detector.cloud.settings import SOURCES, resolve

    flags = {name: getattr(args, f"cloud_{name}", None) for name in SOURCES}
    return resolve(_config(args), flags)


def _labels(items: list[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key) or not re.fullmatch(r"[a-z0-9_-]{0,63}", value):
            raise PhotoDetectorError(f"label '{item}' is not KEY=VALUE in lower-case letters, digits, _ and -",
                                     "e.g. --label team=vision")
        labels[key] = value
    return labels


def cmd_submit(args: argparse.Namespace) -> int:
    from photo_detector.cloud.vertex import submit

    settings = _settings(args)
    _preflight(args, settings)
    caching = {"on": True, "off": False, "default": None}[args.caching]
    res = submit(settings, args.template, params=args.params, labels=_labels(args.labels), caching=caching,
                 job_id=args.job_id, experiment=args.cloud_experiment, sync=args.sync,
                 poll_seconds=args.poll_seconds, on_state=lambda s: print(f"state: {s}", flush=True))
    print(f"submitted {res.job_id}\n  {res.resource_name}\n  {res.console_url}")
    if args.sync:
        print(f"finished: {res.state}")
        for line in res.errors:
            print(f"  {line}")
        return 0 if res.state == "PIPELINE_STATE_SUCCEEDED" else 1
    return 0


def cmd_batch_predict(args: argparse.Namespace) -> int:
    from photo_detector.cloud.batch import batch_predict

    res = batch_predict(_settings(args), _config(args), args.source, args.out, machine_type=args.machine_type,
                        replicas=args.replicas, sync=not args.no_sync, poll_seconds=args.poll_seconds,
                        on_state=lambda s: print(f"state: {s}", flush=True))
    print(f"batch prediction {res.job}\n  model {res.model}\n  {res.instances} instances: {res.instances_uri}\n"
          f"  {res.console_url}")
    print(f"predictions: {res.output}" if res.state == "JOB_STATE_SUCCEEDED" else
          f"submitted ({res.state}); predictions will be written under {res.output}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from photo_detector.scoring import score
    from photo_detector.serving.app import resolve_model

    res = score(resolve_model(args.model), args.source, args.out, batch=args.batch, workers=args.workers)
    print(f"scored {res.scored} images ({res.counts['real']} real, {res.counts['ai_generated']} ai_generated)"
          f"{f', {res.failed} unreadable (their rows say why)' if res.failed else ''}: {res.out}")
    return 0


def _preflight(args: argparse.Namespace, settings: Any) -> None:
    """The fast subset of doctor before anything is sent; refuses with the failing lines."""
    if getattr(args, "skip_checks", False):
        return
    from photo_detector.cloud.naming import data_uri
    from photo_detector.cloud.project import FAST, run_doctor

    spec, params = _template_spec(args, settings)
    uri = params.get("data_uri") or spec["root"]["inputDefinitions"]["parameters"].get("data_uri", {}).get(
        "defaultValue") or data_uri(_config(args), settings.project)
    failed = [c for c in run_doctor(_config(args), settings, spec=spec, data_uri=str(uri), only=FAST) if not c.passed]
    if failed:
        lines = "\n".join(f"  FAIL {c.name}: {c.detail} -> {c.fix}" for c in failed)
        raise PhotoDetectorError(f"preflight checks failed:\n{lines}\n", "fix them, or pass --skip-checks")


def _template_spec(args: argparse.Namespace, settings: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    import tempfile

    from photo_detector.cloud.vertex import load_template, parse_parameters

    with tempfile.TemporaryDirectory() as tmp:
        _, spec, _ = load_template(settings, args.template, Path(tmp))
    return spec, parse_parameters(spec, args.params)


def cmd_setup(args: argparse.Namespace) -> int:
    from photo_detector.cloud.project import roles_table, run_setup

    if args.print_roles:
        print(roles_table())
        return 0
    settings = _settings(args)
    settings.require("project")
    marks = {"ok": "ok   ", "would": "would", "done": "done "}

    def show(step: Any, status: str) -> None:
        print(f"  {marks[status]} {step.what}", flush=True)

    print(f"{'plan for' if args.dry_run else 'setting up'} project {settings.project} in {settings.region}:")
    res = run_setup(_config(args), settings, dry_run=args.dry_run, on_step=show)
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

    settings = _settings(args)
    spec = None
    if args.template:
        spec, _ = _template_spec(args, settings)
    uri = args.data_uri or data_uri(_config(args), settings.project)
    failed = 0
    for check in run_doctor(_config(args), settings, spec=spec, data_uri=uri):
        print(f"{'PASS' if check.passed else 'FAIL'}  {check.name:<16} {check.detail}", flush=True)
        if not check.passed:
            failed += 1
            print(f"      fix: {check.fix}", flush=True)
    print(f"\n{failed} check(s) failed" if failed else "\nall checks passed")
    return 1 if failed else 0


def cmd_template_upload(args: argparse.Namespace) -> int:
    from photo_detector.cloud.templates import upload_template

    res = upload_template(_settings(args), args.file, args.tags or [__version__, "latest"])
    print(f"uploaded {args.file} to {res.host} as {res.package} {res.version} (tags: {', '.join(res.tags)})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from photo_detector.serving.auth import KeyChecker, parse_hashes

    # On Vertex AI the model folder arrives as AIP_STORAGE_URI and the port as AIP_HTTP_PORT.
    source = args.model or os.environ.get("PHOTO_DETECTOR_MODEL_URI") or os.environ.get("AIP_STORAGE_URI")
    if not source:
        raise PhotoDetectorError("no model to serve", "pass --model DIR|gs://... or set PHOTO_DETECTOR_MODEL_URI")
    vertex = bool(os.environ.get("AIP_PREDICT_ROUTE"))
    hashes = parse_hashes(args.api_key_hashes or os.environ.get("PHOTO_DETECTOR_API_KEY_HASHES", ""))
    if not hashes and not args.no_auth and not vertex:
        raise PhotoDetectorError("no API key hashes configured",
                                 "set PHOTO_DETECTOR_API_KEY_HASHES (see `photo-detector api-key`) or pass "
                                 "--no-auth for a local, unauthenticated service")
    from photo_detector.serving.app import serve

    port = args.port or int(os.environ.get("AIP_HTTP_PORT") or os.environ.get("PORT") or 8080)
    serve(source, _config(args), KeyChecker(hashes, allow_all=args.no_auth), host=args.host, port=port)
    return 0


def cmd_api_key(args: argparse.Namespace) -> int:
    from photo_detector.serving.auth import hash_key, new_key

    key = args.key or new_key()
    if args.key is None:
        print(f"key:  {key}")
    print(f"hash: {hash_key(key)}")
    print("store the hash in PHOTO_DETECTOR_API_KEY_HASHES (Secret Manager on Cloud Run); give the key to clients",
          file=sys.stderr)
    return 0


def _print_rows(rows: list[dict[str, Any]], columns: list[str], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        print("(none)")
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "") if r.get(c) is not None else "-").ljust(widths[c]) for c in columns))


def cmd_schedule(args: argparse.Namespace) -> int:
    from photo_detector.cloud import schedules

    settings = _settings(args)
    if args.schedule_command == "create":
        _preflight(args, settings)
        s = schedules.create_schedule(
            settings, args.template, cron=args.cron, time_zone=args.time_zone, display_name=args.display_name,
            params=args.params, labels=_labels(args.labels), max_concurrent_runs=args.max_concurrent_runs,
            max_runs=args.max_runs, start_time=args.start_time, end_time=args.end_time,
            caching={"on": True, "off": False, "default": None}[args.caching])
        info = schedules.describe_schedule(s)
        print(f"created schedule {info['id']} ({info['display_name']}): {info['cron']}, state {info['state']}")
        return 0
    if args.schedule_command == "list":
        _print_rows(schedules.list_schedules(settings),
                    ["id", "display_name", "state", "cron", "next_run_time", "started_run_count"], args.json)
        return 0
    info = schedules.change_schedule(settings, args.schedule_id, args.schedule_command)
    print(f"schedule {info['id']}: {info['state']}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from photo_detector.cloud import schedules

    settings = _settings(args)
    if args.runs_command == "list":
        _print_rows(schedules.list_runs(settings, args.limit), ["id", "state", "created", "duration_s"], args.json)
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


def cmd_data_upload(args: argparse.Namespace) -> int:
    from photo_detector.cloud.gcs import upload_folder

    res = upload_folder(args.local, args.uri, workers=args.workers)
    print(f"uploaded {len(res.copied)} files ({res.bytes_copied / 1e6:.1f} MB), {len(res.skipped)} unchanged, "
          f"to {args.uri}")
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    from photo_detector.cloud.gcs import download_prefix

    res = download_prefix(args.uri, args.local, workers=args.workers)
    print(f"downloaded {len(res.copied)} files ({res.bytes_copied / 1e6:.1f} MB), {len(res.skipped)} unchanged, "
          f"to {args.local}")
    return 0


def cmd_data_cifake(args: argparse.Namespace) -> int:
    from photo_detector.data.cifake import prepare_cifake

    res = prepare_cifake(args.out, source=args.source, hf_id=args.hf, val_fraction=args.val_fraction,
                         force=args.force)
    counts = ", ".join(f"{s} {c['real']}+{c['ai_generated']}" for s, c in res.counts.items())
    print(f"wrote CIFAKE to {res.root} ({counts}; real+ai_generated) from {res.source}")
    return 0


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
    p.add_argument("--format", choices=["png", "jpeg"], default="png", help="file format of both classes")
    p.add_argument("--jpeg-quality", type=int, default=95, help="with --format jpeg: the quality of real images")
    p.add_argument("--fake-jpeg-quality", type=int, help="... of ai_generated images (default: the same; "
                                                         "different qualities make a format shortcut)")
    p.add_argument("--leak", type=float, default=0.0, help="share of test/real images that are near-duplicates "
                                                           "of train/real images (CIFAR-10's test set: 0.033)")
    p.set_defaults(func=cmd_data_sample)

    p = dsub.add_parser("upload", help="copy a local folder to gs:// (parallel, checksum-verified, resumable)")
    p.add_argument("local", type=Path)
    p.add_argument("uri", help="gs://BUCKET/PATH")
    p.add_argument("--workers", type=int, default=8)
    p.set_defaults(func=cmd_data_upload)
    p = dsub.add_parser("download", help="copy gs://... to a local folder (skips unchanged files)")
    p.add_argument("uri", help="gs://BUCKET/PATH")
    p.add_argument("local", type=Path)
    p.add_argument("--workers", type=int, default=8)
    p.set_defaults(func=cmd_data_download)
    p = dsub.add_parser("cifake", help="download CIFAKE and lay it out as train|val|test/{real,ai_generated}")
    p.add_argument("out", type=Path)
    p.add_argument("--source", help="a CIFAKE folder already downloaded (train|test/{REAL,FAKE}); default: "
                                    "download from Hugging Face")
    p.add_argument("--hf", metavar="ID", help="the Hugging Face copy to download (default "
                                              "dragonintelligence/CIFAKE-image-dataset; the README lists others)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of train moved to val (by file hash)")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty folder")
    p.set_defaults(func=cmd_data_cifake)

    p = sub.add_parser("train", help="train, checkpoint and export the model")
    _add_config_args(p)
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

    p = sub.add_parser("export", help="turn a bare checkpoint (best.pt from anywhere) into a deployable model folder")
    _add_config_args(p)
    p.add_argument("checkpoint", type=Path, help="a torch.save file: ours, the training guide's, or a bare state dict")
    p.add_argument("--out", type=Path, required=True, help="model folder to write (ONNX, model.json, smoke images)")
    p.add_argument("--data", type=Path, required=True,
                   help="a dataset with val/{real,ai_generated} (the checkpoint's validation data): ONNX parity, "
                        "validation metrics and the smoke test's known images")
    p.add_argument("--force", action="store_true", help="overwrite results already in --out")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="sample data -> train -> evaluate -> gate, in-process (no kfp)")
    _add_config_args(p)
    p.set_defaults(config="sample")
    p.add_argument("--out", type=Path, default=Path("runs"), help="parent of the timestamped run folder")
    p.add_argument("--data", type=Path, help="dataset folder (default: generate the sample dataset)")
    p.add_argument("--epochs", type=int, help="train.epochs")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("verify-data", help="check a dataset folder and pack it for training (the first stage)")
    _add_config_args(p)
    p.add_argument("data", type=Path, help="dataset folder with train|val|test/{real,ai_generated}")
    p.add_argument("--out", type=Path, help="write the packed dataset and reports here (default: a temp folder)")
    p.add_argument("--image-size", type=int, help="data.image_size (decides the packed size)")
    p.add_argument("--json", action="store_true", help="print the JSON report")
    p.add_argument("--strict", action="store_true", help="exit 1 when there are warnings")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty --out")
    p.set_defaults(func=cmd_verify_data)

    p = sub.add_parser("gate", help="decide pass/fail on an eval.json (the quality-gate stage)")
    _add_config_args(p)
    p.add_argument("--metrics", type=Path, required=True, help="eval.json of the candidate")
    p.add_argument("--champion", type=Path, help="eval.json of the model in production, if any")
    p.add_argument("--min-accuracy", type=float, help="gate.min_accuracy")
    p.add_argument("--min-f1", type=float, help="gate.min_f1")
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.set_defaults(func=cmd_gate)

    p = sub.add_parser("deploy", help="roll a model out to Cloud Run safely (or --local, or --dry-run)")
    _add_config_args(p)
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

    p = sub.add_parser("compile", help="compile the KFP pipeline spec Vertex AI runs")
    _add_config_args(p)
    p.add_argument("--output", type=Path, default=Path("compiled/training_pipeline.yaml"))
    p.add_argument("--registry", help="images.registry: where the stage images live")
    p.add_argument("--image-tag", help="images.tag: e.g. the commit the images were built from")
    p.add_argument("--project", help="the project whose registry and data bucket the spec names (default: "
                                     "$PHOTO_DETECTOR_PROJECT or gcp.project; none = the placeholder PROJECT_ID)")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("run-local", help="run the whole KFP pipeline locally (kfp local, no cloud)")
    _add_config_args(p)
    p.set_defaults(config="sample")
    p.add_argument("--data", type=Path, help="dataset folder (default: generate the sample dataset)")
    p.add_argument("--out", type=Path, default=Path("runs"), help="parent of the timestamped run folder")
    p.add_argument("--per-class", type=int, default=800, help="sample images per class when generating")
    p.add_argument("--epochs", type=int, help="train.epochs")
    p.set_defaults(func=cmd_run_local)

    p = sub.add_parser("submit", help="submit a pipeline run to Vertex AI Pipelines")
    _add_config_args(p)
    _add_cloud_args(p, "pipeline_root", "service_account", "kfp_repository", "experiment")
    p.add_argument("--template", default="compiled/training_pipeline.yaml",
                   help="a compiled YAML, or NAME:TAG of a template in the Artifact Registry KFP repository")
    p.add_argument("--param", dest="params", action="append", default=[], metavar="NAME=VALUE",
                   help="pipeline parameter, typed and checked against the spec (repeatable)")
    p.add_argument("--label", dest="labels", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--job-id", help="run id (default: <pipeline>-<timestamp>-<random>, always unique)")
    p.add_argument("--caching", choices=["on", "off", "default"], default="default",
                   help="default = each task's compiled caching setting")
    p.add_argument("--sync", action="store_true", help="follow the run until it ends; exit 1 unless it succeeded")
    p.add_argument("--skip-checks", action="store_true", help="submit without the preflight checks (doctor's "
                                                              "fast subset: credentials, bucket, images, data)")
    p.add_argument("--poll-seconds", type=float, default=30.0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("batch-predict", help="score a gs:// catalog with a Vertex AI batch prediction job on the "
                                             "champion model version")
    _add_config_args(p)
    _add_cloud_args(p, "service_account")
    p.add_argument("--source", required=True, help="gs://BUCKET/PREFIX of the images (.jpg .jpeg .png .webp)")
    p.add_argument("--out", required=True, help="gs://BUCKET/PREFIX for the instances file and the predictions")
    p.add_argument("--machine-type", default="n1-standard-4", help="prediction machines (default n1-standard-4)")
    p.add_argument("--replicas", type=int, default=1, help="machines working in parallel (default 1)")
    p.add_argument("--no-sync", action="store_true", help="submit and return instead of following the job")
    p.add_argument("--poll-seconds", type=float, default=30.0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_batch_predict)

    p = sub.add_parser("score", help="score a folder or gs:// prefix of images into a CSV, in this process")
    p.add_argument("source", help="a folder of images or gs://BUCKET/PREFIX")
    p.add_argument("--model", required=True, help="a model folder (train --out) or the gs:// URI of one")
    p.add_argument("--out", type=Path, default=Path("scores.csv"), help="CSV to write (default scores.csv)")
    p.add_argument("--batch", type=int, default=16, help="images per model call (default 16)")
    p.add_argument("--workers", type=int, help="threads reading and decoding images (default: one per core; "
                                               "8 for gs://)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("setup", help="create what photo-detector needs in a Google Cloud project (idempotent)")
    _add_config_args(p)
    _add_cloud_args(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--write-config", type=Path, metavar="FILE", help="write the resulting gcp settings here")
    p.add_argument("--print-roles", action="store_true", help="print the roles table (as in the README) and exit")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("doctor", help="check the project: one PASS/FAIL line per prerequisite, with the fix")
    _add_config_args(p)
    _add_cloud_args(p, "pipeline_root", "service_account")
    p.add_argument("--template", help="also check that every image this compiled spec (or NAME:TAG) names exists")
    p.add_argument("--data-uri", help="the dataset to check (default: pipeline.data_uri / the derived one)")
    p.set_defaults(func=cmd_doctor, params=[])

    p = sub.add_parser("schedule", help="recurring pipeline runs (Vertex AI schedules)")
    ssub = p.add_subparsers(dest="schedule_command", required=True, metavar="ACTION")
    p = ssub.add_parser("create", help="run the pipeline on a cron schedule")
    _add_config_args(p)
    _add_cloud_args(p, "pipeline_root", "service_account", "kfp_repository", "experiment")
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
    _add_config_args(p)
    _add_cloud_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_schedule)
    for action in ("pause", "resume", "delete"):
        p = ssub.add_parser(action, help=f"{action} a schedule")
        _add_config_args(p)
        _add_cloud_args(p)
        p.add_argument("schedule_id", help="the schedule's id or full resource name")
        p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("runs", help="recent pipeline runs")
    rsub = p.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    p = rsub.add_parser("list", help="recent runs, newest first, with state and duration")
    _add_config_args(p)
    _add_cloud_args(p)
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)
    for action in ("get", "cancel"):
        p = rsub.add_parser(action, help=f"{action} a run")
        _add_config_args(p)
        _add_cloud_args(p)
        p.add_argument("run_id", help="the run's id or full resource name")
        p.add_argument("--json", action="store_true")
        if action == "get":
            p.add_argument("--metrics", action="store_true",
                           help="the per-epoch table of its train task (while it runs, too)")
        p.set_defaults(func=cmd_runs)

    p = sub.add_parser("template", help="pipeline templates in Artifact Registry")
    tsub = p.add_subparsers(dest="template_command", required=True, metavar="ACTION")
    p = tsub.add_parser("upload", help="push a compiled spec to the KFP repository with tags")
    _add_config_args(p)
    _add_cloud_args(p, "kfp_repository")
    p.add_argument("file", nargs="?", type=Path, default=Path("compiled/training_pipeline.yaml"))
    p.add_argument("--tag", dest="tags", action="append", metavar="TAG",
                   help=f"repeatable; default: {__version__} and latest")
    p.set_defaults(func=cmd_template_upload)

    p = sub.add_parser("serve", help="run the prediction service (the serve image's entrypoint)")
    _add_config_args(p)
    p.add_argument("--model", help="model folder or gs:// URI (default: $PHOTO_DETECTOR_MODEL_URI)")
    p.add_argument("--host", default="0.0.0.0", help="bind address")
    p.add_argument("--port", type=int, help="default: $AIP_HTTP_PORT (on Vertex AI), $PORT or 8080")
    p.add_argument("--api-key-hashes", help="sha256:<hex>,... (default: $PHOTO_DETECTOR_API_KEY_HASHES)")
    p.add_argument("--no-auth", action="store_true", help="accept requests without X-API-Key (local use only)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("api-key", help="make an API key and the hash the service stores")
    p.add_argument("--key", help="hash this key instead of making a new one")
    p.set_defaults(func=cmd_api_key)

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
    except Exception as exc:  # a Google API error that no command handled: one line, with the fix
        from photo_detector.cloud.retry import user_error

        err = user_error(exc)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
