"""The service beyond /predict: private-unless-listed auth, Prometheus /metrics, the Vertex AI prediction
protocol (in process and as the serve entrypoint with AIP_* variables), all over real HTTP."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from serving_helpers import running, wait_ready
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from photo_detector.config import load_config
from photo_detector.evaluate import predict_files
from photo_detector.serving.app import Routes, create_app
from photo_detector.serving.auth import KeyChecker, hash_key

KEY = "proto-key"
HEADERS = {"X-API-Key": KEY}


def png(seed: int = 0, size: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def vertex_service(trained_dir: Path) -> Iterator[tuple[str, httpx.Client, object]]:
    cfg = load_config(None, {"serve.max_batch_files": 8, "serve.max_body_bytes": 300_000,
                             "serve.gcs_allowed_prefixes": ["gs://catalog/a"]})
    app = create_app(str(trained_dir), cfg, KeyChecker([hash_key(KEY)]),
                     routes=Routes(health="/vertex/health", predict_instances="/vertex/predict", vertex=True))
    with running(app) as url, httpx.Client(timeout=30) as client:
        wait_ready(client, url)
        yield url, client, app


def test_a_route_added_without_auth_code_is_private(vertex_service) -> None:
    url, client, app = vertex_service

    async def new_endpoint(request: object) -> PlainTextResponse:  # knows nothing of keys
        return PlainTextResponse("secret")

    app.router.routes.append(Route("/new-admin-thing", new_endpoint))
    assert client.get(f"{url}/new-admin-thing").status_code == 401
    assert client.get(f"{url}/new-admin-thing", headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get(f"{url}/new-admin-thing", headers=HEADERS).text == "secret"
    assert client.get(f"{url}/model").status_code == 401
    assert client.get(f"{url}/health").status_code == 200


def test_metrics_are_scraped_and_count_what_happened(vertex_service, sample_dir: Path) -> None:
    url, client, _ = vertex_service

    def families() -> dict[str, object]:
        r = client.get(f"{url}/metrics")  # loopback: open without a key (the Cloud Run sidecar)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        return {f.name: f for f in text_string_to_metric_families(r.text)}

    def value(fams: dict, name: str, sample: str, **labels: str) -> float:
        return sum(s.value for s in fams[name].samples
                   if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))

    before = families()
    image = sorted((sample_dir / "test" / "real").iterdir())[0].read_bytes()
    for _ in range(3):
        assert client.post(f"{url}/predict", files={"file": ("x.png", image)}, headers=HEADERS).status_code == 200
    assert client.post(f"{url}/predict", files={"file": ("x.png", b"junk")}, headers=HEADERS).status_code == 415
    assert client.get(f"{url}/model").status_code == 401
    after = families()
    ok = value(after, "photo_detector_requests", "photo_detector_requests_total", route="/predict", status="200")
    assert ok - value(before, "photo_detector_requests", "photo_detector_requests_total", route="/predict",
                      status="200") == 3
    for route, status in (("/predict", "415"), ("/model", "401")):
        assert value(after, "photo_detector_requests", "photo_detector_requests_total", route=route,
                     status=status) >= 1
    predicted = sum(value(after, "photo_detector_predictions", "photo_detector_predictions_total", label=lb)
                    for lb in ("real", "ai_generated"))
    assert predicted - sum(value(before, "photo_detector_predictions", "photo_detector_predictions_total",
                                 label=lb) for lb in ("real", "ai_generated")) == 3
    probability_count = value(after, "photo_detector_ai_probability", "photo_detector_ai_probability_count")
    assert probability_count >= 3
    assert value(after, "photo_detector_model_seconds", "photo_detector_model_seconds_count") - value(
        before, "photo_detector_model_seconds", "photo_detector_model_seconds_count") == 3
    for phase in ("read", "decode", "resize", "normalise", "model"):  # the Server-Timing phases, per request
        assert value(after, "photo_detector_phase_seconds", "photo_detector_phase_seconds_count", phase=phase) - value(
            before, "photo_detector_phase_seconds", "photo_detector_phase_seconds_count", phase=phase) == 3, phase
    assert value(after, "photo_detector_request_seconds", "photo_detector_request_seconds_count",
                 route="/predict") >= 4
    client.get(f"{url}/nope-{time.time()}", headers=HEADERS)  # unknown paths share one label, never their own
    assert value(families(), "photo_detector_requests", "photo_detector_requests_total", route="unmatched") >= 1
    assert value(after, "photo_detector_requests", "photo_detector_requests_total", route="/nope") == 0


def test_metrics_need_a_key_from_anywhere_but_this_host(trained_dir: Path) -> None:
    app = create_app(str(trained_dir), load_config(), KeyChecker([hash_key(KEY)]), load_in_background=False)
    from starlette.testclient import TestClient

    with TestClient(app, client=("10.1.2.3", 40000)) as remote:
        assert remote.get("/metrics").status_code == 401
        assert remote.get("/metrics", headers=HEADERS).status_code == 200
        assert remote.get("/health").status_code == 200
    with TestClient(app, client=("127.0.0.1", 40000)) as proxied:  # a proxy on this host forwarding a caller
        assert proxied.get("/metrics").status_code == 200
        assert proxied.get("/metrics", headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 401


def test_vertex_protocol_scores_each_instance_on_its_own(vertex_service, trained_dir: Path,
                                                        sample_dir: Path) -> None:
    from fakes import fake_gcs
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    url, client, _ = vertex_service
    files = [sorted((sample_dir / "test" / c).iterdir())[0] for c in ("real", "ai_generated")]
    expected = predict_files(trained_dir, files)
    with fake_gcs():
        gcs = storage.Client(project="p", credentials=AnonymousCredentials())
        gcs.create_bucket("catalog").blob("a/second.png").upload_from_filename(str(files[1]))
        instances = [{"b64": base64.b64encode(files[0].read_bytes()).decode()},
                     {"gcs_uri": "gs://catalog/a/second.png"},
                     {"b64": "not base64!"},
                     {"b64": base64.b64encode(b"hello").decode()},
                     {"gcs_uri": "gs://catalog/a/missing.png"}]
        # No key: on Vertex the endpoint authenticates callers with IAM before forwarding.
        r = client.post(f"{url}/vertex/predict", json={"instances": instances})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 5
    assert preds[0]["probability"] == pytest.approx(float(expected[0]), abs=1e-5)
    assert preds[1]["probability"] == pytest.approx(float(expected[1]), abs=1e-5)
    assert [p.get("error", {}).get("code") for p in preds[2:]] == [400, 415, 404]
    assert client.get(f"{url}/vertex/health").status_code == 200
    too_many = client.post(f"{url}/vertex/predict", json={"instances": [{"b64": ""}] * 9})
    assert too_many.status_code == 400 and "limit" in too_many.json()["error"]
    assert client.post(f"{url}/vertex/predict", content=b"{not json").status_code == 400
    assert client.post(f"{url}/vertex/predict", json={"rows": []}).status_code == 400
    big = {"instances": [{"b64": base64.b64encode(b"\xff\xd8\xff" + bytes(400_000)).decode()}]}
    assert client.post(f"{url}/vertex/predict", json=big).status_code == 413  # the body limit holds


def test_the_serve_entrypoint_is_a_vertex_prediction_container(trained_dir: Path, sample_dir: Path) -> None:
    """`photo-detector serve` as Vertex starts it: AIP_* variables, no --model, no API key hashes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("PHOTO_DETECTOR_API_KEY_HASHES", "PORT")}
    env.update(AIP_HTTP_PORT=str(port), AIP_HEALTH_ROUTE="/v1/endpoints/1/deployedModels/2",
               AIP_PREDICT_ROUTE="/v1/endpoints/1/deployedModels/2:predict", AIP_STORAGE_URI=str(trained_dir))
    proc = subprocess.Popen([sys.executable, "-m", "photo_detector", "serve", "--host", "127.0.0.1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get(base + env["AIP_HEALTH_ROUTE"]).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, "the container never became healthy"
                time.sleep(0.1)
            image = sorted((sample_dir / "test" / "real").iterdir())[0]
            r = client.post(base + env["AIP_PREDICT_ROUTE"],
                            json={"instances": [{"b64": base64.b64encode(image.read_bytes()).decode()}]})
            assert r.status_code == 200, r.text
            assert r.json()["predictions"][0]["probability"] == pytest.approx(
                float(predict_files(trained_dir, [image])[0]), abs=1e-5)
            assert client.post(f"{base}/predict", files={"file": ("x.png", png())}).status_code == 401
    finally:
        proc.terminate()
        proc.wait(10)


def test_gcs_uri_reads_only_allowed_prefixes_and_a_refusal_tells_nothing(vertex_service, sample_dir: Path) -> None:
    """The private-bucket probe: a key holder names a private photo, a large private CSV and a missing object.
    All three get the same refusal, decided before any read (no size, no existence); allowed ones still work."""
    from fakes import fake_gcs
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from photo_detector.serving.instances import allowed_prefixes

    url, client, _ = vertex_service
    photo = sorted((sample_dir / "test" / "real").iterdir())[0]
    with fake_gcs():
        gcs = storage.Client(project="p", credentials=AnonymousCredentials())
        private = gcs.create_bucket("private-data")
        private.blob("customers/secret-photo.jpg").upload_from_filename(str(photo))
        private.blob("exports/customers.csv").upload_from_string(b"x" * 12_345_678)
        catalog = gcs.create_bucket("catalog")
        catalog.blob("a/ok.png").upload_from_filename(str(photo))
        catalog.blob("b/not-listed.png").upload_from_filename(str(photo))
        gcs.create_bucket("catalog-private").blob("a/x.png").upload_from_filename(str(photo))
        probes = ["gs://private-data/customers/secret-photo.jpg", "gs://private-data/exports/customers.csv",
                  "gs://private-data/customers/missing.jpg", "gs://catalog/b/not-listed.png",
                  "gs://catalog-private/a/x.png", "gs://catalog/a/../b/not-listed.png"]
        r = client.post(f"{url}/vertex/predict", json={"instances": [{"gcs_uri": u} for u in probes]
                                                       + [{"gcs_uri": "gs://catalog/a/ok.png"}]})
    assert r.status_code == 200, r.text
    *refused, allowed = r.json()["predictions"]
    assert all(p == refused[0] for p in refused) and refused[0]["error"]["code"] == 403, refused
    assert "12345678" not in r.text and "does not exist" not in r.text
    assert "probability" in allowed
    # Defaults: none on Cloud Run; the model's own bucket under Vertex; the variable overrides both.
    assert allowed_prefixes([], {}) == ()
    assert allowed_prefixes([], {"AIP_STORAGE_URI": "gs://proj-photo-detector-pipelines/root/m"}) == (
        "gs://proj-photo-detector-pipelines/",)
    assert allowed_prefixes(["gs://a"], {"PHOTO_DETECTOR_GCS_ALLOWED_PREFIXES": "gs://b/x, gs://c"}) == (
        "gs://b/x/", "gs://c/")
