"""End to end: the README's main job on the bundled sample data, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_trains_to_the_gate_on_sample_data(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "photo_detector", "demo", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "gate:       PASSED" in out.stdout
    (run_dir,) = tmp_path.iterdir()
    meta = json.loads((run_dir / "model" / "model.json").read_text())
    assert meta["val_metrics"]["val_accuracy"] >= 0.90
    evaluation = json.loads((run_dir / "evaluation" / "eval.json").read_text())
    assert evaluation["accuracy"] >= 0.85 and evaluation["f1"] >= 0.80
    assert json.loads((run_dir / "gate.json").read_text())["passed"] is True
