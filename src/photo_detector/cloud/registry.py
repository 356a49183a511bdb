"""Vertex AI Model Registry: each deployed model becomes a new version of one registered model, the alias
`champion` moves to it, and the quality gate can read the champion's evaluation metrics back.

Versions carry labels linking them to the pipeline run and the data digest (filterable in the console) and
a version description holding their evaluation metrics as JSON (what the gate compares against).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from photo_detector.cloud.retry import with_retries
from photo_detector.cloud.settings import Settings
from photo_detector.cloud.vertex import init_vertex
from photo_detector.config import Config
from photo_detector.errors import PhotoDetectorError

log = logging.getLogger(__name__)

CHAMPION = "champion"
# Declared on every version, so a Vertex endpoint or batch prediction job can run the serve image as is
# (it answers the Vertex protocol on these routes: serving.app.Routes).
VERTEX_PREDICT_ROUTE, VERTEX_HEALTH_ROUTE, VERTEX_PORT = "/v1/predict", "/health", 8080


def _label(value: str) -> str:
    """Label values: lower-case letters, digits, '_' and '-', at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]", "-", value.lower())[:63]


def find_model(settings: Settings, cfg: Config) -> Any | None:
    from google.cloud import aiplatform

    init_vertex(settings)
    models = with_retries("listing registered models", lambda: aiplatform.Model.list(
        filter=f'display_name="{cfg.gcp.model_name}"'))
    return models[0] if models else None


def register_version(settings: Settings, cfg: Config, *, artifact_uri: str, serving_image: str,
                     metrics: dict[str, float], data_digest: str, pipeline_run: str, model_version: str) -> dict:
    """Upload a new version (of the existing model, if any) and move the champion alias to it."""
    from google.cloud import aiplatform

    if not artifact_uri.startswith("gs://"):
        raise PhotoDetectorError(f"cannot register {artifact_uri}: the Model Registry needs a gs:// model folder",
                                 "deploy a model stored in Cloud Storage (pipeline runs always are)")
    parent = find_model(settings, cfg)
    labels = {"app": "photo-detector", "pipeline_run": _label(pipeline_run or "manual"),
              "data_digest": _label(data_digest.removeprefix("sha256:")[:32]), "model_version": _label(model_version)}
    described = json.dumps({"metrics": metrics, "data_digest": data_digest, "pipeline_run": pipeline_run,
                            "model_version": model_version}, sort_keys=True)
    model = with_retries("uploading the model version", lambda: aiplatform.Model.upload(
        display_name=cfg.gcp.model_name, artifact_uri=artifact_uri, serving_container_image_uri=serving_image,
        serving_container_predict_route=VERTEX_PREDICT_ROUTE, serving_container_health_route=VERTEX_HEALTH_ROUTE,
        serving_container_ports=[VERTEX_PORT],
        parent_model=parent.resource_name if parent else None, is_default_version=True,
        version_aliases=[CHAMPION], version_description=described, labels=labels, sync=True))
    info = {"resource_name": model.resource_name, "version_id": model.version_id, "aliases": [CHAMPION],
            "parent": parent.resource_name if parent else None}
    log.info("registered %s version %s as %s", model.resource_name, model.version_id, CHAMPION)
    return info


def champion_metrics(settings: Settings, cfg: Config) -> dict[str, float] | None:
    """The champion version's evaluation metrics, or None when no model is registered yet."""
    from google.api_core import exceptions as gexc
    from google.cloud import aiplatform

    parent = find_model(settings, cfg)
    if parent is None:
        return None
    name = f"{parent.resource_name}@{CHAMPION}"
    try:
        champion = with_retries("reading the champion", lambda: aiplatform.Model(model_name=name))
    except gexc.NotFound:
        return None
    try:
        return json.loads(champion.version_description)["metrics"]
    except (TypeError, ValueError, KeyError):
        raise PhotoDetectorError(f"the champion {name} has no metrics in its version description",
                                 "register it with photo-detector (deploy), or pass champion_metrics") from None
