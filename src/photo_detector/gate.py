"""The quality gate: decide whether a candidate model may be deployed.

Fails closed: a metric that is missing, NaN or not a number fails its check. With a champion (the model in
production), the candidate must also not be worse than it on accuracy and F1 by more than `tolerance`; with
no champion, only the absolute thresholds apply and the decision records that rule.

Beyond the clean split it judges robustness (`gate.robustness`: a perturbation's minimum accuracy) and,
optionally, every source's accuracy (`gate.min_source_accuracy`); with `gate.use_lower_bound` each check
compares the lower end of the metric's interval. It reads flat metrics (what the Metrics artifact holds),
whose names `flat_metrics` defines in this one place for the evaluate stage that writes them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from photo_detector.config import GateConfig

LOW = "_low"  # suffix of a metric's lower interval bound
HIGH = "_high"
HEADLINE = ("accuracy", "precision", "recall", "f1", "roc_auc", "average_precision", "fpr", "tpr", "ece",
            "ece_uncalibrated", "threshold", "temperature")
PASS_METRICS = ("accuracy", "f1", "roc_auc", "average_precision", "fpr", "tpr")


def perturbation_key(name: str, metric: str) -> str:
    return f"{name}_{metric}"


SOURCE_PREFIX = "source_"


def source_key(name: str, metric: str = "accuracy") -> str:
    return f"{SOURCE_PREFIX}{name}_{metric}"


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """An evaluation (`EvalResult.to_dict()`) as the flat numbers a KFP Metrics artifact holds: the clean
    split's headline metrics and intervals, each perturbation's and each source's accuracy."""
    out: dict[str, float] = {k: result[k] for k in HEADLINE if isinstance(result.get(k), int | float)}
    for metric, (lo, hi) in result.get("intervals", {}).items():
        out[metric + LOW], out[metric + HIGH] = lo, hi
    for fpr, tpr in result.get("tpr_at_fpr", {}).items():
        out[f"tpr_at_fpr_{fpr}"] = tpr
    for row in result.get("robustness", [])[1:]:  # the first row is the clean split itself
        name = row["perturbation"]
        out.update({perturbation_key(name, m): row[m] for m in PASS_METRICS})
        out[perturbation_key(name, "accuracy") + LOW] = row["intervals"]["accuracy"][0]
    for row in result.get("sources", []):
        out[source_key(row["source"])] = row["accuracy"]
        out[source_key(row["source"]) + LOW] = row["accuracy_interval"][0]
        out[source_key(row["source"], "images")] = row["images"]
    return out


CHAMPION_TOLERANCE = 0.0


@dataclass(frozen=True)
class Check:
    name: str
    metric: str
    value: float | None
    threshold: float | None
    passed: bool
    reason: str


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    rule: str
    checks: list[Check] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        return [c.reason for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "rule": self.rule, "checks": [asdict(c) for c in self.checks]}


def _number(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def _at_least(name: str, metric: str, value: float | None, threshold: float) -> Check:
    if value is None:
        return Check(name, metric, None, threshold, False, f"{metric} is missing or NaN (fails closed)")
    ok = value >= threshold
    return Check(name, metric, value, threshold, ok,
                 f"{metric} {value:.4f} {'>=' if ok else '<'} {threshold:.4f}")


def _bound(metrics: dict[str, Any], key: str, lower: bool) -> tuple[str, float | None]:
    """The metric a check compares: the point estimate, or with `lower` its interval's lower bound."""
    name = key + LOW if lower else key
    return name, _number(metrics, name)


def run_gate(metrics: dict[str, Any], cfg: GateConfig, champion: dict[str, Any] | None = None,
             tolerance: float = CHAMPION_TOLERANCE) -> GateDecision:
    """Check `metrics` (accuracy, f1, ...) against the thresholds, the robustness and source minimums and,
    when given, the champion's metrics."""
    lower = cfg.use_lower_bound
    checks = [_at_least("min_accuracy", *_bound(metrics, "accuracy", lower), cfg.min_accuracy),
              _at_least("min_f1", *_bound(metrics, "f1", lower), cfg.min_f1)]
    for name, minimum in cfg.robustness.items():
        key, value = _bound(metrics, perturbation_key(name, "accuracy"), lower)
        check = _at_least(f"robustness {name}", key, value, minimum)
        checks.append(check if value is not None else Check(
            check.name, key, None, minimum, False, f"{key} is missing: was {name} in the evaluate stage's "
            "evaluate.perturbations? (fails closed)"))
    if cfg.min_source_accuracy is not None:
        prefix, suffix = SOURCE_PREFIX, "_accuracy" + (LOW if lower else "")
        keys = sorted(k for k in metrics if k.startswith(prefix) and k.endswith(suffix))
        if not keys:
            checks.append(Check("min_source_accuracy", "source_*_accuracy", None, cfg.min_source_accuracy, False,
                                "no per-source accuracy in the metrics (fails closed)"))
        for key in keys:
            source = key[len(prefix):-len(suffix)]
            checks.append(_at_least(f"source {source}", key, _number(metrics, key), cfg.min_source_accuracy))
    if champion is None:
        rule = "no champion: absolute thresholds only"
    else:
        rule = f"absolute thresholds and not worse than the champion by more than {tolerance}"
        for metric in ("accuracy", "f1"):
            best = _number(champion, metric)
            if best is None:
                checks.append(Check(f"champion_{metric}", metric, _number(metrics, metric), None, False,
                                    f"champion {metric} is missing or NaN (fails closed)"))
            else:
                checks.append(_at_least(f"champion_{metric}", metric, _number(metrics, metric), best - tolerance))
    return GateDecision(all(c.passed for c in checks), rule, checks)
