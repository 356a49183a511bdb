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
    assert confidence_for(0.96, strict) == "medium"  # (0.96 - 0.9) / 0.1 = 0.6: from t, not from 0.5
    assert confidence_for(0.7, strict) == "low"


def test_confidence_is_measured_from_the_chosen_threshold_not_from_one_half() -> None:
    """A threshold chosen for thresholds.target_fpr: the boundary moves, and the low band with it."""
    t = ThresholdsConfig(classification=0.2)
    assert (label_for(0.21, t), confidence_for(0.21, t)) == ("ai_generated", "low")  # |2p - 1| said medium
    assert (label_for(0.19, t), confidence_for(0.19, t)) == ("real", "low")
    assert confidence_for(0.05, t) == "medium"   # 0.75 of the way from 0.2 to 0
    assert confidence_for(0.02, t) == "high"     # 0.9 of the way
    assert confidence_for(0.85, t) == "high"     # (0.85 - 0.2) / 0.8 = 0.81
    assert confidence_for(0.4, t) == "low"       # 0.25
    for p in (0.05, 0.3, 0.4, 0.6, 0.7, 0.95):  # t = 0.5: the |2p - 1| rule, unchanged
        assert confidence_for(p, ThresholdsConfig()) == confidence_for(1 - p, ThresholdsConfig())
    assert [confidence_for(p, ThresholdsConfig()) for p in (0.05, 0.3, 0.4)] == ["high", "medium", "low"]
