"""A safe Cloud Run rollout: a new revision with no traffic, a smoke test on its tagged URL, then 100%.

Order of calls (what the tests assert over the wire):
  1. GET the service (absent is fine: it will be created);
  2. nothing to do when the live revision already serves this model version with all traffic;
  3. PATCH (allowMissing) the service: template with the serve image *by digest*, the model URI and a
     revision named after the model version; traffic unchanged plus a 0% target tagged with the version;
  4. smoke-test the tagged URL (health, 401 without a key, the model's known images);
  5. only then PATCH the traffic: 100% to the new revision.
A failed smoke test stops before step 5: traffic stays exactly where it was, and the stage fails with the
reason. Revision names derive from the model's content, so re-running with the same model creates nothing.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from photo_detector.artifacts import read_record
from photo_detector.cloud.retry import api_error, with_retries
from photo_detector.cloud.run_service import model_version, service_body, service_name
from photo_detector.cloud.settings import Settings
from photo_detector.config import Config
from photo_detector.errors import PhotoDetectorError

log = logging.getLogger(__name__)

REVISION = 2  # run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json"])


@dataclass
class RolloutResult:
    service: str
    url: str
    revision: str
    previous_revision: str | None
    model_version: str
    image: str
    changed: bool
    tag_url: str | None = None
    smoke_checks: list[str] = field(default_factory=list)


def resolve_digest(image: str) -> str:
    """`host/path:tag` -> `host/path@sha256:...` via the registry's v2 API (Artifact Registry or any OCI
    registry). An image already given by digest is returned as is. PHOTO_DETECTOR_DOCKER_REGISTRY_ENDPOINT
    redirects the lookup (tests, mirrors)."""
    if "@sha256:" in image:
        return image
    import httpx

    ref, _, tag = image.rpartition(":")
    host, _, path = ref.partition("/")
    base = os.environ.get("PHOTO_DETECTOR_DOCKER_REGISTRY_ENDPOINT") or f"https://{host}"
    headers = {"Accept": MANIFEST_TYPES}
    if not os.environ.get("PHOTO_DETECTOR_DOCKER_REGISTRY_ENDPOINT"):
        import google.auth
        import google.auth.transport.requests

        creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        creds.refresh(google.auth.transport.requests.Request())
        headers["Authorization"] = f"Bearer {creds.token}"
    try:
        r = httpx.head(f"{base}/v2/{path}/manifests/{tag}", headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise PhotoDetectorError(f"cannot reach the registry for {image}: {exc}", "check the network") from None
    digest = r.headers.get("docker-content-digest")
    if r.status_code != 200 or not digest:
        raise PhotoDetectorError(f"image {image} not found in its registry (HTTP {r.status_code})",
                                 "build and push the serve image first (cloudbuild.yaml), or set images.tag")
    return f"{ref}@{digest}"


def services_client(settings: Settings) -> Any:
    from google.cloud import run_v2

    return settings.client("run", run_v2.ServicesClient)


def _short(revision: str | None) -> str | None:
    return revision.rsplit("/", 1)[-1] if revision else None


def rollout(model_dir: str | Path, model_uri: str, cfg: Config, settings: Settings, *, serve_image: str,
            api_key: str,
            smoke_ready_timeout: float = 180.0, operation_timeout: float = 900.0) -> RolloutResult:
    from google.api_core import exceptions as gexc
    from google.cloud import run_v2

    from photo_detector.smoke import SmokeTestFailed, smoke_test

    record = read_record(model_dir)
    version = model_version(model_dir)
    project = cfg.deploy.project or settings.require("project")
    name = service_name(cfg, project, cfg.deploy.region or settings.require("region"))
    revision = f"{cfg.deploy.service_name}-{version}"
    client = services_client(settings)

    try:
        current = client.get_service(name=name)
    except gexc.NotFound:
        current = None
    except gexc.GoogleAPICallError as exc:
        raise api_error(f"reading service {name}", exc) from None
    previous = _short(current.latest_ready_revision) if current else None
    live = {(_short(t.revision) or previous): t.percent for t in (current.traffic_statuses if current else [])
            if t.percent}
    if current is not None and live == {revision: 100}:
        log.info("%s already serves %s with all traffic: nothing to do", name, revision)
        return RolloutResult(name, current.uri, revision, previous, version, current.template.containers[0].image,
                             changed=False)

    image = resolve_digest(serve_image)
    body = service_body(cfg, model_uri=model_uri, version=version, image=image)
    body["template"]["revision"] = revision
    body["template"]["containers"][0]["image"] = image
    body["invokerIamDisabled"] = True  # the app checks X-API-Key itself; Cloud Run IAM would reject clients
    traffic = [{"type": REVISION, "revision": rev, "percent": pct} for rev, pct in live.items() if rev != revision]
    traffic.append({"type": REVISION, "revision": revision, "percent": 0 if traffic else 100, "tag": version})
    already_created = current is not None and _short(current.latest_created_revision) == revision
    if already_created:  # an earlier attempt created it (e.g. its smoke test failed): reuse, do not duplicate
        body["template"] = json.loads(run_v2.RevisionTemplate.to_json(current.template))
    service = run_v2.Service.from_json(json.dumps({**body, "name": name, "traffic": traffic}))
    op = with_retries(f"updating {name}", lambda: client.update_service(
        request=run_v2.UpdateServiceRequest(service=service, allow_missing=True)))
    candidate = op.result(timeout=operation_timeout)
    tag_url = next((t.uri for t in candidate.traffic_statuses if t.tag == version and t.uri), None)
    if not tag_url:
        raise PhotoDetectorError(f"Cloud Run gave no URL for the tag {version} of {name}",
                                 "traffic was not moved; check the service in the console")
    log.info("candidate %s is up at %s%s; smoke-testing", revision, tag_url,
             "" if current is None else " with no traffic")
    try:
        report = smoke_test(tag_url, api_key, model_dir, record, ready_timeout=smoke_ready_timeout)
    except SmokeTestFailed as exc:
        if current is not None:
            raise
        # A first deploy has no earlier revision to keep the traffic: Cloud Run gave the candidate all of it.
        # Remove the service, so no client ever reaches a model that failed its smoke test.
        with_retries(f"removing {name}", lambda: client.delete_service(name=name)).result(timeout=operation_timeout)
        raise SmokeTestFailed(f"{exc.message}; this was the first deploy of {name}, so the service was removed "
                              "and no client can reach the unverified model", exc.hint) from None

    final = run_v2.Service.from_json(run_v2.Service.to_json(candidate))
    final.traffic = [run_v2.TrafficTarget(type_=REVISION, revision=revision, percent=100)]
    op = with_retries(f"moving traffic of {name} to {revision}", lambda: client.update_service(
        request=run_v2.UpdateServiceRequest(service=final)))
    done = op.result(timeout=operation_timeout)
    log.info("%s now serves %s (previous: %s) at %s", name, revision, previous, done.uri)
    return RolloutResult(name, done.uri, revision, previous, version, image, changed=True, tag_url=tag_url,
                         smoke_checks=report.checks)
