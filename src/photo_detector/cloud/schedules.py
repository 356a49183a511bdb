"""Recurring runs as native Vertex AI pipeline schedules (visible and manageable in the console), and the
recent runs themselves: list, inspect, cancel."""

from __future__ import annotations

import tempfile
import zoneinfo
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from photo_detector.cloud.retry import with_retries
from photo_detector.cloud.settings import Settings
from photo_detector.cloud.vertex import check_pipeline_root, init_vertex, load_template, run_parameters
from photo_detector.errors import PhotoDetectorError


def _cron(expr: str, time_zone: str) -> str:
    fields = expr.split()
    if len(fields) != 5:
        raise PhotoDetectorError(f"cron '{expr}' must have 5 fields (minute hour day-of-month month day-of-week)",
                                 "e.g. --cron '0 3 * * 1' for Mondays at 03:00")
    try:
        zoneinfo.ZoneInfo(time_zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise PhotoDetectorError(f"unknown time zone '{time_zone}'", "use an IANA name such as Europe/Berlin") from None
    return f"TZ={time_zone} {' '.join(fields)}"


def _rfc3339(value: str | None, flag: str) -> str | None:
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise PhotoDetectorError(f"{flag} '{value}' is not an ISO 8601 time",
                                 "e.g. 2026-12-01T03:00:00+01:00") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def create_schedule(settings: Settings, template: str | Path, *, cron: str, time_zone: str = "Etc/UTC",
                    display_name: str | None = None, params: list[str] | None = None,
                    labels: dict[str, str] | None = None, max_concurrent_runs: int = 1, max_runs: int | None = None,
                    start_time: str | None = None, end_time: str | None = None,
                    caching: bool | None = None) -> Any:
    from google.cloud import aiplatform

    cron_tz = _cron(cron, time_zone)
    start, end = _rfc3339(start_time, "--start-time"), _rfc3339(end_time, "--end-time")
    if start and end and end <= start:
        raise PhotoDetectorError(f"--end-time {end} is not after --start-time {start}", "swap or fix them")
    if max_concurrent_runs < 1:
        raise PhotoDetectorError("--max-concurrent-runs must be at least 1", "e.g. 1 (runs never overlap)")
    with tempfile.TemporaryDirectory(prefix="photo-detector-template-") as tmp:
        path, spec, _ = load_template(settings, template, Path(tmp))
        # Vertex does not attach scheduled runs to an experiment; the parameter still sends every run's
        # per-epoch time series to the experiment's TensorBoard runs.
        values = run_parameters(spec, params or [], settings.experiment)
        name = spec["pipelineInfo"]["name"]
        init_vertex(settings)
        check_pipeline_root(settings)
        job = aiplatform.PipelineJob(display_name=name, template_path=str(path),
                                     pipeline_root=settings.require("pipeline_root"), parameter_values=values,
                                     enable_caching=caching, labels={"app": "photo-detector", **(labels or {})})
        schedule = aiplatform.PipelineJobSchedule(pipeline_job=job, display_name=display_name or f"{name}-schedule")
        with_retries("creating the schedule", lambda: schedule.create(
            cron=cron_tz, max_concurrent_run_count=max_concurrent_runs, max_run_count=max_runs, start_time=start,
            end_time=end, service_account=settings.service_account or None))
    return schedule


def _schedule(settings: Settings, schedule_id: str) -> Any:
    from google.cloud import aiplatform

    init_vertex(settings)
    return with_retries(f"reading schedule {schedule_id}", lambda: aiplatform.PipelineJobSchedule.get(schedule_id))


def describe_schedule(s: Any) -> dict[str, Any]:
    r = s._gca_resource  # the resource as last returned by the API
    return {"name": r.name, "id": r.name.rsplit("/", 1)[-1], "display_name": r.display_name,
            "state": getattr(r.state, "name", str(r.state)), "cron": r.cron,
            "max_concurrent_run_count": r.max_concurrent_run_count, "started_run_count": r.started_run_count,
            "next_run_time": r.next_run_time.isoformat() if r.next_run_time else None}


def list_schedules(settings: Settings) -> list[dict[str, Any]]:
    from google.cloud import aiplatform

    init_vertex(settings)
    return [describe_schedule(s) for s in with_retries("listing schedules", aiplatform.PipelineJobSchedule.list)]


def change_schedule(settings: Settings, schedule_id: str, action: str) -> dict[str, Any]:
    schedule = _schedule(settings, schedule_id)
    if action == "pause":
        with_retries(f"pausing {schedule_id}", schedule.pause)
    elif action == "resume":
        with_retries(f"resuming {schedule_id}", schedule.resume)
    elif action == "delete":
        with_retries(f"deleting {schedule_id}", schedule.delete)
        return {"id": schedule_id, "state": "DELETED"}
    else:  # pragma: no cover - argparse restricts the choices
        raise PhotoDetectorError(f"unknown schedule action {action}")
    return describe_schedule(_schedule(settings, schedule_id))


def describe_run(job: Any) -> dict[str, Any]:
    r = job._gca_resource
    start, end = r.start_time, r.end_time
    duration = (end - start).total_seconds() if start and end else None
    return {"id": r.name.rsplit("/", 1)[-1], "name": r.name, "display_name": r.display_name,
            "state": getattr(r.state, "name", str(r.state)),
            "created": r.create_time.isoformat() if r.create_time else None, "duration_s": duration,
            "labels": dict(r.labels)}


def list_runs(settings: Settings, limit: int = 20) -> list[dict[str, Any]]:
    from google.cloud import aiplatform

    init_vertex(settings)
    jobs = with_retries("listing runs", lambda: aiplatform.PipelineJob.list(order_by="create_time desc"))
    return [describe_run(j) for j in jobs[:limit]]


def get_run(settings: Settings, run_id: str) -> dict[str, Any]:
    from google.cloud import aiplatform

    init_vertex(settings)
    return describe_run(with_retries(f"reading run {run_id}", lambda: aiplatform.PipelineJob.get(run_id)))


def epoch_metrics(settings: Settings, run_id: str) -> tuple[dict[str, Any], str, list[dict[str, str]]]:
    """The run, its train task's model folder and the rows of `metrics.csv` in it so far.

    The train task rewrites metrics.csv in its model artifact after every epoch, so this works while the
    job runs (Vertex mounts the artifact's gs:// folder), and after it ends."""
    import csv

    from google.api_core import exceptions as gexc
    from google.cloud import aiplatform

    from photo_detector.cloud.gcs import split_uri, thread_client

    init_vertex(settings)
    job = with_retries(f"reading run {run_id}", lambda: aiplatform.PipelineJob.get(run_id))
    run = describe_run(job)
    task = next((t for t in job._gca_resource.job_detail.task_details if t.task_name == "train"), None)
    artifacts = task.outputs["model"].artifacts if task is not None and "model" in task.outputs else []
    if not artifacts:
        raise PhotoDetectorError(f"run {run['id']} ({run['state']}) has no train task output yet",
                                 "ask again once its train task has started")
    model_uri = artifacts[0].uri
    bucket, prefix = split_uri(model_uri)
    blob = thread_client(settings.project).bucket(bucket).blob(f"{prefix}/metrics.csv")
    try:
        text = with_retries(f"reading {model_uri}/metrics.csv", blob.download_as_text)
    except gexc.NotFound:  # the first epoch has not finished
        text = ""
    return run, model_uri, list(csv.DictReader(text.splitlines())) if text else []


def cancel_run(settings: Settings, run_id: str) -> dict[str, Any]:
    from google.cloud import aiplatform

    init_vertex(settings)
    job = with_retries(f"reading run {run_id}", lambda: aiplatform.PipelineJob.get(run_id))
    with_retries(f"cancelling run {run_id}", job.cancel)
    return describe_run(with_retries(f"reading run {run_id}", lambda: aiplatform.PipelineJob.get(run_id)))
