"""The HTTP service: `POST /predict`, `POST /predict/batch`, `GET /model`, `GET /health`.

Torch-free on purpose (cold start, image size): ONNX Runtime runs the exported model and
`photo_detector.preprocess` prepares images exactly as the evaluate stage did, so what was gated is served.
The model loads and runs one warm-up inference in a background thread; /health answers 503 until then.
Every response carries a request id; every request is logged as one JSON line (Cloud Logging fields),
never with its headers, so API keys never reach the logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from photo_detector import CLASS_NAMES, __version__
from photo_detector.config import Config, ThresholdsConfig
from photo_detector.decision import confidence_for, label_for
from photo_detector.inference import LoadedModel
from photo_detector.preprocess import decode_square, to_model_input
from photo_detector.serving.auth import KeyChecker
from photo_detector.serving.images import ImageRejected, open_image

log = logging.getLogger("photo_detector.serve")
API_KEY_HEADER = "x-api-key"
REQUEST_ID_HEADER = "X-Request-ID"


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the fields Cloud Logging understands (severity, httpRequest)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"severity": record.levelname, "message": record.getMessage(),
                                 "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "logger": record.name}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_json_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class ClientError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class ServiceState:
    source: str
    cfg: Config
    keys: KeyChecker
    model: LoadedModel | None = None
    error: str | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.perf_counter)


def resolve_model(source: str) -> Path:
    """A local folder as is; gs://... mirrored into the cache (only changed files are fetched)."""
    if source.startswith("gs://"):
        from photo_detector.cloud.gcs import download_prefix

        cache = Path(os.environ.get("PHOTO_DETECTOR_CACHE", Path(tempfile.gettempdir()) / "photo-detector"))
        dest = cache / "models" / source.removeprefix("gs://").replace("/", "_")
        download_prefix(source, dest)
        return dest
    return Path(source)


def load_model(state: ServiceState) -> None:
    try:
        model = LoadedModel.load(resolve_model(state.source), threads=state.cfg.serve.threads)
        crop = model.preprocess.crop_size
        model.probabilities(np.zeros((1, 3, crop, crop), np.float32))  # warm-up: first run allocates
        state.model = model
        state.ready.set()
        log.info("model %s loaded from %s and warmed up in %.2fs", model.version, state.source,
                 time.perf_counter() - state.started)
    except Exception as exc:  # reported by /health and the log; the process stays up to say why
        state.error = f"{type(exc).__name__}: {exc}"
        log.exception("model load failed: %s", state.error)


def _thresholds(model: LoadedModel) -> ThresholdsConfig:
    t = model.metadata.get("thresholds", {})
    return ThresholdsConfig(**{k: float(v) for k, v in t.items() if k in ThresholdsConfig.__dataclass_fields__})


