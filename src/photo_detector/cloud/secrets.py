"""Secret Manager: the service's API-key hashes and the smoke-test key (official client, REST when redirected)."""

from __future__ import annotations

from typing import Any

from photo_detector.cloud.settings import Settings


def secrets_client(settings: Settings) -> Any:
    from google.cloud import secretmanager_v1

    return settings.client("secret_manager", secretmanager_v1.SecretManagerServiceClient)
