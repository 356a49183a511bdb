"""The evaluation stage: the exported ONNX model + the serving preprocessing, on the raw files of a split.

Torch-free on purpose: it measures exactly the artifact and code path that will be served. Given the
verified dataset (what the pipeline passes), it scores the files verify-data kept: quarantined leakage twins
and broken files are never scored, and how many were left out, and why, is part of the result.

A detector is judged on more than the clean split at one threshold: the split is scored again under each
of `evaluate.perturbations` (what marketplaces do to uploads), every metric the gate reads carries an
interval, the probabilities' calibration is measured before and after the model's temperature, and the
split is broken down by source (class subfolders) so the worst generator or camera is named.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from photo_detector import CLASS_NAMES
from photo_detector.artifacts import read_record
from photo_detector.config import Config, EvaluateConfig, load_config
from photo_detector.data.layout import SplitFiles, discover_split, source_of
from photo_detector.data.packed import is_packed, read_manifest, read_packed
from photo_detector.errors import DataError
from photo_detector.evalstats import bootstrap, reliability, sigmoid, tpr_at_fpr, wilson
from photo_detector.gate import flat_metrics
from photo_detector.io import usable_cores, write_json_atomic
from photo_detector.perturb import CLEAN, Perturbation, parse_all
from photo_detector.preprocess import decode_crop, normalise, preprocess_files
from photo_detector.progress import progress

log = logging.getLogger(__name__)

EVAL_FILE = "eval.json"
PREDICTIONS_FILE = "predictions.csv"  # every clean file's probability: which images fail, and why
BATCH = 64
FPR_POINTS = (0.01, 0.05)  # operating points the report gives the true-positive rate at


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
    average_precision: float = float("nan")
    fpr: float = float("nan")  # share of real images flagged at the threshold
    tpr: float = float("nan")  # share of ai_generated images flagged at the threshold
    confidence: float = 0.95
    intervals: dict[str, list[float]] = field(default_factory=dict)  # metric -> [low, high]
    tpr_at_fpr: dict[str, float] = field(default_factory=dict)  # "0.01" -> TPR at FPR <= 1%
    pr_precision: list[float] = field(default_factory=list)
    pr_recall: list[float] = field(default_factory=list)
    temperature: float = 1.0
    ece: float = float("nan")  # of the served (calibrated) probabilities
    ece_uncalibrated: float = float("nan")  # of the network's own, before the temperature
    log_loss: float = float("nan")  # of the served probabilities
    reliability: dict[str, Any] = field(default_factory=dict)
    reliability_uncalibrated: dict[str, Any] = field(default_factory=dict)
    robustness: list[dict[str, Any]] = field(default_factory=list)  # one row per pass: clean, then each
    sources: list[dict[str, Any]] = field(default_factory=list)  # one row per source
    worst_source: str | None = None

    @property
    def metrics(self) -> dict[str, float]:
        """The flat numbers the Metrics artifact holds and the gate reads (gate.flat_metrics names them)."""
        return flat_metrics(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        out = {**asdict(self), "class_names": list(CLASS_NAMES)}
        out["metrics"] = flat_metrics(out)
        return out


def predict_files(model_dir: str | Path, paths: list[Path], batch_size: int = BATCH,
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


def compute_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float,
                    confidence: float = 0.95) -> dict[str, Any]:
    """scikit-learn metrics of the positive class `ai_generated` (label 1), the rates at the threshold and
    Wilson intervals of every proportion among them."""
    from sklearn import metrics as skm

    labels = np.asarray(labels).astype(int)
    pred = (probs >= threshold).astype(int)
    both = len(np.unique(labels)) == 2
    fpr, tpr, thr = skm.roc_curve(labels, probs) if both else (np.array([]),) * 3
    cm = skm.confusion_matrix(labels, pred, labels=[0, 1])
    (tn, fp), (fn, tp) = cm.tolist()
    intervals = {"accuracy": wilson(tn + tp, len(labels), confidence), "precision": wilson(tp, tp + fp, confidence),
                 "recall": wilson(tp, tp + fn, confidence), "fpr": wilson(fp, fp + tn, confidence),
                 "tpr": wilson(tp, tp + fn, confidence)}
    return {
        "accuracy": float(skm.accuracy_score(labels, pred)) if len(labels) else float("nan"),
        "precision": float(skm.precision_score(labels, pred, zero_division=0)),
        "recall": float(skm.recall_score(labels, pred, zero_division=0)),
        "f1": float(skm.f1_score(labels, pred, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(labels, probs)) if both else float("nan"),
        "average_precision": float(skm.average_precision_score(labels, probs)) if both else float("nan"),
        "fpr": fp / (fp + tn) if fp + tn else float("nan"), "tpr": tp / (tp + fn) if tp + fn else float("nan"),
        "confusion_matrix": cm.tolist(),
        "roc_fpr": fpr.tolist(), "roc_tpr": tpr.tolist(),
        # roc_curve's first threshold is +inf; JSON and the Vertex console want finite numbers.
        "roc_thresholds": np.minimum(thr, 1.0).tolist(),
        "intervals": {k: list(v) for k, v in intervals.items()},
    }


def split_files(data_dir: str | Path, split: str) -> tuple[SplitFiles, dict[str, int]]:
    """The files of `split` to score, and how many were left out and why. A verified dataset (verify-data's
    output) lists the files it kept; a plain dataset folder is scored whole."""
    if not is_packed(data_dir):
        return discover_split(data_dir, split), {}
    manifest = read_manifest(data_dir)
    listed = manifest.get("files", {}).get(split)
    if listed is None and split in manifest["splits"]:  # a packed split lists its rows in its own files
        packed = read_packed(data_dir, split, manifest)
        listed = {"paths": packed.paths, "labels": packed.labels.tolist()}
    if listed is None:
        raise DataError(f"verified dataset {data_dir} lists no '{split}' split",
                        f"it lists {', '.join([*manifest.get('files', {}), *manifest['splits']])}")
    source = Path(manifest["source"])
    paths = tuple(source / p for p in listed["paths"])
    labels = tuple(listed["labels"]) if "labels" in listed else tuple(
        CLASS_NAMES.index(Path(p).parts[1]) for p in listed["paths"])
    quarantined = sum(1 for q in manifest.get("quarantined", []) if q["split"] == split)
    return (SplitFiles(split, paths, labels, tuple(source_of(p) for p in listed["paths"])),
            ({"quarantined": quarantined} if quarantined else {}))


def stratified_sample(labels: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Indices of a seeded sample of at most `cap` images with each class in its share (all when cap is 0
    or covers the split), sorted so files are read in their listed order."""
    n = len(labels)
    if cap <= 0 or cap >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    picks = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        picks.append(rng.choice(members, max(1, round(cap * len(members) / n)), replace=False))
    return np.sort(np.concatenate(picks))


