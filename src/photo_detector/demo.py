"""The whole pipeline in one process on the bundled sample data: sample -> train -> evaluate -> gate.

It calls the same stage functions the KFP components call; it exists so a newcomer sees every stage work
in about two minutes on a laptop, with no cloud and no kfp.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from photo_detector.config import Config
from photo_detector.data.sample import generate_sample
from photo_detector.evaluate import EvalResult, run_evaluate
from photo_detector.gate import GateDecision, run_gate
from photo_detector.io import write_json_atomic
from photo_detector.train import TrainResult, run_train

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    run_dir: Path
    train: TrainResult
    evaluation: EvalResult
    decision: GateDecision
    seconds: dict[str, float]


def new_run_dir(root: Path) -> Path:
    """A fresh timestamped folder, so running twice never overwrites the first run."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    for i in range(100):
        path = root / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free run folder under {root}")


def run_demo(root: str | Path, cfg: Config, *, data: str | Path | None = None, per_class: int = 800,
             seed: int = 42) -> DemoResult:
    run_dir = new_run_dir(Path(root))
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    if data is None:
        data = generate_sample(run_dir / "data", per_class=per_class, seed=seed).root
        seconds["sample"] = time.perf_counter() - t
        log.info("sample data: %s (%.1fs)", data, seconds["sample"])
    t = time.perf_counter()
    trained = run_train(data, run_dir / "model", cfg)
    seconds["train"] = time.perf_counter() - t
    t = time.perf_counter()
    evaluation = run_evaluate(run_dir / "model", data, split="test", out_dir=run_dir / "evaluation")
    seconds["evaluate"] = time.perf_counter() - t
    decision = run_gate(evaluation.metrics, cfg.gate)
    write_json_atomic(run_dir / "gate.json", decision.to_dict())
    return DemoResult(run_dir, trained, evaluation, decision, seconds)
