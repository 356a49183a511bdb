"""Vertex AI Pipelines from the CLI: submit a compiled spec or a registry template, follow it to the end.

Parameters are typed and checked against the spec before anything is sent. Job ids are unique (the SDK's
default `<name>-<timestamp>` collides for two submits in one second). API errors become one clear line.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from photo_detector.cloud.retry import api_error, with_retries
from photo_detector.cloud.settings import Settings
from photo_detector.errors import PhotoDetectorError

log = logging.getLogger(__name__)

# What a Vertex AI error means for the person running the CLI.
VERTEX_HINTS = {403: "check that the account has roles/aiplatform.user on the project",
                404: "check the project, region and name",
                409: "a resource with that id already exists; retry without --job-id"}
TERMINAL_STATES = {"PIPELINE_STATE_SUCCEEDED", "PIPELINE_STATE_FAILED", "PIPELINE_STATE_CANCELLED"}


# ---------------------------------------------------------------------------------------------------------
# Parameters


def spec_parameters(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})


def _typed(name: str, raw: str, kind: str) -> Any:
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    ok = {
        "NUMBER_INTEGER": isinstance(value, int) and not isinstance(value, bool),
        "NUMBER_DOUBLE": isinstance(value, int | float) and not isinstance(value, bool),
        "BOOLEAN": isinstance(value, bool),
        "STRING": True,
        "STRUCT": isinstance(value, dict),
        "LIST": isinstance(value, list),
    }.get(kind, True)
    if not ok:
        want = {"NUMBER_INTEGER": "an integer", "NUMBER_DOUBLE": "a number", "BOOLEAN": "true or false",
                "STRUCT": "a JSON object", "LIST": "a JSON list"}[kind]
        raise PhotoDetectorError(f"parameter '{name}' must be {want}", f"got {raw!r}")
    if kind == "STRING":
        return raw
    return float(value) if kind == "NUMBER_DOUBLE" else value


def parse_parameters(spec: dict[str, Any], items: list[str]) -> dict[str, Any]:
    """`name=value` strings -> values typed by the spec's parameter definitions."""
    params = spec_parameters(spec)
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise PhotoDetectorError(f"--param '{item}' must look like NAME=VALUE", "e.g. --param epochs=3")
        name, raw = item.split("=", 1)
        name = name.strip()
        if name not in params:
            raise PhotoDetectorError(f"the pipeline has no parameter '{name}'",
                                     f"valid parameters: {', '.join(sorted(params))}")
        out[name] = _typed(name, raw, params[name].get("parameterType", "STRING"))
    if "gpus" in out:
        _scale_train_machine(spec, params, out)
    return out


# GPUs per machine that Compute Engine offers, by accelerator (the others' counts are left to Vertex to check).
GPU_COUNTS = {"NVIDIA_TESLA_T4": (1, 2, 4), "NVIDIA_TESLA_V100": (1, 2, 4, 8), "NVIDIA_L4": (1, 2, 4, 8)}


def _scale_train_machine(spec: dict[str, Any], params: dict[str, Any], out: dict[str, Any]) -> None:
    """`gpus=N` alone also sizes the train machine: N times the spec's CPUs and memory per GPU, unless
    train_cpu/train_memory are given as well. (KFP cannot derive one parameter from another on Vertex.)"""
    gpus = out["gpus"]
    executor = spec.get("deploymentSpec", {}).get("executors", {}).get("exec-train", {})
    accelerator = executor.get("container", {}).get("resources", {}).get("accelerator", {}).get("resourceType")
    allowed = GPU_COUNTS.get(str(accelerator), tuple(range(1, 17)))
    if gpus not in allowed:
        below = [g for g in allowed if g < gpus] or [allowed[0]]
        raise PhotoDetectorError(f"parameter 'gpus' is {gpus}, but a machine takes {', '.join(map(str, allowed))} "
                                 f"{accelerator or 'GPU'}(s)", f"use --param gpus={below[-1]}")
    if not {"train_cpu", "train_memory"} <= params.keys():
        return
    base = int(params["gpus"].get("defaultValue", 1)) or 1
    cpu = float(params["train_cpu"].get("defaultValue", "4")) / base
    memory = re.fullmatch(r"([0-9.]+)\s*([A-Za-z]*)", str(params["train_memory"].get("defaultValue", "15G")))
    out.setdefault("train_cpu", f"{cpu * gpus:g}")
    if memory:
        out.setdefault("train_memory", f"{float(memory[1]) / base * gpus:g}{memory[2]}")


