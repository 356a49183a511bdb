"""The Vertex AI prediction protocol: `{"instances": [{"b64": ...} | {"gcs_uri": ...}]}` → image bytes or a
per-instance error, so one bad instance never fails the others (batch prediction sends many per request)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any


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


def read_gcs(uri: str, max_bytes: int) -> bytes | InstanceError:
    """An object's bytes, refused above `max_bytes` before downloading it."""
    from photo_detector.cloud.gcs import split_uri, thread_client
    from photo_detector.errors import PhotoDetectorError

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


def instance_bytes(instance: Any, max_bytes: int) -> bytes | InstanceError:
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
        return read_gcs(instance["gcs_uri"], max_bytes)
    return InstanceError(400, 'an instance needs "b64" (base64 image bytes) or "gcs_uri" (gs://...)')
