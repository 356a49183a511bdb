"""ASGI middleware of the service: authentication by allow-list, and the request context (id, log, metrics).

Authentication is here, not in the endpoints, so a route is private unless its path is on the allow-list:
a new endpoint cannot forget to check the key. Both are plain ASGI (no per-request Request object).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Collection
from typing import Any

from photo_detector.serving.auth import KeyChecker
from photo_detector.serving.metrics import ServiceMetrics

log = logging.getLogger("photo_detector.serve")
API_KEY_HEADER = b"x-api-key"
REQUEST_ID_HEADER = b"x-request-id"
LOOPBACK = frozenset({"127.0.0.1", "::1"})

Scope = dict[str, Any]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def send_json(send: Callable, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class KeyAuth:
    """Every path needs a valid X-API-Key except those in `public`; those in `loopback_public` are open to
    clients on this host only (the Cloud Run Prometheus sidecar scrapes /metrics over localhost). A request
    that came through a proxy (it carries X-Forwarded-For, which Cloud Run's front end always adds) is never
    "on this host", whatever address the proxy connected from."""

    def __init__(self, app: Any, keys: KeyChecker, public: Collection[str],
                 loopback_public: Collection[str] = ()) -> None:
        self.app, self.keys = app, keys
        self.public, self.loopback_public = frozenset(public), frozenset(loopback_public)

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            open_here = (path in self.loopback_public and (scope.get("client") or ("",))[0] in LOOPBACK
                         and _header(scope, b"x-forwarded-for") is None)
            if path not in self.public and not open_here and not self.keys.check(_header(scope, API_KEY_HEADER)):
                rid = scope.get("state", {}).get("request_id", "")
                await send_json(send, 401, {"error": "missing or invalid X-API-KEY header", "request_id": rid})
                return
        await self.app(scope, receive, send)


class RequestContext:
    """Request id (kept from X-Request-ID or made), one JSON access-log line without headers (keys never reach
    the logs), and the request metrics. Outermost, so it also sees the 401s."""

    def __init__(self, app: Any, metrics: ServiceMetrics, routes: Collection[str]) -> None:
        self.app, self.metrics, self.routes = app, metrics, frozenset(routes)

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = (_header(scope, REQUEST_ID_HEADER) or "")[:64] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        start, status = time.perf_counter(), [500]

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            latency = time.perf_counter() - start
            path = scope["path"]
            self.metrics.observe_request(path if path in self.routes else "unmatched", status[0], latency)
            fields: dict[str, Any] = {
                "httpRequest": {"requestMethod": scope["method"], "requestUrl": path, "status": status[0],
                                "latency": f"{latency:.6f}s", "userAgent": _header(scope, b"user-agent") or ""},
                "request_id": rid}
            trace = (_header(scope, b"x-cloud-trace-context") or "").split("/")[0]
            if trace:
                fields["logging.googleapis.com/trace"] = trace
            log.info("%s %s %d %.1fms", scope["method"], path, status[0], latency * 1000, extra={"fields": fields})
