"""The prediction service, over real HTTP on loopback: contract, auth, hardening, logs."""

from __future__ import annotations

import io
import json
import logging
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from serving_helpers import running, wait_ready

from photo_detector.config import load_config
from photo_detector.evaluate import predict_files
from photo_detector.serving.app import create_app
from photo_detector.serving.auth import KeyChecker, hash_key, parse_hashes
from photo_detector.serving.timing import Timing, parse_server_timing

KEY = "test-key-123"
HEADERS = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def service(trained_dir: Path) -> Iterator[tuple[str, httpx.Client]]:
    cfg = load_config(None, {"serve.max_body_bytes": 200_000, "serve.max_batch_files": 4,
                             "serve.max_image_pixels": 1_000_000})
    app = create_app(str(trained_dir), cfg, KeyChecker([hash_key(KEY)]))
    with running(app) as url, httpx.Client(timeout=30) as client:
        wait_ready(client, url)
        yield url, client


def png_bytes(size: int = 48, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(size: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 120, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares a huge size (a decompression bomb)."""
    data = bytearray(png_bytes(8))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def post(client: httpx.Client, url: str, data: bytes, name: str = "x.png", headers: dict | None = None,
         field: str = "file") -> httpx.Response:
    return client.post(f"{url}/predict", files={field: (name, data, "application/octet-stream")},
                       headers=HEADERS if headers is None else headers)


def test_predict_matches_the_evaluate_stage_on_the_same_file(service, trained_dir: Path, sample_dir: Path) -> None:
    url, client = service
    files = sorted((sample_dir / "test" / "ai_generated").iterdir())[:2] + sorted(
        (sample_dir / "test" / "real").iterdir())[:2]
    offline = predict_files(trained_dir, files)
    for path, expected in zip(files, offline, strict=True):
        r = post(client, url, path.read_bytes(), path.name)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"prediction", "probability", "confidence", "model_version", "inference_time_ms",
                             "request_id"}
        assert body["probability"] == pytest.approx(float(expected), abs=1e-5)
        assert body["prediction"] == ("ai_generated" if expected >= 0.5 else "real")
        assert body["confidence"] in {"high", "medium", "low"} and body["model_version"].startswith("m-")
        assert r.headers["X-Request-ID"] == body["request_id"]


def test_server_timing_says_where_the_request_time_went(service, sample_dir: Path) -> None:
    url, client = service
    image = next((sample_dir / "test" / "real").iterdir()).read_bytes()
    r = post(client, url, image)
    phases = parse_server_timing(r.headers["Server-Timing"])
    assert list(phases) == ["read", "decode", "resize", "normalise", "model"]
    assert all(ms >= 0 for ms in phases.values()) and phases["decode"] > 0 and phases["model"] > 0
    assert r.json()["inference_time_ms"] == pytest.approx(phases["model"], abs=2e-3)  # both round to 1 us
    files = [("files", (f"{i}.png", png_bytes(seed=i), "image/png")) for i in range(3)]
    batch = client.post(f"{url}/predict/batch", files=files, headers=HEADERS)
    assert parse_server_timing(batch.headers["Server-Timing"])["model"] == pytest.approx(
        batch.json()["batch_inference_time_ms"], abs=2e-3)


def test_server_timing_header_round_trips() -> None:
    timing = Timing()
    for name in ("read", "decode", "decode"):
        with timing.phase(name):
            pass
    parsed = parse_server_timing(timing.header())
    assert list(parsed) == ["read", "decode"] and parsed["decode"] >= 0
    assert parse_server_timing('db;dur=53.2, cache;desc="Cache Read";dur=23.2, miss') == {
        "db": 53.2, "cache": 23.2, "miss": 0.0}


def test_batch_runs_several_files_and_has_a_limit(service) -> None:
    url, client = service
    files = [("files", (f"{i}.png", png_bytes(seed=i), "image/png")) for i in range(3)]
    r = client.post(f"{url}/predict/batch", files=files, headers=HEADERS)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 3
    too_many = [("files", (f"{i}.png", png_bytes(16, seed=i), "image/png")) for i in range(5)]
    r = client.post(f"{url}/predict/batch", files=too_many, headers=HEADERS)
    assert r.status_code in (400, 413) and "error" in r.json()


def test_model_endpoint_describes_the_model(service, trained_dir: Path) -> None:
    url, client = service
    body = client.get(f"{url}/model", headers=HEADERS).json()
    meta = json.loads((trained_dir / "model.json").read_text())
    assert body["image_size"] == meta["image_size"] and body["data_digest"] == meta["data_digest"]
    assert body["thresholds"] == meta["thresholds"] and body["val_metrics"] == meta["val_metrics"]


def test_missing_and_wrong_keys_get_the_same_401_and_health_is_open(service) -> None:
    url, client = service
    missing = post(client, url, png_bytes(), headers={})
    wrong = post(client, url, png_bytes(), headers={"X-API-Key": "nope"})
    assert missing.status_code == wrong.status_code == 401
    assert {k: v for k, v in missing.json().items() if k != "request_id"} == \
        {k: v for k, v in wrong.json().items() if k != "request_id"}
    assert client.get(f"{url}/model").status_code == 401
    assert client.get(f"{url}/health").status_code == 200


def test_keys_never_reach_the_logs(service, caplog: pytest.LogCaptureFixture) -> None:
    url, client = service
    with caplog.at_level(logging.INFO, logger="photo_detector.serve"):
        post(client, url, png_bytes())
        post(client, url, png_bytes(), headers={"X-API-Key": "a-wrong-secret"})
    text = caplog.text + "".join(json.dumps(getattr(r, "fields", {})) for r in caplog.records)
    assert "/predict" in text and KEY not in text and "a-wrong-secret" not in text


@pytest.mark.parametrize(("data", "name", "status"), [
    (b"", "empty.png", 400),
    (b"GIF89a" + b"\0" * 64, "x.png", 415),
    (b"hello, this is text", "photo.jpg", 415),
    (jpeg_bytes()[:200], "truncated.jpg", 422),
    (png_bytes()[:100], "truncated.png", 422),
    (bomb_png(), "bomb.png", 413),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "garbage.png", 422),
])
def test_bad_images_get_precise_client_errors(service, data: bytes, name: str, status: int) -> None:
    url, client = service
    r = post(client, url, data, name)
    assert r.status_code == status, r.text
    assert r.json()["error"] and r.headers["X-Request-ID"]


def test_format_is_decided_by_content_not_the_name(service) -> None:
    url, client = service
    assert post(client, url, png_bytes(), "actually-a-png.jpg").status_code == 200
    assert post(client, url, jpeg_bytes(), "NOEXT").status_code == 200


def test_body_limit_is_checked_before_decoding(service) -> None:
    url, client = service
    r = post(client, url, b"\xff\xd8\xff" + b"\0" * 300_000, "big.jpg")
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_wrong_shapes_of_request_are_4xx(service) -> None:
    url, client = service
    assert client.post(f"{url}/predict", content=png_bytes(), headers={**HEADERS, "Content-Type": "image/png"}
                       ).status_code == 415
    r = client.post(f"{url}/predict", files={"image": ("x.png", png_bytes(), "image/png")}, headers=HEADERS)
    assert r.status_code == 400 and "'file'" in r.json()["error"]
    r = client.post(f"{url}/predict", content=b"--x\r\nbroken", headers={
        **HEADERS, "Content-Type": "multipart/form-data; boundary=x"})
    assert 400 <= r.status_code < 500
    assert client.get(f"{url}/predict", headers=HEADERS).status_code == 405
    assert client.get(f"{url}/predict").status_code == 401, "without a key nothing is revealed, not even 405"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(
    st.binary(max_size=2048),
    st.binary(max_size=512).map(lambda b: b"\xff\xd8\xff" + b),
    st.binary(max_size=512).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),
    st.binary(max_size=512).map(lambda b: b"RIFF\0\0\0\0WEBP" + b),
    st.tuples(st.integers(0, 2000), st.binary(min_size=1, max_size=8)).map(
        lambda t: _mangle(t[0], t[1])),
))
def test_random_and_mangled_bytes_never_cause_a_5xx(service, data: bytes) -> None:
    url, client = service
    r = post(client, url, data)
    assert r.status_code < 500, (r.status_code, r.text)
    assert r.status_code == 200 or "error" in r.json()


_SEED_IMAGE = png_bytes(32, seed=3)


def _mangle(offset: int, junk: bytes) -> bytes:
    pos = offset % len(_SEED_IMAGE)
    return _SEED_IMAGE[:pos] + junk + _SEED_IMAGE[pos + len(junk):]


def test_health_is_503_until_the_model_is_ready(tmp_path: Path) -> None:
    app = create_app(str(tmp_path / "no-model-here"), load_config(), KeyChecker([hash_key(KEY)]))
    with running(app) as url, httpx.Client() as client:
        import time

        for _ in range(100):
            body = client.get(f"{url}/health").json()
            if body["status"] == "failed":
                break
            time.sleep(0.02)
        r = client.get(f"{url}/health")
        assert r.status_code == 503 and r.json()["status"] == "failed" and "model.json" in r.json()["error"]
        assert post(client, url, png_bytes()).status_code == 503


def test_no_route_ends_in_z() -> None:
    from starlette.routing import Route

    app = create_app("/nonexistent", load_config(), KeyChecker([]), load_in_background=True)
    paths = [r.path for r in app.routes if isinstance(r, Route)]
    assert paths and not any(p.endswith("z") for p in paths)


def test_key_hashes_must_be_hashes() -> None:
    assert parse_hashes(f"{hash_key('a')},\n{hash_key('b')}") == [hash_key("a"), hash_key("b")]
    with pytest.raises(Exception, match="not sha256"):
        parse_hashes("plain-key")
    checker = KeyChecker([hash_key("a")])
    assert checker.check("a") and not checker.check("b") and not checker.check(None) and not checker.check("")


def test_work_past_the_request_time_limit_is_a_503() -> None:
    import asyncio
    import time

    from photo_detector.serving.app import ClientError, ServiceState, _in_worker

    state = ServiceState("unused", load_config(None, {"serve.request_timeout_seconds": 0.1}))
    with pytest.raises(ClientError) as err:
        asyncio.run(_in_worker(state, lambda _state, seconds: time.sleep(seconds), 0.5))
    assert err.value.status == 503 and "longer than 0.1s" in err.value.message
    assert asyncio.run(_in_worker(state, lambda _state, x: x * 2, 21)) == 42
