"""Statistics of a scored split that a point estimate hides: intervals, calibration and operating points.

Numpy only (scikit-learn for the curves), so the evaluate image and training's export share them. Why each:
- Wilson intervals for proportions (accuracy, rates): 240 test images leave about +-2 points of doubt, and
  the normal approximation breaks down near 0 and 1, where a detector's rates live.
- a seeded bootstrap for F1 and ROC AUC, which are not proportions; the same seed gives the same interval.
- ECE (15 equal-width bins of P(ai_generated) against the observed share of ai_generated) and a fitted
  temperature: a detector's raw probabilities are rarely honest, and one scalar fixes most of it.
- the threshold for a target false-positive rate: "flag at most 1 real photo in 100" is a product rule,
  0.5 is not.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def z_value(confidence: float) -> float:
    """The two-sided normal quantile of `confidence` (0.95 -> 1.96), without scipy."""
    if confidence == 0.95:
        return Z95
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(k: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials; (nan, nan) for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    z = z_value(confidence)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # At k = 0 or k = n one end is exactly 0 or 1; rounding would leave it a hair inside.
    return (0.0 if k <= 0 else max(0.0, centre - half)), (1.0 if k >= n else min(1.0, centre + half))


def _f1_counts(pred: np.ndarray, labels: np.ndarray) -> float:
    tp = float(np.sum(pred & (labels == 1)))
    fp = float(np.sum(pred & (labels == 0)))
    fn = float(np.sum(~pred & (labels == 1)))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def _auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count half), NaN with one class."""
    from scipy.stats import rankdata

    n1 = int(labels.sum())
    n0 = len(labels) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(probs)
    return float((ranks[labels == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def bootstrap(probs: np.ndarray, labels: np.ndarray, threshold: float, *, samples: int, seed: int,
              confidence: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals of F1 (at `threshold`) and ROC AUC over `samples` seeded resamples."""
    if samples <= 0 or len(labels) == 0:
        return {}
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels).astype(int)
    pred = np.asarray(probs) >= threshold
    f1s, aucs = np.empty(samples), np.empty(samples)
    for i in range(samples):
        idx = rng.integers(0, len(labels), len(labels))
        f1s[i] = _f1_counts(pred[idx], labels[idx])
        aucs[i] = _auc(probs[idx], labels[idx])
    lo, hi = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2
    out = {"f1": (float(np.percentile(f1s, lo)), float(np.percentile(f1s, hi)))}
    aucs = aucs[np.isfinite(aucs)]
    if len(aucs):
        out["roc_auc"] = (float(np.percentile(aucs, lo)), float(np.percentile(aucs, hi)))
    return out


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict[str, Any]:
    """Equal-width bins of P(ai_generated): per bin the count, mean probability and share of ai_generated,
    and the expected calibration error (count-weighted mean gap)."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.float64)
    which = np.minimum((probs * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    mean_p = np.bincount(which, probs, minlength=bins) / np.maximum(counts, 1)
    share = np.bincount(which, labels, minlength=bins) / np.maximum(counts, 1)
    ece = float(np.sum(counts * np.abs(mean_p - share)) / max(len(probs), 1))
    return {"ece": ece, "bins": bins, "count": counts.tolist(), "mean_probability": mean_p.tolist(),
            "fraction_ai_generated": share.tolist()}


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(z, np.float64), -60, 60)))


def _nll(logits: np.ndarray, targets: np.ndarray, scale: float) -> float:
    z = logits * scale
    # log(1 + e^z) - t z, stable for both signs
    return float(np.mean(np.logaddexp(0.0, z) - targets * z))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the log loss of sigmoid(logit / T) on held-out data.

    Targets are Platt's smoothed labels ((N+ + 1) / (N+ + 2) and 1 / (N- + 2)), so a perfectly separated
    validation split gives a finite T instead of driving it to 0 (probabilities of exactly 0 and 1). The
    loss is convex in 1/T, so a golden-section search over log(1/T) in [1e-2, 1e2] finds the minimum."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels).astype(int)
    if len(logits) == 0 or labels.min() == labels.max():
        return 1.0
    n1, n0 = int(labels.sum()), int(len(labels) - labels.sum())
    targets = np.where(labels == 1, (n1 + 1) / (n1 + 2), 1 / (n0 + 2))
    lo, hi = math.log(1e-2), math.log(1e2)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = _nll(logits, targets, math.exp(a)), _nll(logits, targets, math.exp(b))
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = _nll(logits, targets, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = _nll(logits, targets, math.exp(b))
    return float(1.0 / math.exp((lo + hi) / 2))


def threshold_for_fpr(probs: np.ndarray, labels: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold at which at most `target_fpr` of the real images (label 0) score at or above it,
    so `p >= threshold` flags no more real photos than the target allows (on these images)."""
    real = np.sort(np.asarray(probs, np.float64)[np.asarray(labels) == 0])[::-1]
    if len(real) == 0:
        raise ValueError("no real images to choose a threshold on")
    allowed = math.floor(target_fpr * len(real) + 1e-9)  # false positives the target permits
    if allowed >= len(real):
        return float(real[-1])
    # just above the first real image that must not be flagged
    return float(min(1.0, np.nextafter(np.float32(real[allowed]), np.float32(2.0))))


def tpr_at_fpr(probs: np.ndarray, labels: np.ndarray, fpr: float) -> float:
    """The best true-positive rate at a false-positive rate of at most `fpr` (read off the ROC curve)."""
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return float("nan")
    f, t, _ = roc_curve(labels, probs)
    return float(t[f <= fpr + 1e-12].max())
