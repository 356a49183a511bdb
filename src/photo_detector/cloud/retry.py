"""Retries for Google API calls, and the one place their errors become user errors.

`with_retries` retries 429 and 5xx and re-raises the API's own exception otherwise (tagged with what was
being done), so callers can still tell NotFound from PermissionDenied; the CLI and the stage wrapper turn
whatever escapes into one line with the fix (`user_error`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from photo_detector.errors import PhotoDetectorError

log = logging.getLogger(__name__)

RETRYABLE = (429, 500, 502, 503, 504)
ACTION = "photo_detector_action"  # attribute carrying "what we were doing" on a re-raised API exception
HINTS_ATTR = "photo_detector_hints"  # ... and the service's own hints per status code
HINTS = {401: "run `gcloud auth application-default login`",
         403: "the account lacks a role: `photo-detector doctor` names which",
         404: "check the project, region and name (`photo-detector doctor` checks what should exist)",
         409: "a resource with that id already exists",
         429: "quota exceeded or too many requests; retry later"}


def with_retries(action: str, call: Callable[[], Any], *, attempts: int = 4, backoff: float | None = None,
                 sleep: Callable[[float], None] = time.sleep, hints: dict[int, str] | None = None) -> Any:
    """Retry on 429 and 5xx (exponential backoff from $PHOTO_DETECTOR_RETRY_BACKOFF seconds, default 1);
    any other API error, and the last retryable one, is re-raised as the API's own exception."""
    from google.api_core import exceptions as gexc

    if backoff is None:
        backoff = float(os.environ.get("PHOTO_DETECTOR_RETRY_BACKOFF", "1.0"))
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except gexc.GoogleAPICallError as exc:
            if exc.code in RETRYABLE and attempt < attempts:
                delay = backoff * 2 ** (attempt - 1)
                log.warning("%s: HTTP %s, retrying in %.1fs (%d/%d)", action, exc.code, delay, attempt, attempts)
                sleep(delay)
                continue
            setattr(exc, ACTION, action)
            setattr(exc, HINTS_ATTR, hints or {})
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def api_error(action: str, exc: Exception, hint: str | None = None) -> PhotoDetectorError:
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", None) or str(exc)
    hint = hint or (HINTS.get(int(code)) if isinstance(code, int) else None)
    return PhotoDetectorError(f"{action} failed: {f'HTTP {code} ' if code else ''}{message}".strip(),
                              hint or "retry later; if it persists, check the Google Cloud status page")


def user_error(exc: BaseException) -> PhotoDetectorError | None:
    """A Google API or transport failure as one line with the fix; None for anything else (a real bug)."""
    try:
        from google.api_core import exceptions as gexc
    except ImportError:  # an image without Google clients raises none of their errors
        return None
    action = getattr(exc, ACTION, "a Google Cloud call")
    if isinstance(exc, gexc.GoogleAPICallError):
        code = exc.code if isinstance(exc.code, int) else 0
        return api_error(action, exc, getattr(exc, HINTS_ATTR, {}).get(code))
    if isinstance(exc, gexc.RetryError):
        cause = exc.cause or exc
        return PhotoDetectorError(f"{action} gave up after retrying: {type(cause).__name__}: {cause}",
                                  "check the network and the endpoint; re-run to continue")
    return None
