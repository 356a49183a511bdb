"""Adapters between KFP artifacts and the library's stage functions: what every component body calls.

Why here and not in `components/`: component bodies are shipped as source into the compiled spec, so they
stay one import and one call; everything testable lives in the library. Artifacts are duck-typed (`.path`,
`.uri`, `.metadata`, the Metrics/ClassificationMetrics logging methods), so this module imports no kfp.

Each stage runs under `_stage`, which times it, turns a PhotoDetectorError into one clear line and exit
status 2 (no kfp traceback), and appends a record to `$PHOTO_DETECTOR_STAGE_LOG` when set (run-local reads
it for its summary and for kfp's per-task overhead).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from photo_detector import CLASS_NAMES
from photo_detector.config import Config, load_config
from photo_detector.errors import PhotoDetectorError
from photo_detector.io import write_json_atomic, write_text_atomic

log = logging.getLogger("photo_detector.stage")

STAGE_LOG_ENV = "PHOTO_DETECTOR_STAGE_LOG"
ROC_POINTS = 200  # enough for a smooth curve in the Vertex console, small enough for artifact metadata

# Pipeline parameter -> config key. The pipeline's parameters take their names and defaults from here.
PIPELINE_PARAMETERS: dict[str, str] = {
    "data_uri": "pipeline.data_uri",
    "seed": "seed",
    "image_size": "data.image_size",
    "batch_size": "data.batch_size",
    "epochs": "train.epochs",
    "max_minutes": "train.max_minutes",
    "gpus": "train.gpus",
    "experiment": "gcp.experiment",
    "learning_rate": "train.learning_rate",
    "weight_decay": "train.weight_decay",
    "freeze_backbone": "model.freeze_backbone",
    "classification_threshold": "thresholds.classification",
    "min_accuracy": "gate.min_accuracy",
    "min_f1": "gate.min_f1",
    "champion_from_registry": "gate.champion_from_registry",
    "service_name": "deploy.service_name",
    "region": "deploy.region",
    "project": "deploy.project",
    "auto_deploy": "deploy.auto_deploy",
    "deploy_dry_run": "deploy.dry_run",
}

F = TypeVar("F", bound=Callable[..., Any])


def stage_config(config_overrides: dict[str, Any] | None = None, **params: Any) -> Config:
    """Packaged defaults <- `config_overrides` (dotted keys, any key) <- named pipeline parameters."""
    overrides = dict(config_overrides or {})
    for name, value in params.items():
        overrides[PIPELINE_PARAMETERS[name]] = value
    defaults = Config()
    for key, value in overrides.items():
        # Struct parameters travel as protobuf Values, where every number is a double: 2 arrives as 2.0.
        if isinstance(value, float) and value.is_integer() and type(_default(defaults, key)) is int:
            overrides[key] = int(value)
    return load_config(None, overrides)


def _default(cfg: Config, key: str) -> Any:
    try:
        return cfg.get(key)
    except AttributeError:
        return None  # an unknown key: load_config names it


def _record(entry: dict[str, Any]) -> None:
    path = os.environ.get(STAGE_LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, default=str) + "\n")


def _stage(name: str) -> Callable[[F], F]:
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            if not logging.getLogger().handlers:
                logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            start = time.perf_counter()
            log.info("stage %s: start", name)
            try:
                try:
                    result, summary = fn(*args, **kwargs)
                except Exception as exc:  # a Google API error: one line with the fix, like any other
                    from photo_detector.cloud.retry import user_error

                    err = user_error(exc) if not isinstance(exc, PhotoDetectorError) else None
                    if err is None:
                        raise
                    raise err from None
            except PhotoDetectorError as exc:
                seconds = time.perf_counter() - start
                _record({"stage": name, "status": "failed", "seconds": seconds, "error": str(exc)})
                print(f"error in stage {name}: {exc}", file=sys.stderr, flush=True)
                raise SystemExit(2) from None
            seconds = time.perf_counter() - start
            _record({"stage": name, "status": "succeeded", "seconds": seconds, "summary": summary})
            log.info("stage %s: done in %.1fs", name, seconds)
            return result
        return run  # type: ignore[return-value]
    return wrap


def _log_metrics(metrics: Any, values: dict[str, float]) -> None:
    for key, value in values.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            metrics.log_metric(key, float(value))


@_stage("fingerprint")
def fingerprint(data_uri: str) -> tuple[tuple[str, int], dict[str, Any]]:
    from photo_detector.fingerprint import fingerprint as take

    if data_uri.startswith("gs://"):
        from photo_detector.cloud.gcs import listing

        fp = take(data_uri, listing(data_uri))
    else:
        fp = take(data_uri)
    return (fp.digest, fp.files), {"fingerprint": fp.digest, "files": fp.files, "bytes": fp.bytes}


@_stage("verify-data")
def verify_data(dataset: Any, verified: Any, report: Any, metrics: Any, *, image_size: int,
                config_overrides: dict[str, Any], fingerprint: str = "") -> tuple[str, dict[str, Any]]:
    from photo_detector.verify import REPORT_MD, quarantine_metadata, run_verify

    cfg = stage_config(config_overrides, image_size=image_size)
    try:
        result = run_verify(dataset.path, verified.path, cfg)
    finally:  # the report is the evidence of a failure too
        md = Path(verified.path) / REPORT_MD
        if md.is_file():
            shutil.copyfile(md, report.path)
    _log_metrics(metrics, result.metrics())
    verified.metadata.update({"digest": result.digest, "fingerprint": fingerprint, "source_uri": dataset.uri,
                              "counts": result.counts,
                              "shortcut": result.shortcut, **quarantine_metadata(result)})
    return result.digest, {"digest": result.digest, "images": result.n_images, "verified": verified.path,
                           "report": report.path, "warnings": len(result.warnings),
                           "quarantined": len(result.quarantined)}


def _experiment_time_series(cfg: Config, pipeline_job: str) -> Callable[[dict[str, float]], None] | None:
    """Per-epoch time series for a run on Vertex attached to an experiment (gcp.experiment, which submit
    --experiment sets); None elsewhere (kfp local, no experiment)."""
    from photo_detector.cloud.deploy import run_scope
    from photo_detector.cloud.settings import resolve
    from photo_detector.cloud.timeseries import TimeSeriesLog

    scope = run_scope(pipeline_job)
    if not (cfg.gcp.experiment and pipeline_job and scope.project and scope.region):
        return None
    return TimeSeriesLog(resolve(cfg, {"project": scope.project, "region": scope.region}),
                         experiment=cfg.gcp.experiment, run=pipeline_job.rsplit("/", 1)[1],
                         tensorboard=cfg.gcp.tensorboard)


@_stage("train")
def train(verified: Any, model: Any, epoch_metrics: Any, metrics: Any, report: Any, *, data_digest: str,
          config_overrides: dict[str, Any], pipeline_job: str = "", **params: Any) -> tuple[None, dict[str, Any]]:
    from photo_detector.artifacts import HISTORY, LAST, read_record
    from photo_detector.cloud.gcs import staging_source
    from photo_detector.cloud.run_service import model_version
    from photo_detector.cloud.weights import fetch_weights
    from photo_detector.data.packed import read_manifest
    from photo_detector.reports import training_report
    from photo_detector.train import run_train

    # A multi-replica CustomJob (pipeline compiled with train.nodes > 1) says its replica count here.
    nodes = os.environ.get("PHOTO_DETECTOR_TRAIN_NODES")
    cfg = stage_config({**config_overrides, **({"train.nodes": int(nodes)} if nodes else {})}, **params)
    digest = read_manifest(verified.path)["digest"]
    if data_digest and digest != data_digest:
        raise PhotoDetectorError(f"the verified dataset's digest {digest} is not the data_digest input "
                                 f"{data_digest}", "re-run the pipeline; the data changed between stages")
    # A retried attempt (Vertex re-runs the task with the same executor input, so the same model folder on
    # gs://) finds the last epoch's checkpoint there and resumes: to the same result, not from epoch 0.
    resume = (Path(model.path) / LAST).is_file()
    if resume:
        log.info("resuming from %s: an earlier attempt of this task saved it", Path(model.path) / LAST)
    fetch_weights(cfg.model)
    result = run_train(verified.path, model.path, cfg, resume=resume,
                       on_epoch_end=_experiment_time_series(cfg, pipeline_job), stage=staging_source(verified.path))
    if not result.main:  # another replica of a train.nodes job: the first one writes the model and metrics
        return None, {"model": model.path, "replica": "worker (the primary replica writes the outputs)"}
    record = read_record(model.path)
    model.metadata.update({"framework": record.framework, "model_file": record.model_file,
                           "image_size": record.image_size, "data_digest": record.data_digest,
                           "model_version": model_version(model.path), "best_epoch": record.best_epoch,
                           "stopped_by": result.stopped_by, **record.val_metrics})
    shutil.copyfile(Path(model.path) / HISTORY, epoch_metrics.path)
    _log_metrics(metrics, {**record.val_metrics, "best_epoch": record.best_epoch,
                           "epochs_run": result.epochs_run, "train_seconds": result.seconds,
                           "stopped_by_budget": float(result.stopped_by == "budget")})
    write_text_atomic(report.path, training_report(result.history, record))
    return None, {"model": model.path, "best_epoch": result.best_epoch, **record.val_metrics,
                  "report": report.path}


@_stage("evaluate")
def evaluate(model: Any, dataset: Any, metrics: Any, classification_metrics: Any, report: Any, summary: Any,
             evaluation: Any, *, split: str, config_overrides: dict[str, Any]) -> tuple[None, dict[str, Any]]:
    from photo_detector.evaltables import summary_markdown
    from photo_detector.evaluate import run_evaluate
    from photo_detector.reports import evaluation_report

    cfg = stage_config(config_overrides)
    result = run_evaluate(model.path, dataset.path, split=split, out_dir=evaluation.path, cfg=cfg)
    full = result.to_dict()
    _log_metrics(metrics, {**result.metrics, "n_images": result.n_images,
                           **{f"left_out_{why}": n for why, n in result.left_out.items()}})
    classification_metrics.log_confusion_matrix(list(CLASS_NAMES), result.confusion_matrix)
    step = max(1, math.ceil(len(result.roc_fpr) / ROC_POINTS))
    idx = sorted({*range(0, len(result.roc_fpr), step), len(result.roc_fpr) - 1}) if result.roc_fpr else []
    classification_metrics.log_roc_curve([result.roc_fpr[i] for i in idx], [result.roc_tpr[i] for i in idx],
                                         [result.roc_thresholds[i] for i in idx])
    write_text_atomic(report.path, evaluation_report(full))
    write_text_atomic(summary.path, summary_markdown(full))
    evaluation.metadata.update({"split": split, "n_images": result.n_images, "worst_source": result.worst_source,
                                "perturbations": [r["perturbation"] for r in result.robustness[1:]]})
    return None, {"accuracy": result.accuracy, "f1": result.f1, "roc_auc": result.roc_auc, "split": split,
                  "n_images": result.n_images, "left_out": result.left_out, "report": report.path,
                  "worst_source": result.worst_source,
                  "robustness": {r["perturbation"]: round(r["accuracy"], 4) for r in result.robustness[1:]}}


@_stage("quality-gate")
def quality_gate(metrics: Any, decision: Any, *, champion_metrics: dict[str, Any],
                 config_overrides: dict[str, Any], pipeline_job: str = "",
                 **params: Any) -> tuple[bool, dict[str, Any]]:
    from photo_detector.gate import run_gate

    cfg = stage_config(config_overrides, **params)
    champion = champion_metrics or None
    if champion is None and cfg.gate.champion_from_registry:
        from photo_detector.cloud.deploy import run_scope
        from photo_detector.cloud.registry import champion_metrics as registry_champion
        from photo_detector.cloud.settings import resolve

        scope = run_scope(pipeline_job)  # the registry of the project and region the run is in
        champion = registry_champion(resolve(cfg, {"project": scope.project, "region": scope.region}), cfg)
    result = run_gate(dict(metrics.metadata), cfg.gate, champion)
    write_json_atomic(decision.path, result.to_dict())
    decision.metadata.update({"passed": result.passed, "rule": result.rule,
                              "reasons": [c.reason for c in result.checks]})
    for c in result.checks:
        log.info("check %-16s %s: %s", c.name, "pass" if c.passed else "FAIL", c.reason)
    if not result.passed and cfg.gate.fail_run_on_reject:
        raise PhotoDetectorError("the quality gate rejected the model: " + "; ".join(result.reasons),
                                 f"nothing was deployed; the decision is in {decision.path}. Set "
                                 "gate.fail_run_on_reject=false for runs that end green on a rejection")
    return result.passed, {"passed": result.passed, "rule": result.rule, "checks": [c.reason for c in result.checks],
                           "decision": decision.path}


@_stage("deploy")
def deploy(model: Any, metrics: Any, deployment: Any, *, serve_image: str, dry_run: bool, pipeline_run: str,
           config_overrides: dict[str, Any], pipeline_job: str = "", evaluation: Any = None,
           **params: Any) -> tuple[None, dict[str, Any]]:
    from photo_detector.cloud.deploy import run_deploy, run_scope, target

    cfg = stage_config(config_overrides, **params)
    scope = run_scope(pipeline_job)  # the service goes where the run runs, unless deploy.* says otherwise
    result = run_deploy(model.path, model.uri, cfg, serve_image=serve_image, dry_run=dry_run,
                        plan_path=deployment.path, scope=scope)
    info = {"service": result.service, "model_version": result.model_version, "dry_run": result.dry_run,
            "serve_image": serve_image,
            "url": result.url, "revision": result.revision, "previous_revision": result.previous_revision,
            "changed": result.changed}
    if result.changed and not dry_run:  # a new model is live: it becomes the registry's champion
        from photo_detector.artifacts import read_record
        from photo_detector.cloud.registry import register_version
        from photo_detector.cloud.settings import resolve

        record = read_record(model.path)
        project, region = target(cfg, scope)
        settings = resolve(cfg, {"project": project, "region": region})
        registered = register_version(
            settings, cfg, artifact_uri=model.uri, serving_image=result.image or "",
            metrics={k: float(v) for k, v in dict(metrics.metadata).items() if isinstance(v, int | float)},
            data_digest=record.data_digest, pipeline_run=pipeline_run, model_version=result.model_version)
        info["registry_model"] = registered["resource_name"]
        info["registry_version"] = registered["version_id"]
        if evaluation is not None:  # the console's Evaluate tab of that version shows what the gate passed
            from photo_detector.cloud.registry import import_evaluation
            from photo_detector.evaluate import EVAL_FILE

            result = json.loads((Path(evaluation.path) / EVAL_FILE).read_text(encoding="utf-8"))
            info["registry_evaluation"] = import_evaluation(settings, registered["resource_name"],
                                                            registered["version_id"], result,
                                                            pipeline_run=pipeline_run)
    deployment.metadata.update({k: v for k, v in info.items() if v is not None})
    return None, {**{k: v for k, v in info.items() if v is not None}, "plan": deployment.path}
