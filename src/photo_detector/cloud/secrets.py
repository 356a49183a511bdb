"""Secret Manager: the service's API-key hashes and the smoke-test key (official client, REST when redirected)."""

from __future__ import annotations

from typing import Any

from photo_detector.cloud.settings import Settings


def secrets_client(settings: Settings) -> Any:
    from google.api_core.client_options import ClientOptions
    from google.cloud import secretmanager_v1

    endpoint = settings.endpoints.get("secret_manager")
    if endpoint:
        return secretmanager_v1.SecretManagerServiceClient(
            transport="rest", credentials=settings.credentials("secret_manager"),
            client_options=ClientOptions(api_endpoint=endpoint))
    return secretmanager_v1.SecretManagerServiceClient()
