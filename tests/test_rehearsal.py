"""The image rehearsal (tools/rehearse_images.py): six clean environments, each holding only what its
Dockerfile installs, run the compiled spec's own commands on sample data, chained, and the service."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_image_runs_its_stage_from_the_wheel(tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "rehearse_images.py"), "--workdir",
                          str(tmp_path / "w"), "--json", str(report_file)], capture_output=True, text=True,
                         timeout=1500)
    print(out.stdout[-4000:])  # shown by pytest on failure: per-environment and per-stage times
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert report["failures"] == []
    assert {k: v["torch"] for k, v in report["environments"].items()} == {
        "verify": False, "train": True, "evaluate": False, "gate": False, "deploy": False, "serve": False}
    assert list(report["stages"]) == ["fingerprint", "verify-data", "train", "evaluate", "quality-gate", "deploy"]
    assert report["stages"]["quality-gate"]["parameters"] == {"Output": True}
    assert report["stages"]["verify-data"]["parameters"]["digest"].startswith("sha256:")
    assert report["serve"]["predict_status"] == 200 and report["serve"]["health"]["status"] == "ok"
    assert report["serve"]["prediction"]["prediction"] in ("real", "ai_generated")
