"""Whole catalogs on Vertex AI: a BatchPredictionJob on the champion version, fed an instances JSONL built
from a Cloud Storage listing, followed to its end like `submit --sync`.

Vertex runs the registered serve image as the prediction container (it answers the Vertex protocol on the
routes the registry declares), splits the instances over `--replicas` machines and writes
`predictions_*.jsonl` under the output prefix. Each instance is `{"gcs_uri": ...}`: the container reads the
image itself, so the job's service account needs read access to the source bucket.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath

from photo_detector.cloud.gcs import split_uri, thread_client
from photo_detector.cloud.registry import CHAMPION, find_model
from photo_detector.cloud.retry import with_retries
from photo_detector.cloud.settings import Settings
from photo_detector.cloud.vertex import VERTEX_HINTS, follow, init_vertex, read_state
from photo_detector.config import Config
from photo_detector.data.layout import IMAGE_EXTENSIONS
from photo_detector.errors import PhotoDetectorError

log = logging.getLogger(__name__)

TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED",
            "JOB_STATE_PARTIALLY_SUCCEEDED"}


def list_images(uri: str) -> list[str]:
    """gs:// URIs of the images under a prefix (by suffix, case-insensitive), sorted."""
    bucket, prefix = split_uri(uri)
    blobs = with_retries(f"listing {uri}", lambda: list(thread_client().list_blobs(
        bucket, prefix=f"{prefix}/" if prefix else None, fields="items(name),nextPageToken")))
    found = sorted(f"gs://{bucket}/{b.name}" for b in blobs
                   if PurePosixPath(b.name).suffix.lower() in IMAGE_EXTENSIONS)
    if not found:
        raise PhotoDetectorError(f"no images under {uri}",
                                 f"the source must hold {', '.join(sorted(IMAGE_EXTENSIONS))} files")
    return found


def _check_readable(source: str, model_uri: str) -> None:
    """Under Vertex AI the prediction container reads `gcs_uri` instances only from its model's own bucket
    (serve.gcs_allowed_prefixes): refuse a catalog elsewhere before anything is written or submitted."""
    allowed = f"gs://{split_uri(model_uri)[0]}/" if model_uri.startswith("gs://") else ""
    if not allowed or not f"{source.rstrip('/')}/".startswith(allowed):
        raise PhotoDetectorError(
            f"the prediction container reads images only under its model's bucket {allowed or '(none)'}, and "
            f"{source} is elsewhere", f"copy them there first (gcloud storage cp -r {source} {allowed}catalog/) "
                                      f"and pass --source {allowed}catalog/")


def write_instances(images: list[str], out_uri: str, stamp: str) -> str:
    """The instances file Vertex reads, one `{"gcs_uri": ...}` per line; returns its gs:// URI."""
    bucket, prefix = split_uri(out_uri)
    name = f"{prefix}/instances-{stamp}.jsonl" if prefix else f"instances-{stamp}.jsonl"
    body = "".join(json.dumps({"gcs_uri": u}) + "\n" for u in images)
    with_retries(f"writing gs://{bucket}/{name}", lambda: thread_client().bucket(bucket).blob(name).upload_from_string(
        body, content_type="application/jsonl"))
    return f"gs://{bucket}/{name}"


@dataclass
class BatchResult:
    job: str
    state: str
    instances: int
    instances_uri: str
    output: str
    model: str
    console_url: str


def batch_predict(settings: Settings, cfg: Config, source: str, out: str, *, machine_type: str = "n1-standard-4",
                  replicas: int = 1, sync: bool = True, poll_seconds: float = 30.0,
                  on_state: Callable[[str], None] | None = None) -> BatchResult:
    """List `source`, write the instances under `out`, submit the job on the champion version, follow it."""
    from google.cloud import aiplatform

    split_uri(out)  # a bad output URI fails before anything is listed
    images = list_images(source)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    init_vertex(settings)
    parent = find_model(settings, cfg)
    if parent is None:
        raise PhotoDetectorError(f"no model '{cfg.gcp.model_name}' in the Model Registry",
                                 "deploy one first (a pipeline run whose model passes the gate registers it)")
    model = f"{parent.resource_name}@{CHAMPION}"
    _check_readable(source, with_retries("reading the champion", lambda: aiplatform.Model(model_name=model).uri))
    instances_uri = write_instances(images, out, stamp)
    job = with_retries("creating the batch prediction job", lambda: aiplatform.BatchPredictionJob.submit(
        job_display_name=f"{cfg.gcp.model_name}-batch-{stamp}", model_name=model, instances_format="jsonl",
        predictions_format="jsonl", gcs_source=instances_uri, gcs_destination_prefix=out.rstrip("/"),
        machine_type=machine_type, starting_replica_count=replicas, max_replica_count=replicas,
        batch_size=cfg.serve.max_batch_files, service_account=settings.service_account or None,
        labels={"app": "photo-detector"}), hints=VERTEX_HINTS)
    name = job.resource_name
    region, job_id = settings.require("region"), name.rsplit("/", 1)[-1]
    url = (f"https://console.cloud.google.com/vertex-ai/locations/{region}/batch-predictions/{job_id}"
           f"?project={settings.project}")
    log.info("batch prediction job %s: %d instances from %s", name, len(images), instances_uri)
    if sync:
        state = follow(job, poll_seconds=poll_seconds, on_state=on_state, terminal=TERMINAL)
    else:
        state = read_state(job)
        if on_state:
            on_state(state)
    output = out
    if state in TERMINAL:
        info = getattr(job._gca_resource, "output_info", None)
        output = getattr(info, "gcs_output_directory", "") or out
    if sync and state != "JOB_STATE_SUCCEEDED":
        error = getattr(job._gca_resource, "error", None)
        message = getattr(error, "message", "") if error else ""
        raise PhotoDetectorError(f"batch prediction job {job_id} ended {state}" + (f": {message}" if message else ""),
                                 f"see {url}")
    return BatchResult(name, state, len(images), instances_uri, output, model, url)
