"""The Cloud Run service spec the deploy stage applies: built from the one config and the model artifact.

The service runs the `serve` image with the model's URI in its environment; API keys come from a Secret
Manager secret (hashed values), never from the spec. What it is, not how it is rolled out (rollout.py) or
when (deploy.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from photo_detector.artifacts import read_record
from photo_detector.config import Config
from photo_detector.inference import content_version

SERVICE_PORT = 8080
HEALTH_PATH = "/health"


def model_version(model_dir: str | Path) -> str:
    """The model folder's content-derived version (what the service reports and revisions are named after)."""
    return content_version(Path(model_dir) / read_record(model_dir).model_file)


def service_name(cfg: Config, project: str, region: str) -> str:
    return f"projects/{project}/locations/{region}/services/{cfg.deploy.service_name}"


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
                    # the only gs:// places a {"gcs_uri"} instance may name (none when empty)
                    *([{"name": "PHOTO_DETECTOR_GCS_ALLOWED_PREFIXES",
                        "value": ",".join(cfg.serve.gcs_allowed_prefixes)}] if cfg.serve.gcs_allowed_prefixes else []),
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