def run_parameters(spec: dict[str, Any], items: list[str], experiment: str | None) -> dict[str, Any]:
    """A run's parameter values (submit, each scheduled run): the `--param` items, plus the experiment, which
    the train task needs as a parameter to log its per-epoch time series there."""
    values = parse_parameters(spec, items)
    if experiment and "experiment" in spec_parameters(spec):
        values.setdefault("experiment", experiment)
    return values


def unique_job_id(pipeline_name: str) -> str:
    stem = re.sub(r"[^a-z0-9-]", "-", pipeline_name.lower()).strip("-")[:90]
    return f"{stem}-{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"


# ---------------------------------------------------------------------------------------------------------
# Errors and retries


# ---------------------------------------------------------------------------------------------------------
# Submit


def init_vertex(settings: Settings) -> None:
    from google.cloud import aiplatform

    endpoint = settings.endpoints.get("vertex")
    aiplatform.init(project=settings.require("project"), location=settings.require("region"),
                    credentials=settings.credentials("vertex"), api_endpoint=endpoint or None,
                    api_transport="rest" if endpoint else None)


def check_pipeline_root(settings: Settings) -> None:
    """The pipeline-root bucket must exist; checked through Cloud Storage alone, before anything is sent."""
    from google.api_core import exceptions as gexc
    from google.cloud import storage

    bucket = settings.require("pipeline_root").removeprefix("gs://").split("/", 1)[0]
    client = storage.Client(project=settings.project, credentials=settings.credentials("storage"))
    try:
        exists = client.bucket(bucket).exists()
    except gexc.GoogleAPICallError as exc:
        raise api_error(f"checking gs://{bucket}", exc) from None
    if not exists:
        raise PhotoDetectorError(f"pipeline root bucket gs://{bucket} does not exist",
                                 f"create it: gcloud storage buckets create gs://{bucket} --location {settings.region}")


@contextlib.contextmanager
def _without_sdk_bucket_check() -> Iterator[None]:
    """The SDK's own check also asks Resource Manager for the project number over gRPC (not redirectable,
    and it swallows every error); ours ran already, so it is skipped for this submit."""
    from google.cloud.aiplatform.utils import gcs_utils

    original = gcs_utils.create_gcs_bucket_for_pipeline_artifacts_if_it_does_not_exist
    gcs_utils.create_gcs_bucket_for_pipeline_artifacts_if_it_does_not_exist = (
        lambda output_artifacts_gcs_dir=None, **_: output_artifacts_gcs_dir)
    try:
        yield
    finally:
        gcs_utils.create_gcs_bucket_for_pipeline_artifacts_if_it_does_not_exist = original


@dataclass
class SubmitResult:
    job_id: str
    resource_name: str
    state: str
    console_url: str
    parameters: dict[str, Any]
    errors: list[str] = field(default_factory=list)


