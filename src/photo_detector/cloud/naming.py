"""Names of everything the product keeps in a Google Cloud project, derived from the project id.

Why derived: defaults that name one team's project (`photo-detector-prod`) send a new user's images, data and
runs somewhere they do not own. Every name here has a config key that overrides it; an empty key means "the
derived name". The checked-in compiled spec is built without a project and carries `PROJECT_ID`, which
`submit` refuses; Cloud Build compiles with the real project.
"""

from __future__ import annotations

import os

from photo_detector.config import Config

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