def _open_full(path: Path) -> Image.Image:
    """The upload as a marketplace holds it: decoded at full size (no draft scaling), in RGB."""
    with Image.open(path) as img:
        img.load()
        return img.convert("RGB") if img.mode != "RGB" else img.copy()


def _crops(paths: list[Path], decode: Callable[[Path], np.ndarray], pool: ThreadPoolExecutor,
           batch: int) -> Iterator[list[np.ndarray]]:
    """Batches of model-input crops, the next batch decoding in the pool while the model runs this one."""
    pending: list[Future[np.ndarray]] | None = None
    for i in range(0, len(paths), batch):
        submitted = [pool.submit(decode, p) for p in paths[i:i + batch]]
        if pending is not None:
            yield [f.result() for f in pending]
        pending = submitted
    if pending:
        yield [f.result() for f in pending]


class _Scorer:
    """One model, one thread pool: the calibrated logits and probabilities of files under a perturbation."""

    def __init__(self, model_dir: str | Path, workers: int) -> None:
        from photo_detector.inference import LoadedModel

        self.model = LoadedModel.load(model_dir)
        self.pool = ThreadPoolExecutor(workers or usable_cores())

    def score(self, paths: list[Path], perturbation: Perturbation | None,
              bar: Any) -> tuple[np.ndarray, np.ndarray, float]:
        pp = self.model.preprocess
        if perturbation is None:
            def decode(p: Path) -> np.ndarray:
                return decode_crop(p, pp)
        else:
            def decode(p: Path) -> np.ndarray:
                return decode_crop(perturbation(_open_full(p)), pp)
        start = time.perf_counter()
        logits, probs = [np.zeros(0, np.float32)], [np.zeros(0, np.float32)]
        for crops in _crops(paths, decode, self.pool, BATCH):
            z, p = self.model.outputs(normalise(crops, pp))
            logits.append(z)
            probs.append(p)
            bar.update(len(crops))
        return np.concatenate(logits), np.concatenate(probs), time.perf_counter() - start

    def close(self) -> None:
        self.pool.shutdown()