def load_template(settings: Settings, template: str | Path, workdir: Path) -> tuple[Path, dict[str, Any], str]:
    """A compiled file, or NAME:TAG from the Artifact Registry repository. Returns (file, spec, source)."""
    from photo_detector.cloud.templates import download_template

    path = Path(template)
    if not path.is_file() and re.fullmatch(r"[a-z0-9][a-z0-9-]*:[\w.-]+", str(template)):
        name, tag = str(template).split(":", 1)
        path = download_template(settings, name, tag, workdir / f"{name}.yaml")
        source = f"{settings.kfp_host()}/{name}/{tag}"
    elif not path.is_file():
        raise PhotoDetectorError(f"pipeline template {template} is neither a file nor NAME:TAG",
                                 "pass a compiled YAML (photo-detector compile) or a registry template name:tag")
    else:
        source = str(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PhotoDetectorError(f"cannot read pipeline template {path}: {exc}", "recompile it") from None
    if not isinstance(spec, dict) or "root" not in spec or "pipelineInfo" not in spec:
        raise PhotoDetectorError(f"{path} is not a compiled KFP pipeline spec", "run `photo-detector compile`")
    return path, spec, source


def submit(settings: Settings, template: str | Path, *, params: list[str] | None = None,
           labels: dict[str, str] | None = None, caching: bool | None = None, job_id: str | None = None,
           experiment: str | None = None, sync: bool = False, poll_seconds: float = 30.0,
           on_state: Callable[[str], None] | None = None) -> SubmitResult:
    from google.cloud import aiplatform

    with tempfile.TemporaryDirectory(prefix="photo-detector-template-") as tmp:
        path, spec, source = load_template(settings, template, Path(tmp))
        experiment = experiment or settings.experiment or None
        values = run_parameters(spec, params or [], experiment)
        name = spec["pipelineInfo"]["name"]
        job_id = job_id or unique_job_id(name)
        init_vertex(settings)
        all_labels = {"app": "photo-detector", **(labels or {})}
        job = aiplatform.PipelineJob(display_name=name, template_path=str(path), job_id=job_id,
                                     pipeline_root=settings.require("pipeline_root"), parameter_values=values,
                                     enable_caching=caching, labels=all_labels)
        check_pipeline_root(settings)
        with _without_sdk_bucket_check():
            with_retries(f"submitting {job_id}", lambda: job.submit(
                service_account=settings.service_account or None, experiment=experiment), hints=VERTEX_HINTS)
    log.info("submitted %s from %s", job_id, source)
    url = settings.console_url(job_id)
    state = _state_name(job)
    errors: list[str] = []
    if sync:
        state = follow(job, poll_seconds=poll_seconds, on_state=on_state)
        if state != "PIPELINE_STATE_SUCCEEDED":
            errors = failure_reasons(job)
    return SubmitResult(job_id, job.resource_name, state, url, values, errors)


def failure_reasons(job: Any) -> list[str]:
    """Why a finished run did not succeed: each failed task's own error (a rejected model's reasons, a stage's
    one-line error), then the run's; read from the resource as last fetched."""
    r = job._gca_resource
    lines = [f"{t.task_name}: {t.error.message}" for t in r.job_detail.task_details
             if t.error.message and t.task_name]
    if r.error.message:
        lines.append(r.error.message)
    return lines


def _state_name(job: Any) -> str:
    state = job._gca_resource.state  # the state returned by the last call; no extra request
    return getattr(state, "name", str(state))


def read_state(job: Any) -> str:
    """The job's state now (one request, retried), by name: JOB_STATE_... or PIPELINE_STATE_..."""
    state = with_retries("reading the job's state", lambda: job.state, hints=VERTEX_HINTS)
    return getattr(state, "name", str(state))


def follow(job: Any, *, poll_seconds: float = 30.0, on_state: Callable[[str], None] | None = None,
           sleep: Callable[[float], None] = time.sleep, terminal: set[str] = TERMINAL_STATES) -> str:
    """Poll a Vertex job (a pipeline run; a batch prediction job with its own `terminal` states) until it
    ends; report each state change."""
    last = None
    while True:
        name = read_state(job)
        if name != last and on_state:
            on_state(name)
        last = name
        if name in terminal:
            return name
        sleep(poll_seconds)
