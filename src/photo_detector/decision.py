"""Turning a probability into what users see: a label and a confidence level (shared by serve and reports).

Rule: label is `ai_generated` when p >= thresholds.classification, else `real`. Confidence uses the margin
m = |2p - 1| (0 at p = 0.5, 1 at p = 0 or 1): `high` when m >= thresholds.high_confidence, `low` when
m < thresholds.low_confidence, `medium` otherwise. With the defaults (0.8 / 0.3): p >= 0.9 or p <= 0.1 is
high; 0.35 < p < 0.65 is low.
"""

from __future__ import annotations

from photo_detector import CLASS_NAMES
from photo_detector.config import ThresholdsConfig


def label_for(probability: float, thresholds: ThresholdsConfig) -> str:
    return CLASS_NAMES[1] if probability >= thresholds.classification else CLASS_NAMES[0]


def confidence_for(probability: float, thresholds: ThresholdsConfig) -> str:
    margin = abs(2.0 * probability - 1.0)
    if margin >= thresholds.high_confidence:
        return "high"
    if margin < thresholds.low_confidence:
        return "low"
    return "medium"
