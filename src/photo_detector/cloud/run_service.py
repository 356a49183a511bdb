"""The Cloud Run service the deploy stage applies: built from the one config and the model artifact.

The service runs the `serve` image with the model's URI in its environment; API keys come from a Secret
Manager secret (hashed values), never from the spec.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from photo_detector.artifacts import read_metadata
from photo_detector.config import Config
from photo_detector.errors import PhotoDetectorError
from photo_detector.inference import content_version
from photo_detector.io import write_json_atomic

SERVICE_PORT = 8080
HEALTH_PATH = "/health"


def model_version(model_dir: str | Path) -> str:
    """The model folder's content-derived version (what the service reports and revisions are named after)."""
    return content_version(Path(model_dir) / read_metadata(model_dir)["model_file"])


def resolve_project(project: str, *, required: bool = True) -> str | None:
    """An explicit project, else the one the pipeline or CLI runs in (Vertex sets CLOUD_ML_PROJECT_ID)."""
    for value in (project, os.environ.get("CLOUD_ML_PROJECT_ID"), os.environ.get("GOOGLE_CLOUD_PROJECT")):
        if value:
            return value
    if not required:
        return None
    raise PhotoDetectorError("no Google Cloud project for the deploy stage",
                             "set the pipeline parameter project / config key deploy.project, "
                             "or GOOGLE_CLOUD_PROJECT")


def service_name(cfg: Config, project: str) -> str:
    return f"projects/{project}/locations/{cfg.deploy.region}/services/{cfg.deploy.service_name}"


def service_body(cfg: Config, *, model_uri: str, version: str, image: str) -> dict[str, Any]:
    """The run_v2 Service as its REST JSON; validated by parsing it into the official proto type. `image` is
    the serve image the same build produced (the deploy task gets it from the compiled spec)."""
    d = cfg.deploy
    body = {
        "labels": {"app": "photo-detector", "model-version": version},
        "template": {
            "labels": {"model-version": version},
            "scaling": {"minInstanceCount": d.min_instances, "maxInstanceCount": d.max_instances},
            "maxInstanceRequestConcurrency": d.concurrency,
            "timeout": f"{d.timeout_seconds}s",
            "containers": [{
                "image": image,
                "args": ["--model", model_uri],
                "ports": [{"containerPort": SERVICE_PORT}],
                "env": [
                    {"name": "PHOTO_DETECTOR_MODEL_URI", "value": model_uri},
                    {"name": "PHOTO_DETECTOR_MODEL_VERSION", "value": version},
                    {"name": "PHOTO_DETECTOR_API_KEY_HASHES",
                     "valueSource": {"secretKeyRef": {"secret": d.api_keys_secret, "version": "latest"}}},
                ],
                "resources": {"limits": {"cpu": d.cpu, "memory": d.memory}, "cpuIdle": True},
                "startupProbe": {"httpGet": {"path": HEALTH_PATH, "port": SERVICE_PORT},
                                 "periodSeconds": 2, "failureThreshold": 30},
            }],
        },
    }
    _validate(body)
    return body


def _validate(body: dict[str, Any]) -> None:
    try:
        from google.cloud import run_v2
    except ImportError:  # pragma: no cover - the deploy image always has it
        return
    run_v2.Service.from_json(json.dumps(body), ignore_unknown_fields=False)


@dataclass
class DeployResult:
    service: str
    model_version: str
    dry_run: bool
    plan_path: Path | None
    url: str | None = None
    revision: str | None = None
    previous_revision: str | None = None
    changed: bool = False
    image: str | None = None


def run_deploy(model_dir: str | Path, model_uri: str, cfg: Config, *, serve_image: str, dry_run: bool,
               plan_path: str | Path | None = None) -> DeployResult:
    """Dry run: write the service that would be applied to `plan_path`. Otherwise: the safe rollout
    (no-traffic revision, smoke test, then all traffic), with the plan written first for the record."""
    version = model_version(model_dir)
    project = resolve_project(cfg.deploy.project, required=not dry_run) or "PROJECT"  # a placeholder in a plan
    name = service_name(cfg, project)
    body = service_body(cfg, model_uri=model_uri, version=version, image=serve_image)
    plan = {"dry_run": dry_run, "method": "UpdateService", "allow_missing": True, "name": name,
            "service": body, "rollout": ["new revision with 0% traffic, tagged " + version,
                                         "smoke test of the tagged URL", "100% traffic to the new revision"]}
    if plan_path is not None:
        write_json_atomic(plan_path, plan)
    if dry_run:
        return DeployResult(name, version, dry_run, Path(plan_path) if plan_path else None)
    from dataclasses import replace

    from photo_detector.cloud.rollout import rollout, smoke_api_key
    from photo_detector.cloud.settings import resolve

    cfg = replace(cfg, deploy=replace(cfg.deploy, project=project))
    settings = resolve(cfg, {"project": project})
    res = rollout(model_dir, model_uri, cfg, settings, serve_image=serve_image,
                  api_key=smoke_api_key(cfg, settings))
    return DeployResult(name, version, dry_run, Path(plan_path) if plan_path else None, url=res.url,
                        revision=res.revision, previous_revision=res.previous_revision, changed=res.changed,
                        image=res.image)
