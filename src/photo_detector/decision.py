"""Turning a probability into what users see: a label and a confidence level (shared by serve and reports).

Rule: label is `ai_generated` when p >= t (thresholds.classification), else `real`. Confidence uses the
margin from the decision threshold, scaled to [0, 1] on each side: m = (p - t) / (1 - t) above it, (t - p) / t
below it (0 at p = t, 1 at p = 0 or 1; at t = 0.5 this is |2p - 1|). `high` when m >= thresholds.high_confidence,
`low` when m < thresholds.low_confidence, `medium` otherwise. With the defaults (t 0.5, 0.8 / 0.3): p >= 0.9
or p <= 0.1 is high; 0.35 < p < 0.65 is low. Why from t and not from 0.5: with a threshold chosen for
thresholds.target_fpr (e.g. 0.2), a photo at p = 0.21 sits on the decision boundary and is `low`, where
|2p - 1| would call it `medium`.
"""

from __future__ import annotations

from photo_detector import CLASS_NAMES
from photo_detector.config import ThresholdsConfig


def label_for(probability: float, thresholds: ThresholdsConfig) -> str:
    return CLASS_NAMES[1] if probability >= thresholds.classification else CLASS_NAMES[0]


def margin_for(probability: float, threshold: float) -> float:
    """How far `probability` is from the decision `threshold`, as a fraction of the room on its side."""
    room = 1.0 - threshold if probability >= threshold else threshold
    return min(1.0, abs(probability - threshold) / room) if room > 0 else 1.0


def confidence_for(probability: float, thresholds: ThresholdsConfig) -> str:
    margin = margin_for(probability, thresholds.classification)
    if margin >= thresholds.high_confidence:
        return "high"
    if margin < thresholds.low_confidence:
        return "low"
    return "medium"