def _pass_row(name: str, probs: np.ndarray, labels: np.ndarray, threshold: float, seconds: float,
              confidence: float) -> dict[str, Any]:
    m = compute_metrics(probs, labels, threshold, confidence)
    keep = ("accuracy", "precision", "recall", "f1", "roc_auc", "average_precision", "fpr", "tpr", "intervals")
    return {"perturbation": name, "images": len(labels), **{k: m[k] for k in keep},
            "images_per_second": len(labels) / seconds if seconds else 0.0}


def source_rows(sources: list[str], probs: np.ndarray, labels: np.ndarray, threshold: float,
                confidence: float) -> list[dict[str, Any]]:
    """Per source: images, class, accuracy with its interval and the mean P(ai_generated), worst first."""
    rows = []
    src = np.asarray(sources)
    for name in sorted(set(sources)):
        idx = src == name
        y, p = labels[idx], probs[idx]
        correct = int(np.sum((p >= threshold).astype(int) == y))
        kinds = {CLASS_NAMES[int(v)] for v in np.unique(y)}
        rows.append({"source": name, "class": kinds.pop() if len(kinds) == 1 else "mixed", "images": int(idx.sum()),
                     "accuracy": correct / int(idx.sum()), "accuracy_interval": list(wilson(correct, int(idx.sum()),
                                                                                           confidence)),
                     "mean_probability": float(np.mean(p))})
    return sorted(rows, key=lambda r: (r["accuracy"], -r["images"], r["source"]))


def run_evaluate(model_dir: str | Path, data_dir: str | Path, *, split: str = "test",
                 threshold: float | None = None, out_dir: str | Path | None = None,
                 cfg: Config | None = None) -> EvalResult:
    """Score the model on `data_dir/<split>`, as stored and under each perturbation of `cfg.evaluate`;
    writes `eval.json`, the tables (CSV, Markdown, HTML) and `evaluation.md` into `out_dir` when given."""
    cfg = cfg or load_config()
    ec: EvaluateConfig = cfg.evaluate
    record = read_record(model_dir)
    threshold = record.classification_threshold if threshold is None else float(threshold)
    perturbations = parse_all(ec.perturbations)
    files, left_out = split_files(data_dir, split)
    paths, labels = list(files.paths), np.asarray(files.labels, dtype=int)
    sample = stratified_sample(labels, ec.max_images_per_perturbation, cfg.seed)
    total = len(paths) + len(sample) * len(perturbations)
    scorer = _Scorer(model_dir, ec.workers)
    try:
        with progress(total=total, desc=f"evaluate {split}", unit="img") as bar:
            logits, probs, seconds = scorer.score(paths, None, bar)
            passes = [_pass_row(CLEAN, probs, labels, threshold, seconds, ec.confidence)]
            sampled = [paths[i] for i in sample]
            for pert in perturbations:
                bar.set_description(f"evaluate {split} {pert.name}")
                _, p, s = scorer.score(sampled, pert, bar)
                passes.append(_pass_row(pert.name, p, labels[sample], threshold, s, ec.confidence))
    finally:
        scorer.close()
    result = _result(split, files, labels, logits, probs, threshold, seconds, left_out, passes,
                     record.temperature, cfg)
    _log_result(result, len(sample))
    if out_dir is not None:
        from photo_detector.evaltables import write_tables

        write_json_atomic(Path(out_dir) / EVAL_FILE, result.to_dict())
        write_tables(result.to_dict(), out_dir)
        _write_predictions(Path(out_dir) / PREDICTIONS_FILE, files, probs, threshold)
    return result


