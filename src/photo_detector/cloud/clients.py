"""The clients `setup` and `doctor` use: REST and anonymous when an endpoint is redirected (the local fakes),
the official default otherwise."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from photo_detector.cloud.settings import Settings

CALL_TIMEOUT = 15.0  # seconds per API call in setup and doctor


@dataclass
class Clients:
    settings: Settings
    cache: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        if name not in self.cache:
            self.cache[name] = self._make(name)
        return self.cache[name]

    def _make(self, name: str) -> Any:
        s = self.settings
        if name == "service_usage":
            from google.cloud import service_usage_v1
            return s.client(name, service_usage_v1.ServiceUsageClient)
        if name == "artifact_registry":
            from google.cloud import artifactregistry_v1
            return s.client(name, artifactregistry_v1.ArtifactRegistryClient)
        if name == "secret_manager":
            from photo_detector.cloud.secrets import secrets_client
            return secrets_client(s)
        if name == "iam":
            return IamRest(s)
        if name == "resource_manager":
            from google.cloud import resourcemanager_v3
            return s.client(name, resourcemanager_v3.ProjectsClient)
        if name == "quotas":
            from google.cloud import cloudquotas_v1
            return s.client(name, cloudquotas_v1.CloudQuotasClient)
        if name == "storage":
            from google.cloud import storage
            return storage.Client(project=s.project, credentials=s.credentials("storage"))
        if name == "tensorboard":
            from google.cloud import aiplatform_v1
            return s.vertex_client(aiplatform_v1.TensorboardServiceClient)
        raise KeyError(name)


class IamRest:
    """Service accounts through the IAM REST API (google-cloud-iam's admin client speaks gRPC only, which no
    local fake or proxy can stand in for): the two calls setup and doctor make, with the same errors
    (google.api_core exceptions) as the generated clients."""

    def __init__(self, settings: Settings) -> None:
        self.base = (settings.endpoints.get("iam") or "https://iam.googleapis.com").rstrip("/")
        self.settings = settings

    def _session(self) -> Any:
        from google.auth.transport.requests import AuthorizedSession

        creds = self.settings.credentials("iam")
        if creds is None:
            import google.auth

            creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        return AuthorizedSession(creds)

    def _send(self, method: str, path: str, timeout: float, body: dict[str, Any] | None = None) -> dict[str, Any]:
        from google.api_core import exceptions as gexc

        r = self._session().request(method, f"{self.base}/v1/{path}", json=body, timeout=timeout)
        if r.status_code >= 400:
            raise gexc.from_http_response(r)
        return r.json()

    def get_service_account(self, *, name: str, timeout: float = CALL_TIMEOUT, retry: Any = None) -> dict[str, Any]:
        return self._send("GET", name, timeout)

    def create_service_account(self, *, request: dict[str, Any], timeout: float = CALL_TIMEOUT,
                               retry: Any = None) -> dict[str, Any]:
        body = {"accountId": request["account_id"],
                "serviceAccount": {"displayName": request["service_account"]["display_name"]}}
        return self._send("POST", f"{request['name']}/serviceAccounts", timeout, body)
