"""Pipeline templates in an Artifact Registry KFP repository (kfp.registry): upload with tags, download."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from photo_detector.cloud.settings import Settings
from photo_detector.errors import PhotoDetectorError

log = logging.getLogger(__name__)


@dataclass
class UploadResult:
    host: str
    package: str
    version: str
    tags: list[str]


def _client(settings: Settings) -> Any:
    from kfp.registry import ApiAuth, RegistryClient

    # A redirected endpoint gets a dummy token; the real host uses Application Default Credentials.
    auth = ApiAuth("emulator") if settings.endpoints.get("artifact_registry") else None
    return RegistryClient(host=settings.kfp_host(), auth=auth)


def _http_error(action: str, exc: Exception) -> PhotoDetectorError:
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        hint = {401: "run `gcloud auth application-default login`",
                403: "ask for roles/artifactregistry.writer on the repository",
                404: "create the repository: gcloud artifacts repositories create NAME --repository-format=KFP",
                409: "that tag already points elsewhere; choose another tag"}.get(code, "retry later")
        return PhotoDetectorError(f"{action} failed: HTTP {code} {exc.response.text.strip()[:200]}", hint)
    return PhotoDetectorError(f"{action} failed: {exc}", "check the network and the repository URL")


def upload_template(settings: Settings, path: str | Path, tags: list[str]) -> UploadResult:
    path = Path(path)
    if not path.is_file():
        raise PhotoDetectorError(f"compiled pipeline {path} does not exist", "run `photo-detector compile` first")
    client = _client(settings)
    try:
        package, version = client.upload_pipeline(str(path), tags=tags or None)
    except Exception as exc:  # requests errors from the registry client
        raise _http_error(f"upload of {path} to {settings.kfp_host()}", exc) from None
    log.info("uploaded %s to %s as %s %s (tags %s)", path, settings.kfp_host(), package, version, tags)
    return UploadResult(settings.kfp_host(), package, version.strip(), tags)


def download_template(settings: Settings, name: str, tag: str, dest: Path) -> Path:
    """Fetch NAME:TAG into `dest` (a file), so it can be checked before submitting."""
    client = _client(settings)
    try:
        client.download_pipeline(package_name=name, tag=tag, file_name=str(dest))
    except Exception as exc:
        raise _http_error(f"download of template {name}:{tag} from {settings.kfp_host()}", exc) from None
    return dest
