"""Smoke test of a served model: the same checks for a local service and a Cloud Run candidate revision.

Known images come with the model: training stores, per class, the validation square the exported model
classifies correctly with the most confidence (`smoke/<class>.png`, exactly the model's input after the
shared preprocessing) and its probability. A service passes when it is healthy, refuses a request without a
key, labels both images as expected and reproduces the recorded probabilities: it serves this very model.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from photo_detector import CLASS_NAMES
from photo_detector.artifacts import ModelRecord
from photo_detector.errors import PhotoDetectorError
from photo_detector.io import write_atomic

log = logging.getLogger(__name__)

SMOKE_DIR = "smoke"
PROBABILITY_TOLERANCE = 1e-3


def write_smoke_images(model_dir: str | Path, images: np.ndarray, labels: np.ndarray,
                       limit_per_class: int = 256) -> dict[str, Any]:
    """Pick and save one known image per class; returns the `smoke_images` metadata entry."""
    from PIL import Image

    from photo_detector.inference import LoadedModel
    from photo_detector.preprocess import to_model_input

    model = LoadedModel.load(model_dir)
    threshold = model.record.classification_threshold
    out: dict[str, Any] = {}
    for label, name in enumerate(CLASS_NAMES):
        idx = np.flatnonzero(labels == label)[:limit_per_class]
        if len(idx) == 0:
            continue
        probs = model.probabilities(to_model_input(np.asarray(images[idx]), model.preprocess))
        margin = probs - threshold if label == 1 else threshold - probs
        best = int(np.argmax(margin))
        if margin[best] <= 0:
            log.warning("no validation image of class %s is classified correctly: no smoke image for it", name)
            continue
        rel = f"{SMOKE_DIR}/{name}.png"
        square = Image.fromarray(np.asarray(images[idx[best]]))
        write_atomic(Path(model_dir) / rel, lambda path, img=square: img.save(path, format="PNG"))
        out[name] = {"file": rel, "probability": float(probs[best])}
    return out


class SmokeTestFailed(PhotoDetectorError):
    """The candidate does not behave like the model it should serve."""


@dataclass
class SmokeReport:
    url: str
    checks: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def smoke_test(url: str, api_key: str, model_dir: str | Path, record: ModelRecord, *,
               ready_timeout: float = 120.0, client: Any = None) -> SmokeReport:
    """Run every check against `url`; raise SmokeTestFailed listing what failed."""
    import httpx

    url = url.rstrip("/")
    report = SmokeReport(url)
    own = client is None
    client = client or httpx.Client(timeout=30.0)
    try:
        deadline = time.monotonic() + ready_timeout
        status = None
        while time.monotonic() < deadline:
            try:
                status = client.get(f"{url}/health").status_code
            except httpx.HTTPError as exc:
                status = f"unreachable ({type(exc).__name__})"
            if status == 200:
                break
            time.sleep(0.5)
        if status != 200:
            report.failures.append(f"GET /health answered {status} within {ready_timeout:.0f}s (want 200)")
            raise SmokeTestFailed(f"smoke test of {url} failed: " + "; ".join(report.failures),
                                  "the candidate gets no traffic; see its logs")
        report.checks.append("health 200")
        smoke = record.smoke_images
        for name in CLASS_NAMES:
            if name not in smoke:
                report.failures.append(f"the model has no known {name} image (it classified none correctly)")
        first = next(iter(smoke.values()), None)
        if first is not None:
            data = (Path(model_dir) / first["file"]).read_bytes()
            r = client.post(f"{url}/predict", files={"file": ("smoke.png", io.BytesIO(data), "image/png")})
            (report.checks if r.status_code == 401 else report.failures).append(
                f"POST /predict without a key answered {r.status_code}" + ("" if r.status_code == 401 else
                                                                            " (want 401)"))
        for name, entry in smoke.items():
            data = (Path(model_dir) / entry["file"]).read_bytes()
            r = client.post(f"{url}/predict", files={"file": ("smoke.png", io.BytesIO(data), "image/png")},
                            headers={"X-API-Key": api_key})
            if r.status_code != 200:
                report.failures.append(f"known {name} image: HTTP {r.status_code} {r.text[:200]}")
                continue
            body = r.json()
            if body.get("prediction") != name:
                report.failures.append(f"known {name} image was labelled {body.get('prediction')}")
            elif abs(float(body.get("probability", -1)) - entry["probability"]) > PROBABILITY_TOLERANCE:
                report.failures.append(f"known {name} image: probability {body.get('probability')} but the model "
                                       f"gives {entry['probability']:.6f} (is another model being served?)")
            else:
                report.checks.append(f"known {name} image -> {name} (p={body['probability']:.4f})")
    finally:
        if own:
            client.close()
    if report.failures:
        raise SmokeTestFailed(f"smoke test of {url} failed: " + "; ".join(report.failures),
                              "the candidate gets no traffic; see its logs")
    log.info("smoke test of %s passed: %s", url, "; ".join(report.checks))
    return report
