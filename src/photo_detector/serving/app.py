"""The HTTP service: `POST /predict`, `POST /predict/batch`, `POST /v1/predict` (the Vertex AI protocol),
`POST /v1/explain` (occlusion map), `GET /model`, `GET /health`, `GET /metrics` (Prometheus), and the
review page at `/` (serving.page).

Torch-free on purpose (cold start, image size): ONNX Runtime runs the exported model and
`photo_detector.preprocess` prepares images exactly as the evaluate stage did, so what was gated is served.
The model loads and runs one warm-up inference in a background thread; /health answers 503 until then.
Authentication, request ids, access logs and request metrics are ASGI middleware (serving.middleware), so
endpoints are plain functions and a new route is private unless it is put on the allow-list.
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from photo_detector import __version__
from photo_detector.config import Config
from photo_detector.decision import confidence_for, label_for
from photo_detector.inference import LoadedModel
from photo_detector.preprocess import ALLOWED, ImageRejected, decode_crop, normalise, open_image
from photo_detector.serving import page
from photo_detector.serving.auth import KeyChecker
from photo_detector.serving.explain import crop_region, occlusion_map
from photo_detector.serving.instances import InstanceError, allowed_prefixes, instance_bytes, parse_instances
from photo_detector.serving.metrics import ServiceMetrics
from photo_detector.serving.middleware import KeyAuth, RequestContext
from photo_detector.serving.multipart import MultipartError, file_parts
from photo_detector.serving.timing import Timing

log = logging.getLogger("photo_detector.serve")


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
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
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


# ---- request handling: plain functions of the request and the service state (no closure over create_app)

def _state(request: Request) -> ServiceState:
    return request.app.state.service


def _model(state: ServiceState) -> LoadedModel:
    if state.model is None:
        raise ClientError(503, "the model is still loading" if state.error is None else "the model failed to load")
    return state.model


async def _body(request: Request, limit: int) -> bytes:
    """The whole body, refused (413) as soon as it passes `limit`, declared or streamed."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ClientError(413, f"the request body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ClientError(413, f"the request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _files(request: Request, field_name: str, max_files: int) -> list[bytes]:
    state = _state(request)
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise ClientError(415, f"send multipart/form-data with the image in the '{field_name}' field")
    body = await _body(request, state.cfg.serve.max_body_bytes)
    try:
        parts = file_parts(body, ctype, field_name, max_parts=max_files + 8)
    except MultipartError as exc:
        raise ClientError(400, f"malformed multipart body: {exc}") from None
    if not parts:
        raise ClientError(400, f"no '{field_name}' field in the form")
    return parts


def _decode(state: ServiceState, model: LoadedModel, data: bytes, timing: Timing) -> np.ndarray:
    pp = model.preprocess
    with timing.phase("decode"):
        img = open_image(data, max_pixels=state.cfg.serve.max_image_pixels, draft_size=pp.store_size)
    with timing.phase("resize"):
        return decode_crop(img, pp)


def _infer(model: LoadedModel, crops: list[np.ndarray], timing: Timing) -> np.ndarray:
    with timing.phase("normalise"):
        x = normalise(crops, model.preprocess)
    with timing.phase("model"):
        return model.probabilities(x)


def _predict_files(state: ServiceState, blobs: list[bytes], timing: Timing) -> np.ndarray:
    """Decode and run in one worker-thread hop; any bad file fails the request (multipart routes)."""
    model = _model(state)
    squares = []
    for i, data in enumerate(blobs):
        try:
            squares.append(_decode(state, model, data, timing))
        except ImageRejected as exc:
            raise ClientError(exc.status, (f"file {i + 1}: " if len(blobs) > 1 else "") + exc.message) from None
    return _infer(model, squares, timing)


async def _in_worker(state: ServiceState, fn: Any, *args: Any) -> Any:
    """Image work off the event loop, so other requests' bodies are read meanwhile, within the time limit.
    asyncio.timeout rather than wait_for, which on Python 3.11 wraps the call in one more Task."""
    timeout = state.cfg.serve.request_timeout_seconds
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.to_thread(fn, state, *args)
    except TimeoutError:
        raise ClientError(503, f"the prediction took longer than {timeout}s; retry") from None


def _result(state: ServiceState, model: LoadedModel, probs: np.ndarray, timing: Timing) -> list[dict[str, Any]]:
    t = model.thresholds
    scores = probs.tolist()
    labels = [label_for(p, t) for p in scores]
    state.metrics.observe_predictions(labels, scores)
    ms = round(timing.seconds("model") * 1000.0 / max(1, len(scores)), 3)
    return [{"prediction": label, "probability": round(p, 6), "confidence": confidence_for(p, t),
             "model_version": model.version, "inference_time_ms": ms} for label, p in zip(labels, scores, strict=True)]


def _answer(state: ServiceState, payload: dict[str, Any], timing: Timing) -> JSONResponse:
    """The JSON answer with its Server-Timing header; the same phases go to /metrics."""
    state.metrics.observe_phases(timing.phases)
    return JSONResponse(payload, headers={"server-timing": timing.header()})


async def _one_file(request: Request, timing: Timing, hint: str) -> bytes:
    """The one 'file' part of a single-image route (timed as the read phase); 400 with `hint` otherwise."""
    with timing.phase("read"):
        blobs = await _files(request, "file", 1)
    if len(blobs) != 1:
        raise ClientError(400, f"send exactly one 'file'; {hint}")
    return blobs[0]


async def predict(request: Request) -> Response:
    state = _state(request)
    model = _model(state)
    timing = Timing()
    blobs = [await _one_file(request, timing, "use /predict/batch for several")]
    probs = await _in_worker(state, _predict_files, blobs, timing)
    return _answer(state, {**_result(state, model, probs, timing)[0], "request_id": request.state.request_id}, timing)


async def predict_batch(request: Request) -> Response:
    state = _state(request)
    model = _model(state)
    limit = state.cfg.serve.max_batch_files
    timing = Timing()
    with timing.phase("read"):
        blobs = await _files(request, "files", limit)
    if len(blobs) > limit:
        raise ClientError(413, f"{len(blobs)} files; the limit per batch is {limit}")
    probs = await _in_worker(state, _predict_files, blobs, timing)
    return _answer(state, {"predictions": _result(state, model, probs, timing),
                    "batch_inference_time_ms": round(timing.seconds("model") * 1000, 3),
                    "request_id": request.state.request_id}, timing)


def _predict_instances(state: ServiceState, instances: list[Any], timing: Timing) -> list[dict[str, Any]]:
    """Each instance independently: a bad one gets its own error in its place, the others their scores."""
    model = _model(state)
    limit = state.cfg.serve.max_body_bytes
    allowed = allowed_prefixes(state.cfg.serve.gcs_allowed_prefixes)
    out: list[dict[str, Any] | None] = [None] * len(instances)
    squares, where = [], []
    for i, instance in enumerate(instances):
        with timing.phase("read"):
            data = instance_bytes(instance, limit, allowed)
        if isinstance(data, InstanceError):
            out[i] = data.to_json()
            continue
        try:
            squares.append(_decode(state, model, data, timing))
            where.append(i)
        except ImageRejected as exc:
            out[i] = InstanceError(exc.status, exc.message).to_json()
    if squares:
        probs = _infer(model, squares, timing)
        for i, res in zip(where, _result(state, model, probs, timing), strict=True):
            out[i] = res
    return out  # type: ignore[return-value]


async def predict_instances(request: Request) -> Response:
    """The Vertex AI prediction protocol (the serve image is also a Vertex prediction container)."""
    state = _state(request)
    model = _model(state)
    timing = Timing()
    with timing.phase("read"):
        body = await _body(request, state.cfg.serve.max_body_bytes)
        try:
            instances = parse_instances(json.loads(body), state.cfg.serve.max_batch_files)
        except ValueError as exc:  # JSONDecodeError is one
            raise ClientError(400, str(exc)) from None
    predictions = await _in_worker(state, _predict_instances, instances, timing)
    return _answer(state, {"predictions": predictions, "deployedModelId": os.environ.get("AIP_DEPLOYED_MODEL_ID", ""),
                    "model_version": model.version}, timing)


def _explain_file(state: ServiceState, data: bytes, timing: Timing) -> dict[str, Any]:
    """/predict's decode and preprocessing, then the occlusion map, and where the map lies on the image."""
    model = _model(state)
    pp = model.preprocess
    try:
        with timing.phase("decode"):
            img = open_image(data, max_pixels=state.cfg.serve.max_image_pixels, draft_size=pp.store_size)
        with timing.phase("resize"):
            crop = decode_crop(img, pp)
    except ImageRejected as exc:
        raise ClientError(exc.status, exc.message) from None
    out = occlusion_map(model, crop, state.cfg.serve.explain_grid, timing, state.cfg.serve.max_batch_files)
    return {**out, "region": crop_region(*img.size, pp.resize_size, pp.crop_size)}


async def explain(request: Request) -> Response:
    """The occlusion-sensitivity map of one image (serving.explain), within the request time limit."""
    state = _state(request)
    model = _model(state)
    timing = Timing()
    blob = await _one_file(request, timing, "/v1/explain maps one image per request")
    out = await _in_worker(state, _explain_file, blob, timing)
    t, p = model.thresholds, out["probability"]
    return _answer(state, {**out, "probability": round(p, 6), "prediction": label_for(p, t),
                           "confidence": confidence_for(p, t), "threshold": t.classification,
                           "model_version": model.version, "request_id": request.state.request_id}, timing)


async def model_info(request: Request) -> Response:
    state = _state(request)
    model = _model(state)
    r = model.record
    serve_cfg = state.cfg.serve
    return JSONResponse({
        "model_version": model.version, "model_name": r.model_name, "source": state.source,
        "image_size": r.image_size, "class_names": list(r.class_names), "thresholds": r.thresholds,
        "calibration": r.calibration,
        "val_metrics": r.val_metrics, "eval_metrics": r.eval_metrics, "data_digest": r.data_digest,
        "created_at": r.created_at, "format_version": r.format_version, "service_version": __version__,
        "limits": {"max_body_bytes": serve_cfg.max_body_bytes, "max_image_pixels": serve_cfg.max_image_pixels,
                   "max_batch_files": serve_cfg.max_batch_files, "formats": list(ALLOWED),
                   "explain_grid": serve_cfg.explain_grid},
        "request_id": request.state.request_id})


async def health(request: Request) -> Response:
    state = _state(request)
    if state.ready.is_set():
        return JSONResponse({"status": "ok", "model_version": state.model.version})
    status = "loading" if state.error is None else "failed"
    return JSONResponse({"status": status, "error": state.error}, status_code=503)


async def metrics(request: Request) -> Response:
    state = _state(request)
    return Response(state.metrics.render(), media_type=state.metrics.content_type)


def _error(status: int, message: str, request: Request) -> JSONResponse:
    return JSONResponse({"error": message, "request_id": request.state.request_id}, status_code=status)


async def _on_client_error(request: Request, exc: ClientError) -> Response:
    return _error(exc.status, exc.message, request)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s", request.url.path)
    return _error(500, "internal error; the request id identifies it in the logs", request)


async def _on_http(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 400)
    return _error(status, str(getattr(exc, "detail", "")) or "request rejected", request)


@dataclass(frozen=True)
class Routes:
    """Where each endpoint lives. On Vertex AI (AIP_* set) the health and predict routes are the ones Vertex
    names; Vertex authenticates callers with IAM before forwarding, so those two are public there."""

    health: str = "/health"
    predict_instances: str = "/v1/predict"
    vertex: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Routes:
        if env.get("AIP_PREDICT_ROUTE"):
            return cls(env.get("AIP_HEALTH_ROUTE") or "/health", env["AIP_PREDICT_ROUTE"], vertex=True)
        return cls()

    @property
    def public(self) -> set[str]:
        return {"/health", self.health} | ({self.predict_instances} if self.vertex else set())


def create_app(source: str, cfg: Config, keys: KeyChecker, *, load_in_background: bool = True,
               routes: Routes | None = None) -> Starlette:
    """The service. Every route is private (X-API-Key) unless `Routes.public` or the review page's files
    (`page.PUBLIC`) list it; /metrics is open to loopback clients only (the Prometheus sidecar on Cloud Run
    scrapes over localhost)."""
    from starlette.exceptions import HTTPException

    routes = routes or Routes.from_env()
    state = ServiceState(source, cfg)
    table = [Route("/health", health, methods=["GET"]), Route("/metrics", metrics, methods=["GET"]),
             Route("/model", model_info, methods=["GET"]), Route("/predict", predict, methods=["POST"]),
             Route("/predict/batch", predict_batch, methods=["POST"]),
             Route(routes.predict_instances, predict_instances, methods=["POST"]),
             Route("/v1/explain", explain, methods=["POST"]), *page.routes()]
    if routes.health != "/health":
        table.append(Route(routes.health, health, methods=["GET"]))
    app = Starlette(
        routes=table,
        middleware=[Middleware(RequestContext, metrics=state.metrics, routes=[r.path for r in table]),
                    Middleware(KeyAuth, keys=keys, public=routes.public | page.PUBLIC,
                               loopback_public={"/metrics"})],
        exception_handlers={ClientError: _on_client_error, HTTPException: _on_http, Exception: _on_unexpected},
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
    routes = Routes.from_env()
    if routes.vertex:
        log.info("Vertex AI prediction container: health %s, predict %s (Vertex authenticates callers)",
                 routes.health, routes.predict_instances)
    app = create_app(source, cfg, keys, routes=routes)
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, server_header=False,
                timeout_keep_alive=30)
