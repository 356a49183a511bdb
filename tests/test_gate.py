from __future__ import annotations

import math
from functools import partial

from photo_detector.config import GateConfig
from photo_detector.gate import run_gate

# The absolute thresholds alone (the default config also judges robustness: see tests/test_robustness.py).
GateConfig = partial(GateConfig, robustness={})


def test_passes_at_thresholds_and_records_the_rule() -> None:
    d = run_gate({"accuracy": 0.85, "f1": 0.80}, GateConfig())
    assert d.passed and d.rule.startswith("no champion") and d.reasons == []
    assert [(c.name, c.threshold) for c in d.checks] == [("min_accuracy", 0.85), ("min_f1", 0.80)]


def test_each_threshold_fails_on_its_own() -> None:
    assert run_gate({"accuracy": 0.84, "f1": 0.9}, GateConfig()).reasons == ["accuracy 0.8400 < 0.8500"]
    assert not run_gate({"accuracy": 0.9, "f1": 0.79}, GateConfig()).passed
    assert run_gate({"accuracy": 0.9, "f1": 0.9}, GateConfig(min_accuracy=0.95)).reasons == [
        "accuracy 0.9000 < 0.9500"]


def test_nan_or_missing_fails_closed() -> None:
    assert not run_gate({"accuracy": math.nan, "f1": 0.9}, GateConfig()).passed
    d = run_gate({"f1": 0.9}, GateConfig())
    assert not d.passed and "missing or NaN" in d.reasons[0]


def test_champion_must_not_be_beaten() -> None:
    champ = {"accuracy": 0.95, "f1": 0.94}
    assert not run_gate({"accuracy": 0.93, "f1": 0.95}, GateConfig(), champ).passed
    assert run_gate({"accuracy": 0.96, "f1": 0.95}, GateConfig(), champ).passed
    assert not run_gate({"accuracy": 0.96, "f1": 0.95}, GateConfig(), {"accuracy": 0.9}).passed
