"""End to end in one process (no kfp): sample data -> train -> evaluate -> gate, as `photo-detector demo` runs it.

How well a model trains on one CPU's float path is not asserted (benchmarks/sample_profile.py reports the
accuracy the sample profile reaches); what is asserted holds on any CPU: every stage ran, the gate's decision
is the one its thresholds give on the evaluation it read, and the exit code reports that decision."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from photo_detector.config import load_config


@pytest.mark.slow
def test_demo_reaches_a_consistent_gate_decision(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "photo_detector", "demo", "--out", str(tmp_path), "--epochs", "3"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode in (0, 1), out.stderr[-3000:]
    (run_dir,) = tmp_path.iterdir()
    meta = json.loads((run_dir / "model" / "model.json").read_text())
    assert 1 <= meta["best_epoch"] <= 3 and 0.0 <= meta["val_metrics"]["val_accuracy"] <= 1.0
    evaluation = json.loads((run_dir / "evaluation" / "eval.json").read_text())
    gate = json.loads((run_dir / "gate.json").read_text())
    thresholds = load_config("sample").gate
    expected = evaluation["accuracy"] >= thresholds.min_accuracy and evaluation["f1"] >= thresholds.min_f1
    assert gate["passed"] is expected and out.returncode == (0 if expected else 1)
    assert f"gate:       {'PASSED' if expected else 'FAILED'}" in out.stdout
    assert evaluation["n_images"] == sum(1 for p in (run_dir / "data" / "test").rglob("*.png"))
