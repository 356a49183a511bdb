"""Helpers for tests that talk to the real service on loopback."""

from __future__ import annotations

import time
from typing import Any

from photo_detector.serving.local import running

__all__ = ["running", "wait_ready"]


def wait_ready(client: Any, url: str, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while client.get(f"{url}/health").status_code != 200:
        if time.time() > deadline:
            raise RuntimeError("service never became healthy")
        time.sleep(0.02)
