"""Threshold metrics of the binary head: below both train (per-epoch validation) and export (the model record),
so neither imports the other for them."""

from __future__ import annotations

import numpy as np


def binary_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of the `ai_generated` class at `threshold`."""
    pred = probs >= threshold
    truth = labels.astype(bool)
    tp = float(np.sum(pred & truth))
    fp = float(np.sum(pred & ~truth))
    fn = float(np.sum(~pred & truth))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": float(np.mean(pred == truth)) if len(pred) else 0.0,
            "precision": precision, "recall": recall, "f1": f1}