def create_app(source: str, cfg: Config, keys: KeyChecker, *, load_in_background: bool = True) -> Starlette:
    state = ServiceState(source, cfg, keys)

    def error(status: int, message: str, request: Request) -> JSONResponse:
        return JSONResponse({"error": message, "request_id": request.state.request_id}, status_code=status)

    def require_key(request: Request) -> None:
        if not state.keys.check(request.headers.get(API_KEY_HEADER)):
            raise ClientError(401, f"missing or invalid {API_KEY_HEADER.upper()} header")

    def require_model() -> LoadedModel:
        if state.model is None:
            raise ClientError(503, "the model is still loading" if state.error is None else "the model failed to load")
        return state.model

    async def read_body(request: Request) -> bytes:
        limit = state.cfg.serve.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ClientError(413, f"the request body is {declared} bytes; the limit is {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ClientError(413, f"the request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def files_from(request: Request, field_name: str, max_files: int) -> list[bytes]:
        body = await read_body(request)
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise ClientError(415, f"send multipart/form-data with the image in the '{field_name}' field")
        request._body = body  # the form parser reads the body already bounded above
        try:
            form = await request.form(max_files=max_files, max_fields=max_files + 8)
        except Exception as exc:  # malformed multipart is the client's error
            raise ClientError(400, f"malformed multipart body: {getattr(exc, 'detail', exc)}") from None
        parts = form.getlist(field_name)
        if not parts:
            raise ClientError(400, f"no '{field_name}' field in the form")
        out = []
        for part in parts:
            if isinstance(part, str):
                raise ClientError(400, f"the '{field_name}' field must be a file upload")
            out.append(await part.read())
        await form.close()
        return out

    def predict_bytes(blobs: list[bytes]) -> tuple[np.ndarray, float]:
        model = require_model()
        pp = model.preprocess
        squares = []
        for i, data in enumerate(blobs):
            try:
                img = open_image(data, max_pixels=state.cfg.serve.max_image_pixels, draft_size=pp.store_size)
                squares.append(decode_square(img, pp.store_size))
            except ImageRejected as exc:
                where = f"file {i + 1}: " if len(blobs) > 1 else ""
                raise ClientError(exc.status, where + exc.message) from None
        inputs = to_model_input(squares, pp)
        t0 = time.perf_counter()
        probs = model.probabilities(inputs)
        return probs, (time.perf_counter() - t0) * 1000.0

    async def run_limited(blobs: list[bytes]) -> tuple[np.ndarray, float]:
        timeout = state.cfg.serve.request_timeout_seconds
        try:
            return await asyncio.wait_for(asyncio.to_thread(predict_bytes, blobs), timeout)
        except TimeoutError:
            raise ClientError(503, f"the prediction took longer than {timeout}s; retry") from None

    def result(p: float, model: LoadedModel, ms: float) -> dict[str, Any]:
        t = _thresholds(model)
        return {"prediction": label_for(p, t), "probability": round(float(p), 6), "confidence": confidence_for(p, t),
                "model_version": model.version, "inference_time_ms": round(ms, 3)}

    async def predict(request: Request) -> Response:
        require_key(request)
        require_model()
        blobs = await files_from(request, "file", 1)
        if len(blobs) != 1:
            raise ClientError(400, "send exactly one 'file'; use /predict/batch for several")
        probs, ms = await run_limited(blobs)
        return JSONResponse({**result(probs[0], state.model, ms), "request_id": request.state.request_id})

    async def predict_batch(request: Request) -> Response:
        require_key(request)
        require_model()
        limit = state.cfg.serve.max_batch_files
        blobs = await files_from(request, "files", limit)
        if len(blobs) > limit:
            raise ClientError(413, f"{len(blobs)} files; the limit per batch is {limit}")
        probs, ms = await run_limited(blobs)
        return JSONResponse({"predictions": [result(p, state.model, ms / len(blobs)) for p in probs],
                             "batch_inference_time_ms": round(ms, 3), "request_id": request.state.request_id})

    async def model_info(request: Request) -> Response:
        require_key(request)
        model = require_model()
        meta = model.metadata
        return JSONResponse({
            "model_version": model.version, "model_name": meta.get("model_name"), "source": state.source,
            "image_size": meta.get("image_size"), "class_names": meta.get("class_names", list(CLASS_NAMES)),
            "thresholds": meta.get("thresholds"), "val_metrics": meta.get("val_metrics"),
            "eval_metrics": meta.get("eval_metrics"), "data_digest": meta.get("data_digest"),
            "created_at": meta.get("created_at"), "service_version": __version__,
            "request_id": request.state.request_id})

    async def health(request: Request) -> Response:
        if state.ready.is_set():
            return JSONResponse({"status": "ok", "model_version": state.model.version})
        status = "loading" if state.error is None else "failed"
        return JSONResponse({"status": status, "error": state.error}, status_code=503)

    class RequestContext:
        """Request id, JSON access log, and the guarantee that an error becomes JSON, never a traceback."""

        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await self.app(scope, receive, send)
                return
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            rid = headers.get("x-request-id", "")[:64] or uuid.uuid4().hex
            scope.setdefault("state", {})["request_id"] = rid
            start, status = time.perf_counter(), [500]

            async def send_with_id(message: dict) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                    message.setdefault("headers", []).append((REQUEST_ID_HEADER.encode(), rid.encode()))
                await send(message)

            try:
                await self.app(scope, receive, send_with_id)
            finally:
                latency = time.perf_counter() - start
                fields = {"httpRequest": {"requestMethod": scope["method"], "requestUrl": scope["path"],
                                          "status": status[0], "latency": f"{latency:.6f}s",
                                          "userAgent": headers.get("user-agent", "")},
                          "request_id": rid}
                trace = headers.get("x-cloud-trace-context", "").split("/")[0]
                if trace:
                    fields["logging.googleapis.com/trace"] = trace
                log.info("%s %s %d %.1fms", scope["method"], scope["path"], status[0], latency * 1000,
                         extra={"fields": fields})

    async def on_client_error(request: Request, exc: ClientError) -> Response:
        return error(exc.status, exc.message, request)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return error(500, "internal error; the request id identifies it in the logs", request)

    async def on_http(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 400)
        return error(status, str(getattr(exc, "detail", "")) or "request rejected", request)

    from starlette.exceptions import HTTPException

    app = Starlette(
        routes=[Route("/health", health, methods=["GET"]), Route("/model", model_info, methods=["GET"]),
                Route("/predict", predict, methods=["POST"]), Route("/predict/batch", predict_batch, methods=["POST"])],
        middleware=[Middleware(RequestContext)],
        exception_handlers={ClientError: on_client_error, HTTPException: on_http, Exception: on_unexpected},
    )
    app.state.service = state
    if load_in_background:
        threading.Thread(target=load_model, args=(state,), daemon=True, name="model-loader").start()
    else:
        load_model(state)
    return app


def serve(source: str, cfg: Config, keys: KeyChecker, *, host: str, port: int) -> None:
    import uvicorn

    setup_json_logging()
    if keys.allow_all:
        log.warning("no API key hashes configured: every request is accepted (--no-auth)")
    app = create_app(source, cfg, keys)
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, server_header=False,
                timeout_keep_alive=30)
