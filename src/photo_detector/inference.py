"""ONNX Runtime inference on an exported model folder, torch-free: what the evaluate stage and the service run."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from photo_detector.artifacts import ModelRecord, read_record
from photo_detector.config import ThresholdsConfig
from photo_detector.io import usable_cores
from photo_detector.preprocess import Preprocess

INPUT_NAME = "image"
OUTPUT_NAMES = ("logit", "probability")


def onnx_session(path: str | Path, threads: int = 0) -> Any:
    """An optimised CPU session; `threads` 0 = one intra-op thread per core."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads or usable_cores()
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_probabilities(session: Any, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """P(ai_generated) for a float32 NCHW batch, run in chunks."""
    out = [session.run([OUTPUT_NAMES[1]], {INPUT_NAME: inputs[i:i + batch_size]})[0].reshape(-1)
           for i in range(0, len(inputs), batch_size)]
    return np.concatenate(out) if out else np.empty(0, np.float32)


def onnx_outputs(session: Any, inputs: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The graph's (calibrated) logits and probabilities for a float32 NCHW batch, in one run per chunk."""
    logits, probs = [np.empty(0, np.float32)], [np.empty(0, np.float32)]
    for i in range(0, len(inputs), batch_size):
        z, p = session.run(list(OUTPUT_NAMES), {INPUT_NAME: inputs[i:i + batch_size]})
        logits.append(z.reshape(-1))
        probs.append(p.reshape(-1))
    return np.concatenate(logits), np.concatenate(probs)


def content_version(onnx_path: str | Path) -> str:
    """The model's version from its bytes: the same export always gets the same version, so re-deploying it
    changes nothing."""
    return "m-" + hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()[:12]


@dataclass
class LoadedModel:
    """A model folder ready to run: its record (model.json), session and a content-derived version."""

    path: Path
    record: ModelRecord
    session: Any
    version: str

    @property
    def preprocess(self) -> Preprocess:
        return self.record.preprocess

    @cached_property
    def thresholds(self) -> ThresholdsConfig:
        """The decision rule's thresholds the model was trained with (built once, not per request)."""
        known = ThresholdsConfig.__dataclass_fields__
        return ThresholdsConfig(**{k: v for k, v in self.record.thresholds.items() if k in known})

    @classmethod
    def load(cls, model_dir: str | Path, threads: int = 0) -> LoadedModel:
        model_dir = Path(model_dir)
        record = read_record(model_dir)
        onnx_path = model_dir / record.model_file
        return cls(model_dir, record, onnx_session(onnx_path, threads), content_version(onnx_path))

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        return onnx_probabilities(self.session, inputs)

    def outputs(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and probabilities together (evaluate measures calibration from the logits)."""
        return onnx_outputs(self.session, inputs)
