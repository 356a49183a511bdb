"""Names of everything the product keeps in a Google Cloud project, derived from the project id.

Why derived: defaults that name one team's project (`photo-detector-prod`) send a new user's images, data and
runs somewhere they do not own. Every name here has a config key that overrides it; an empty key means "the
derived name". The checked-in compiled spec is built without a project and carries `PROJECT_ID`, which
`submit` refuses; Cloud Build compiles with the real project.
"""

from __future__ import annotations

import os
import re
from typing import Any

from photo_detector.config import Config
from photo_detector.errors import PhotoDetectorError

PLACEHOLDER_PROJECT = "PROJECT_ID"
PROJECT_ENV = ("PHOTO_DETECTOR_PROJECT", "CLOUD_ML_PROJECT_ID", "GOOGLE_CLOUD_PROJECT")


def project_id(cfg: Config, explicit: str | None = None) -> str:
    """--project, else $PHOTO_DETECTOR_PROJECT, else gcp.project, else the project a Vertex task or Cloud
    Run/Build step runs in; "" when none is known (Application Default Credentials are asked by the CLI)."""
    for value in (explicit, os.environ.get(PROJECT_ENV[0]), cfg.gcp.project, *(os.environ.get(e) for e in
                                                                              PROJECT_ENV[1:])):
        if value:
            return value
    return ""


def image_registry(cfg: Config, project: str | None = None) -> str:
    """`images.registry`, else `{gcp.region}-docker.pkg.dev/{project}/{gcp.docker_repository}`."""
    if cfg.images.registry:
        return cfg.images.registry.rstrip("/")
    proj = project or project_id(cfg) or PLACEHOLDER_PROJECT
    return f"{cfg.gcp.region}-docker.pkg.dev/{proj}/{cfg.gcp.docker_repository}"


def image_uri(cfg: Config, image: str, project: str | None = None) -> str:
    """`{registry}/{image}:{tag}`: one image per stage and the service, all tagged alike by one build."""
    return f"{image_registry(cfg, project)}/{image}:{cfg.images.tag}"


def data_bucket(project: str) -> str:
    return f"{project}-photo-detector-data"


def pipeline_bucket(project: str) -> str:
    return f"{project}-photo-detector-pipelines"


def data_uri(cfg: Config, project: str | None = None) -> str:
    """`pipeline.data_uri`, else gs://{project}-photo-detector-data/cifake (what `setup` creates)."""
    if cfg.pipeline.data_uri:
        return cfg.pipeline.data_uri
    return f"gs://{data_bucket(project or project_id(cfg) or PLACEHOLDER_PROJECT)}/cifake"


def pipeline_root(cfg: Config, project: str | None = None) -> str:
    """`gcp.pipeline_root`, else gs://{project}-photo-detector-pipelines/root; "" without a project."""
    if cfg.gcp.pipeline_root:
        return cfg.gcp.pipeline_root
    proj = project or project_id(cfg)
    return f"gs://{pipeline_bucket(proj)}/root" if proj else ""


_REGISTRY_PROJECT = re.compile(r"^[a-z0-9-]+-docker\.pkg\.dev/([^/]+)/")
_DATA_PROJECT = re.compile(r"^gs://(.+)-photo-detector-data(/|$)")


def spec_projects(spec: dict[str, Any], data_uri: str) -> dict[str, str]:
    """The project each project-derived name of a compiled spec names: name -> project (the stage and serve
    images in Artifact Registry, and a data_uri in a derived data bucket). Names outside those patterns (a
    registry of one's own, a data_uri elsewhere) name no project and are not listed."""
    refs = {e["container"]["image"] for e in spec.get("deploymentSpec", {}).get("executors", {}).values()
            if "container" in e}
    for component in spec.get("components", {}).values():  # the serve image is a constant input of deploy
        for task in component.get("dag", {}).get("tasks", {}).values():
            value = task.get("inputs", {}).get("parameters", {}).get("serve_image", {})
            if "runtimeValue" in value:
                refs.add(value["runtimeValue"]["constant"])
    found = {ref: m.group(1) for ref in sorted(refs) if (m := _REGISTRY_PROJECT.match(ref))}
    if m := _DATA_PROJECT.match(data_uri or ""):
        found[data_uri] = m.group(1)
    return found


def check_spec_project(spec: dict[str, Any], data_uri: str, project: str, *, template: str, pipeline: str) -> None:
    """Refuse, before any request, a spec compiled for another project (or none: `PROJECT_ID`), naming the two
    fixes: the template Cloud Build uploaded, or a spec compiled for this project."""
    other = {name: p for name, p in spec_projects(spec, data_uri).items() if p != project}
    if not other:
        return
    named = sorted(set(other.values()))
    example = next(iter(other))
    raise PhotoDetectorError(
        f"{template} was compiled for project {', '.join(named)}, not {project}: {len(other)} name(s) in it point "
        f"there (e.g. {example})",
        f"submit the template Cloud Build uploaded for {project} (--template {pipeline}:TAG), or compile one for "
        f"it: photo-detector compile --project {project} --image-tag TAG")
