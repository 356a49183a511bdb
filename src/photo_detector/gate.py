"""The quality gate: decide whether a candidate model may be deployed.

Fails closed: a metric that is missing, NaN or not a number fails its check. With a champion (the model in
production), the candidate must also not be worse than it on accuracy and F1 by more than `tolerance`; with
no champion, only the absolute thresholds apply and the decision records that rule.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from photo_detector.config import GateConfig

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


def run_gate(metrics: dict[str, Any], cfg: GateConfig, champion: dict[str, Any] | None = None,
             tolerance: float = CHAMPION_TOLERANCE) -> GateDecision:
    """Check `metrics` (accuracy, f1, ...) against the thresholds and, when given, the champion's metrics."""
    checks = [
        _at_least("min_accuracy", "accuracy", _number(metrics, "accuracy"), cfg.min_accuracy),
        _at_least("min_f1", "f1", _number(metrics, "f1"), cfg.min_f1),
    ]
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
