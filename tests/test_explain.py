"""POST /v1/explain: the occlusion-sensitivity map, over real HTTP on loopback, and its geometry."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serving_helpers import running, wait_ready

from photo_detector.config import load_config
from photo_detector.inference import LoadedModel
from photo_detector.preprocess import decode_crop, normalise
from photo_detector.serving.app import create_app
from photo_detector.serving.auth import KeyChecker, hash_key
from photo_detector.serving.explain import cell_edges, crop_region, occluded_batch

KEY = "explain-key"
HEADERS = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def service(smoke_model: Path) -> Iterator[tuple[str, httpx.Client, object]]:
    cfg = load_config(None, {"serve.explain_grid": 4, "serve.max_body_bytes": 300_000})
    app = create_app(str(smoke_model), cfg, KeyChecker([hash_key(KEY)]))
    with running(app) as url, httpx.Client(timeout=60) as client:
        wait_ready(client, url)
        yield url, client, app


def photo(smoke_data: Path, label: str = "ai_generated") -> Path:
    return sorted((smoke_data / "test" / label).iterdir())[0]


def explain(client: httpx.Client, url: str, data: bytes, headers: dict | None = None) -> httpx.Response:
    return client.post(f"{url}/v1/explain", files={"file": ("x.png", data, "image/png")},
                       headers=HEADERS if headers is None else headers)


def test_cells_tile_the_crop_exactly() -> None:
    for size, grid in ((224, 7), (32, 4), (33, 7), (10, 10)):
        edges = cell_edges(size, grid)
        widths = np.diff(edges)
        assert edges[0] == 0 and edges[-1] == size and len(widths) == grid and widths.max() - widths.min() <= 1


def test_each_copy_hides_exactly_its_own_cell() -> None:
    x = np.random.default_rng(0).standard_normal((1, 3, 14, 14)).astype(np.float32) + 5.0  # never 0
    batch = occluded_batch(x, 7, np.zeros(3, np.float32))
    assert batch.shape == (50, 3, 14, 14) and np.array_equal(batch[0], x[0])
    for r in range(7):
        for c in range(7):
            hidden = batch[1 + r * 7 + c] == 0
            expected = np.zeros((3, 14, 14), bool)
            expected[:, 2 * r:2 * r + 2, 2 * c:2 * c + 2] = True
            assert np.array_equal(hidden, expected), (r, c)


def test_the_region_is_the_crop_the_model_sees() -> None:
    # A 400x200 image: the centre 200x200 square, of which the centre 224/256 = 7/8.
    region = crop_region(400, 200, 256, 224)
    assert region == pytest.approx({"left": (400 - 175) / 2 / 400, "top": (200 - 175) / 2 / 200,
                                    "width": 175 / 400, "height": 175 / 200})
    assert crop_region(64, 64, 32, 32) == {"left": 0.0, "top": 0.0, "width": 1.0, "height": 1.0}


def test_explain_returns_the_map_of_predict_s_probability(service, smoke_model: Path, smoke_data: Path) -> None:
    url, client, _ = service
    data = photo(smoke_data).read_bytes()
    r = explain(client, url, data)
    assert r.status_code == 200, r.text
    body = r.json()
    predicted = client.post(f"{url}/predict", files={"file": ("x.png", data)}, headers=HEADERS).json()
    assert body["grid"] == 4 and len(body["delta"]) == 4 and all(len(row) == 4 for row in body["delta"])
    assert body["probability"] == pytest.approx(predicted["probability"], abs=1e-5)
    assert body["prediction"] == predicted["prediction"] and body["confidence"] == predicted["confidence"]
    assert body["model_version"] == predicted["model_version"]
    model = LoadedModel.load(smoke_model)
    assert body["threshold"] == model.thresholds.classification
    # Recompute the map offline from the same preprocessing: one cell greyed at a time, one model run each.
    pp = model.preprocess
    x = normalise([decode_crop(data, pp)], pp)
    edges = cell_edges(pp.crop_size, 4)
    expected = np.empty((4, 4))
    for row in range(4):
        for col in range(4):
            hidden = x.copy()
            hidden[:, :, edges[row]:edges[row + 1], edges[col]:edges[col + 1]] = 0.0
            expected[row, col] = float(model.probabilities(x)[0] - model.probabilities(hidden)[0])
    assert np.abs(expected).max() > 1e-4  # the constructed model does look at the pixels
    assert np.asarray(body["delta"]) == pytest.approx(expected, abs=2e-5)
    assert body["max_abs_delta"] == pytest.approx(np.abs(expected).max(), abs=2e-5)
    width, height = Image.open(io.BytesIO(data)).size
    assert body["region"] == pytest.approx(crop_region(width, height, pp.resize_size, pp.crop_size))
    phases = dict(p.split(";dur=") for p in r.headers["server-timing"].split(", "))
    assert {"read", "decode", "resize", "occlude", "occluded_model"} == set(phases)


def test_explain_needs_a_key_and_one_good_image(service, smoke_data: Path) -> None:
    url, client, _ = service
    data = photo(smoke_data).read_bytes()
    assert explain(client, url, data, headers={}).status_code == 401
    assert explain(client, url, data, headers={"X-API-Key": "wrong"}).status_code == 401
    assert explain(client, url, b"GIF89a" + bytes(64)).status_code == 415
    assert explain(client, url, b"\x89PNG\r\n\x1a\n" + bytes(64)).status_code == 422
    too_big = client.post(f"{url}/v1/explain", content=b"x" * 400_000, headers={
        **HEADERS, "content-type": "multipart/form-data; boundary=b"})
    assert too_big.status_code == 413 and "limit" in too_big.json()["error"]
    two = client.post(f"{url}/v1/explain", files=[("file", ("a.png", data)), ("file", ("b.png", data))],
                      headers=HEADERS)
    assert two.status_code == 400 and "one image per request" in two.json()["error"]


def test_explain_does_not_count_as_a_prediction_in_metrics(service, smoke_data: Path) -> None:
    """The drift series are about what /predict saw; the occluded batch is not a model call of /predict."""
    url, client, app = service
    metrics = app.state.service.metrics
    before = (metrics.model_time.collect()[0].samples, metrics.probability.collect()[0].samples)
    assert explain(client, url, photo(smoke_data, "real").read_bytes()).status_code == 200
    assert (metrics.model_time.collect()[0].samples, metrics.probability.collect()[0].samples) == before
    assert 'photo_detector_phase_seconds_count{phase="occluded_model"}' in client.get(f"{url}/metrics").text


def test_explain_is_bound_by_the_request_time_limit(service, smoke_data: Path) -> None:
    url, client, app = service
    serve_cfg = app.state.service.cfg.serve
    limit = serve_cfg.request_timeout_seconds
    serve_cfg.request_timeout_seconds = 1e-6  # far below one ONNX batch; config validation allows >= 0.1 s
    try:
        r = explain(client, url, photo(smoke_data).read_bytes())
    finally:
        serve_cfg.request_timeout_seconds = limit
    assert r.status_code == 503 and "longer than" in r.json()["error"]


def test_a_wide_photo_maps_onto_its_centre(service) -> None:
    url, client, _ = service
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (60, 120, 3), dtype=np.uint8)).save(buf, "PNG")
    body = explain(client, url, buf.getvalue()).json()
    region = body["region"]
    assert region["top"] + region["height"] / 2 == pytest.approx(0.5)
    assert region["left"] + region["width"] / 2 == pytest.approx(0.5)
    assert region["width"] == pytest.approx(region["height"] / 2)  # a square on a 2:1 image
