"""The deploy stage's logic: where the service goes (the project and region of the run), the plan, and the
safe rollout with the smoke-test key. run_service.py says what the service is, rollout.py how it rolls out."""

from __future__ import annotations

import base64
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from photo_detector.cloud.naming import project_id
from photo_detector.cloud.run_service import model_version, service_body, service_name
from photo_detector.cloud.settings import Settings, resolve
from photo_detector.config import Config
from photo_detector.errors import PhotoDetectorError
from photo_detector.io import write_json_atomic

log = logging.getLogger(__name__)

PLAN_PROJECT = "PROJECT"  # stands in a dry-run plan when no project is known


@dataclass(frozen=True)
class RunScope:
    """The project and region of the pipeline run a task belongs to, from its job resource name."""

    project: str | None = None
    region: str | None = None


def run_scope(pipeline_job: str | None) -> RunScope:
    """`projects/P/locations/R/pipelineJobs/ID` (what Vertex fills in for the job-name placeholder) -> P, R;
    anything else (kfp local, a manual call) -> nothing known."""
    m = re.fullmatch(r"projects/([^/]+)/locations/([^/]+)/pipelineJobs/[^/]+", pipeline_job or "")
    return RunScope(m.group(1), m.group(2)) if m else RunScope(os.environ.get("CLOUD_ML_PROJECT_ID"),
                                                                 os.environ.get("CLOUD_ML_REGION"))


def target(cfg: Config, scope: RunScope = RunScope()) -> tuple[str, str]:
    """(project, region) the service goes to: deploy.project/region if set, else the run's, else gcp.*."""
    project = cfg.deploy.project or scope.project or project_id(cfg)
    region = cfg.deploy.region or scope.region or os.environ.get("PHOTO_DETECTOR_REGION") or cfg.gcp.region
    return project, region


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
               plan_path: str | Path | None = None, scope: RunScope = RunScope()) -> DeployResult:
    """Dry run: write the service that would be applied to `plan_path`. Otherwise: the safe rollout
    (no-traffic revision, smoke test, then all traffic), with the plan written first for the record."""
    version = model_version(model_dir)
    project, region = target(cfg, scope)
    if not project and not dry_run:
        raise PhotoDetectorError("no Google Cloud project for the deploy stage",
                                 "set deploy.project, PHOTO_DETECTOR_PROJECT or GOOGLE_CLOUD_PROJECT")
    name = service_name(cfg, project or PLAN_PROJECT, region)
    body = service_body(cfg, model_uri=model_uri, version=version, image=serve_image)
    plan = {"dry_run": dry_run, "method": "UpdateService", "allow_missing": True, "name": name,
            "service": body, "rollout": ["new revision with 0% traffic, tagged " + version,
                                         "smoke test of the tagged URL", "100% traffic to the new revision"]}
    if plan_path is not None:
        write_json_atomic(plan_path, plan)
    if dry_run:
        return DeployResult(name, version, dry_run, Path(plan_path) if plan_path else None)
    from photo_detector.cloud.rollout import rollout

    cfg = replace(cfg, deploy=replace(cfg.deploy, project=project, region=region))
    settings = resolve(cfg, {"project": project, "region": region})
    res = rollout(model_dir, model_uri, cfg, settings, serve_image=serve_image,
                  api_key=smoke_api_key(cfg, settings))
    return DeployResult(name, version, dry_run, Path(plan_path) if plan_path else None, url=res.url,
                        revision=res.revision, previous_revision=res.previous_revision, changed=res.changed,
                        image=res.image)


def smoke_api_key(cfg: Config, settings: Settings) -> str:
    """The plain key the smoke test presents: $PHOTO_DETECTOR_SMOKE_API_KEY, else the latest version of the
    Secret Manager secret `deploy.smoke_key_secret` (its hash must be among the service's key hashes)."""
    key = os.environ.get("PHOTO_DETECTOR_SMOKE_API_KEY")
    if key:
        return key
    from photo_detector.cloud.retry import with_retries
    from photo_detector.cloud.secrets import secrets_client

    name = f"projects/{settings.require('project')}/secrets/{cfg.deploy.smoke_key_secret}/versions/latest"
    response = with_retries(f"reading the smoke-test key {cfg.deploy.smoke_key_secret}",
                            lambda: secrets_client(settings).access_secret_version(name=name, timeout=30))
    data = response.payload.data
    return (data if isinstance(data, bytes) else base64.b64decode(data)).decode()
