"""The evaluation stage: the exported ONNX model + the serving preprocessing, on the raw files of a split.

Torch-free on purpose: it measures exactly the artifact and code path that will be served. Given the
verified dataset (what the pipeline passes), it scores the files verify-data kept: quarantined leakage twins
and broken files are never scored, and how many were left out, and why, is part of the result.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from photo_detector import CLASS_NAMES
from photo_detector.artifacts import read_record
from photo_detector.data.layout import SplitFiles, discover_split
from photo_detector.data.packed import is_packed, read_manifest
from photo_detector.errors import DataError
from photo_detector.io import write_json_atomic
from photo_detector.preprocess import preprocess_files
from photo_detector.progress import progress

log = logging.getLogger(__name__)

EVAL_FILE = "eval.json"


@dataclass
class EvalResult:
    split: str
    n_images: int
    threshold: float
    accuracy: float
    precision: float
    recall: float
    f1: float
    roc_auc: float
    confusion_matrix: list[list[int]]  # rows: true real, true ai_generated; columns: predicted
    roc_fpr: list[float]
    roc_tpr: list[float]
    roc_thresholds: list[float]
    images_per_second: float
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> files of the split not scored

    @property
    def metrics(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "precision": self.precision, "recall": self.recall,
                "f1": self.f1, "roc_auc": self.roc_auc}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "class_names": list(CLASS_NAMES)}


def predict_files(model_dir: str | Path, paths: list[Path], batch_size: int = 64,
                  desc: str = "evaluate") -> np.ndarray:
    """P(ai_generated) for image files, through the ONNX model and the serving preprocessing."""
    from photo_detector.inference import onnx_probabilities, onnx_session

    record = read_record(model_dir)
    pp = record.preprocess
    session = onnx_session(Path(model_dir) / record.model_file)
    probs = []
    with progress(total=len(paths), desc=desc, unit="img") as bar:
        for i in range(0, len(paths), batch_size):
            chunk = paths[i:i + batch_size]
            probs.append(onnx_probabilities(session, preprocess_files(chunk, pp), batch_size))
            bar.update(len(chunk))
    return np.concatenate(probs) if probs else np.empty(0, np.float32)


def compute_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """scikit-learn metrics of the positive class `ai_generated` (label 1)."""
    from sklearn import metrics as skm

    pred = (probs >= threshold).astype(int)
    both = len(np.unique(labels)) == 2
    fpr, tpr, thr = skm.roc_curve(labels, probs) if both else (np.array([]),) * 3
    return {
        "accuracy": float(skm.accuracy_score(labels, pred)),
        "precision": float(skm.precision_score(labels, pred, zero_division=0)),
        "recall": float(skm.recall_score(labels, pred, zero_division=0)),
        "f1": float(skm.f1_score(labels, pred, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(labels, probs)) if both else float("nan"),
        "confusion_matrix": skm.confusion_matrix(labels, pred, labels=[0, 1]).tolist(),
        "roc_fpr": fpr.tolist(), "roc_tpr": tpr.tolist(),
        # roc_curve's first threshold is +inf; JSON and the Vertex console want finite numbers.
        "roc_thresholds": np.minimum(thr, 1.0).tolist(),
    }


def split_files(data_dir: str | Path, split: str) -> tuple[SplitFiles, dict[str, int]]:
    """The files of `split` to score, and how many were left out and why. A verified dataset (verify-data's
    output) lists the files it kept; a plain dataset folder is scored whole."""
    if not is_packed(data_dir):
        return discover_split(data_dir, split), {}
    manifest = read_manifest(data_dir)
    listed = manifest.get("files", {}).get(split) or manifest["splits"].get(split)
    if listed is None:
        raise DataError(f"verified dataset {data_dir} lists no '{split}' split",
                        f"it lists {', '.join([*manifest.get('files', {}), *manifest['splits']])}")
    source = Path(manifest["source"])
    paths = tuple(source / p for p in listed["paths"])
    labels = tuple(listed["labels"]) if "labels" in listed else tuple(
        CLASS_NAMES.index(Path(p).parent.name) for p in listed["paths"])
    quarantined = sum(1 for q in manifest.get("quarantined", []) if q["split"] == split)
    return SplitFiles(split, paths, labels), ({"quarantined": quarantined} if quarantined else {})


def run_evaluate(model_dir: str | Path, data_dir: str | Path, *, split: str = "test",
                 threshold: float | None = None, out_dir: str | Path | None = None) -> EvalResult:
    """Score the model on `data_dir/<split>`; writes `eval.json` into `out_dir` when given."""
    record = read_record(model_dir)
    threshold = record.classification_threshold if threshold is None else float(threshold)
    files, left_out = split_files(data_dir, split)
    start = time.perf_counter()
    probs = predict_files(model_dir, list(files.paths), desc=f"evaluate {split}")
    seconds = time.perf_counter() - start
    labels = np.asarray(files.labels)
    result = EvalResult(split=split, n_images=len(files), threshold=threshold,
                        images_per_second=len(files) / seconds if seconds else 0.0, left_out=left_out,
                        **compute_metrics(probs, labels, threshold))
    log.info("%s: accuracy %.4f precision %.4f recall %.4f f1 %.4f roc_auc %.4f on %d images (%.0f img/s)%s",
             split, result.accuracy, result.precision, result.recall, result.f1, result.roc_auc,
             result.n_images, result.images_per_second,
             "; left out: " + ", ".join(f"{n} {why}" for why, n in left_out.items()) if left_out else "")
    if out_dir is not None:
        write_json_atomic(Path(out_dir) / EVAL_FILE, result.to_dict())
    return result