def _write_predictions(path: Path, files: SplitFiles, probs: np.ndarray, threshold: float) -> None:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "label", "source", "probability", "prediction"])
    sources = files.sources or tuple(CLASS_NAMES[y] for y in files.labels)
    for p, y, src, prob in zip(files.paths, files.labels, sources, probs, strict=True):
        writer.writerow([str(p), CLASS_NAMES[y], src, f"{prob:.6f}", CLASS_NAMES[int(prob >= threshold)]])
    from photo_detector.io import write_text_atomic

    write_text_atomic(path, buf.getvalue())


def _result(split: str, files: SplitFiles, labels: np.ndarray, logits: np.ndarray, probs: np.ndarray,
            threshold: float, seconds: float, left_out: dict[str, int], passes: list[dict[str, Any]],
            temperature: float, cfg: Config) -> EvalResult:
    from sklearn.metrics import log_loss, precision_recall_curve

    ec = cfg.evaluate
    m = compute_metrics(probs, labels, threshold, ec.confidence)
    boot = bootstrap(probs, labels, threshold, samples=ec.bootstrap_samples, seed=cfg.seed,
                     confidence=ec.confidence)
    m["intervals"].update({k: list(v) for k, v in boot.items()})
    both = len(np.unique(labels)) == 2
    pr_p, pr_r, _ = precision_recall_curve(labels, probs) if both else ([], [], [])
    calibrated = reliability(probs, labels, ec.calibration_bins)
    # The network's own probabilities: the graph's logit is already divided by the temperature.
    raw = reliability(sigmoid(logits.astype(np.float64) * temperature), labels, ec.calibration_bins)
    loss = float(log_loss(labels, np.clip(probs, 1e-7, 1 - 1e-7), labels=[0, 1])) if len(labels) else float("nan")
    sources = source_rows(list(files.sources) or [CLASS_NAMES[y] for y in labels], probs, labels, threshold,
                          ec.confidence)
    return EvalResult(
        split=split, n_images=len(labels), threshold=threshold, left_out=left_out, confidence=ec.confidence,
        images_per_second=len(labels) / seconds if seconds else 0.0, **m,
        tpr_at_fpr={f"{f:g}": tpr_at_fpr(probs, labels, f) for f in FPR_POINTS},
        pr_precision=list(map(float, pr_p)), pr_recall=list(map(float, pr_r)), temperature=temperature,
        ece=calibrated["ece"], ece_uncalibrated=raw["ece"], log_loss=loss,
        reliability=calibrated, reliability_uncalibrated=raw,
        robustness=passes, sources=sources, worst_source=sources[0]["source"] if sources else None)


def _log_result(r: EvalResult, sampled: int) -> None:
    lo, hi = r.intervals.get("accuracy", [float("nan")] * 2)
    log.info("%s: accuracy %.4f [%.4f, %.4f] precision %.4f recall %.4f f1 %.4f roc_auc %.4f AP %.4f at threshold "
             "%.4f (FPR %.4f, TPR %.4f) on %d images (%.0f img/s)%s", r.split, r.accuracy, lo, hi, r.precision,
             r.recall, r.f1, r.roc_auc, r.average_precision, r.threshold, r.fpr, r.tpr, r.n_images,
             r.images_per_second,
             "; left out: " + ", ".join(f"{n} {why}" for why, n in r.left_out.items()) if r.left_out else "")
    log.info("calibration: temperature %.3f, ECE %.4f before -> %.4f after", r.temperature, r.ece_uncalibrated, r.ece)
    for row in r.robustness[1:]:
        log.info("  %-16s accuracy %.4f f1 %.4f roc_auc %.4f FPR %.4f on %d sampled images (%.0f img/s)",
                 row["perturbation"], row["accuracy"], row["f1"], row["roc_auc"], row["fpr"], sampled,
                 row["images_per_second"])
    if r.worst_source is not None and len(r.sources) > 1:
        worst = r.sources[0]
        log.info("worst source: %s (%s), accuracy %.4f on %d images", worst["source"], worst["class"],
                 worst["accuracy"], worst["images"])
