"""The Vertex AI prediction protocol: `{"instances": [{"b64": ...} | {"gcs_uri": ...}]}` → image bytes or a
per-instance error, so one bad instance never fails the others (batch prediction sends many per request)."""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ALLOWED_ENV = "PHOTO_DETECTOR_GCS_ALLOWED_PREFIXES"


@dataclass(frozen=True)
class InstanceError:
    status: int
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.status, "message": self.message}}


def parse_instances(payload: Any, max_instances: int) -> list[Any]:
    """The request's instances list; a wrong shape of the whole request is a ValueError (400)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
        raise ValueError('send a JSON object {"instances": [{"b64": "..."} or {"gcs_uri": "gs://..."}, ...]}')
    instances = payload["instances"]
    if not instances:
        raise ValueError('"instances" is empty')
    if len(instances) > max_instances:
        raise ValueError(f"{len(instances)} instances; the limit per request is {max_instances} "
                         "(serve.max_batch_files)")
    return instances


def allowed_prefixes(configured: list[str], env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The gs:// prefixes `gcs_uri` instances may name: $PHOTO_DETECTOR_GCS_ALLOWED_PREFIXES (comma-separated),
    else serve.gcs_allowed_prefixes, else under Vertex AI (AIP_STORAGE_URI) the bucket of the model, else none.
    Why: the service account reads more than a caller should; a key holder must not read (or learn the size or
    existence of) any object it can reach. Each prefix ends with "/", so gs://shop never admits gs://shop-private."""
    env = os.environ if env is None else env
    listed = [p.strip() for p in env.get(ALLOWED_ENV, "").split(",") if p.strip()] or list(configured)
    if not listed and env.get("AIP_STORAGE_URI", "").startswith("gs://"):
        listed = ["gs://" + env["AIP_STORAGE_URI"].removeprefix("gs://").split("/", 1)[0]]
    return tuple(p if p.endswith("/") else p + "/" for p in listed if p.startswith("gs://"))


def is_allowed(uri: str, prefixes: tuple[str, ...]) -> bool:
    return any(uri.startswith(p) for p in prefixes) and "/../" not in uri


def read_gcs(uri: str, max_bytes: int, allowed: tuple[str, ...] = ()) -> bytes | InstanceError:
    """An object's bytes, refused above `max_bytes` before downloading it. A URI outside `allowed` gets one
    refusal, decided before any request: the same whether or not the object exists, and never its size."""
    from photo_detector.cloud.gcs import split_uri, thread_client
    from photo_detector.errors import PhotoDetectorError

    if not is_allowed(uri, allowed):
        return InstanceError(403, "gcs_uri is outside the prefixes this service may read "
                                  "(serve.gcs_allowed_prefixes); send the image as b64")
    try:
        bucket, name = split_uri(uri)
    except PhotoDetectorError as exc:
        return InstanceError(400, exc.message)
    try:
        from google.api_core import exceptions as gexc

        blob = thread_client().bucket(bucket).get_blob(name, timeout=30)
        if blob is None:
            return InstanceError(404, f"{uri} does not exist")
        if (blob.size or 0) > max_bytes:
            return InstanceError(413, f"{uri} is {blob.size} bytes; the limit is {max_bytes}")
        return blob.download_as_bytes(timeout=60)
    except gexc.Forbidden:
        return InstanceError(403, f"the service account may not read {uri}")
    except Exception as exc:  # one unreadable object fails its instance, not the request
        return InstanceError(502, f"reading {uri} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")


def instance_bytes(instance: Any, max_bytes: int, allowed: tuple[str, ...] = ()) -> bytes | InstanceError:
    """One instance's image bytes, or why it has none."""
    if not isinstance(instance, dict):
        return InstanceError(400, 'an instance must be an object: {"b64": ...} or {"gcs_uri": ...}')
    if isinstance(instance.get("b64"), str):
        text = instance["b64"]
        if len(text) > max_bytes * 4 // 3 + 4:
            return InstanceError(413, f"the image exceeds the limit of {max_bytes} bytes")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return InstanceError(400, '"b64" is not valid base64')
    if isinstance(instance.get("gcs_uri"), str):
        return read_gcs(instance["gcs_uri"], max_bytes, allowed)
    return InstanceError(400, 'an instance needs "b64" (base64 image bytes) or "gcs_uri" (gs://...)')
