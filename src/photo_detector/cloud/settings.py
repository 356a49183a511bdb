"""Where the cloud commands act: config file <- PHOTO_DETECTOR_* environment <- command-line flags.

API endpoints can be redirected (emulators, local fakes, private endpoints) with environment variables;
a redirected service is called with anonymous credentials, so no Google login is needed for it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from photo_detector.cloud.naming import pipeline_root, project_id
from photo_detector.config import Config
from photo_detector.errors import ConfigError

# setting -> (config key, environment variable, flag)
SOURCES: dict[str, tuple[str, str, str]] = {
    "project": ("gcp.project", "PHOTO_DETECTOR_PROJECT", "--project"),
    "region": ("gcp.region", "PHOTO_DETECTOR_REGION", "--region"),
    "pipeline_root": ("gcp.pipeline_root", "PHOTO_DETECTOR_PIPELINE_ROOT", "--pipeline-root"),
    "service_account": ("gcp.service_account", "PHOTO_DETECTOR_SERVICE_ACCOUNT", "--service-account"),
    "kfp_repository": ("gcp.kfp_repository", "PHOTO_DETECTOR_KFP_REPOSITORY", "--repository"),
    "experiment": ("gcp.experiment", "PHOTO_DETECTOR_EXPERIMENT", "--experiment"),
    "image_registry": ("images.registry", "PHOTO_DETECTOR_IMAGE_REGISTRY", "--registry"),
}
ENDPOINTS: dict[str, str] = {
    "vertex": "PHOTO_DETECTOR_VERTEX_ENDPOINT",
    "artifact_registry": "PHOTO_DETECTOR_ARTIFACT_REGISTRY_ENDPOINT",
    "run": "PHOTO_DETECTOR_RUN_ENDPOINT",
    "storage": "STORAGE_EMULATOR_HOST",
    "secret_manager": "PHOTO_DETECTOR_SECRET_MANAGER_ENDPOINT",
    "service_usage": "PHOTO_DETECTOR_SERVICE_USAGE_ENDPOINT",
    "iam": "PHOTO_DETECTOR_IAM_ENDPOINT",
    "resource_manager": "PHOTO_DETECTOR_RESOURCE_MANAGER_ENDPOINT",
    "quotas": "PHOTO_DETECTOR_QUOTAS_ENDPOINT",
}


@dataclass
class Settings:
    project: str = ""
    region: str = ""
    pipeline_root: str = ""
    service_account: str = ""
    kfp_repository: str = ""
    experiment: str = ""
    image_registry: str = ""
    endpoints: dict[str, str] = field(default_factory=dict)

    def require(self, name: str) -> str:
        value = getattr(self, name)
        if not value:
            key, env, flag = SOURCES[name]
            raise ConfigError(f"no {name.replace('_', ' ')} is set",
                              f"pass {flag}, set {env}, or set {key} in the config file")
        return value

    def credentials(self, service: str) -> Any:
        """Anonymous credentials for a redirected endpoint; None (= Application Default Credentials) otherwise."""
        if self.endpoints.get(service):
            from google.auth.credentials import AnonymousCredentials

            return AnonymousCredentials()
        return None

    def client(self, service: str, factory: Callable[..., Any], default_endpoint: str = "") -> Any:
        """A generated Google client: over REST with anonymous credentials to a redirected endpoint (a fake,
        an emulator, a private endpoint), else the library's defaults at `default_endpoint` if given."""
        from google.api_core.client_options import ClientOptions

        endpoint = self.endpoints.get(service)
        if not endpoint:
            return factory(client_options=ClientOptions(api_endpoint=default_endpoint)) if default_endpoint \
                else factory()
        return factory(transport="rest", credentials=self.credentials(service),
                       client_options=ClientOptions(api_endpoint=endpoint))

    def vertex_client(self, factory: Callable[..., Any]) -> Any:
        """A Vertex AI GAPIC client: Vertex resources are regional, so the default is the region's endpoint."""
        return self.client("vertex", factory, f"{self.require('region')}-aiplatform.googleapis.com")

    def kfp_host(self) -> str:
        """The Artifact Registry KFP repository URL templates are pushed to and pulled from."""
        base = self.endpoints.get("artifact_registry") or f"https://{self.require('region')}-kfp.pkg.dev"
        return f"{base.rstrip('/')}/{self.require('project')}/{self.require('kfp_repository')}"

    def console_url(self, job_id: str) -> str:
        return (f"https://console.cloud.google.com/vertex-ai/locations/{self.region}/pipelines/runs/{job_id}"
                f"?project={self.project}")


def _adc_project() -> str:
    """The project of Application Default Credentials, or "" (no credentials, or none configured)."""
    try:
        import google.auth

        return google.auth.default()[1] or ""
    except Exception:  # no ADC at all is a normal state for a first run; `doctor` says what to do
        return ""


def resolve(cfg: Config, flags: dict[str, str | None] | None = None) -> Settings:
    values: dict[str, Any] = {}
    for name, (key, env, _flag) in SOURCES.items():
        value = (flags or {}).get(name) or os.environ.get(env) or cfg.get(key)
        values[name] = str(value or "")
    # The one project rule (naming.project_id: flag, environment, config, the project a Vertex task or
    # Cloud Run/Build step runs in); on a laptop, Application Default Credentials know it.
    values["project"] = project_id(cfg, (flags or {}).get("project")) or _adc_project()
    if not values["pipeline_root"] and values["project"]:
        values["pipeline_root"] = pipeline_root(cfg, values["project"])
    if values["pipeline_root"] and not values["pipeline_root"].startswith("gs://"):
        raise ConfigError(f"pipeline root {values['pipeline_root']!r} is not a gs:// URI",
                          "pass --pipeline-root gs://BUCKET/PATH")
    endpoints = {svc: os.environ[env] for svc, env in ENDPOINTS.items() if os.environ.get(env)}
    return Settings(**values, endpoints=endpoints)
