from __future__ import annotations

import pytest

from photo_detector.config import ThresholdsConfig
from photo_detector.decision import confidence_for, label_for


@pytest.mark.parametrize(("p", "label", "confidence"), [
    (0.0, "real", "high"), (0.1, "real", "high"), (0.2, "real", "medium"), (0.4, "real", "low"),
    (0.5, "ai_generated", "low"), (0.7, "ai_generated", "medium"), (0.95, "ai_generated", "high"),
])
def test_default_rule(p: float, label: str, confidence: str) -> None:
    t = ThresholdsConfig()
    assert label_for(p, t) == label
    assert confidence_for(p, t) == confidence


def test_thresholds_change_the_outcome() -> None:
    strict = ThresholdsConfig(classification=0.9, high_confidence=0.99, low_confidence=0.5)
    assert label_for(0.8, strict) == "real"
    assert confidence_for(0.95, strict) == "medium"
    assert confidence_for(0.7, strict) == "low"
