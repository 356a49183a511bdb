from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from photo_detector.errors import PhotoDetectorError
from photo_detector.evaluate import EVAL_FILE, compute_metrics, predict_files, run_evaluate


def test_evaluate_on_the_test_split(trained_dir: Path, sample_dir: Path, tmp_path: Path) -> None:
    res = run_evaluate(trained_dir, sample_dir, split="test", out_dir=tmp_path)
    cm = np.array(res.confusion_matrix)
    assert cm.sum() == res.n_images == 8
    assert res.accuracy == pytest.approx(np.trace(cm) / cm.sum())
    tp, fp, fn = cm[1, 1], cm[0, 1], cm[1, 0]
    assert res.precision == pytest.approx(tp / (tp + fp) if tp + fp else 0.0)
    assert res.recall == pytest.approx(tp / (tp + fn) if tp + fn else 0.0)
    assert 0.0 <= res.roc_auc <= 1.0 and res.roc_fpr[0] == 0.0 and res.roc_tpr[-1] == 1.0
    saved = json.loads((tmp_path / EVAL_FILE).read_text())
    assert saved["accuracy"] == res.accuracy and saved["class_names"] == ["real", "ai_generated"]
    assert all(math.isfinite(t) for t in saved["roc_thresholds"])


def test_onnx_path_matches_training_validation(trained_dir: Path, sample_dir: Path) -> None:
    """Serving preprocessing + ONNX on the raw val files reproduces the val accuracy training recorded."""
    meta = json.loads((trained_dir / "model.json").read_text())
    res = run_evaluate(trained_dir, sample_dir, split="val")
    assert res.accuracy == pytest.approx(meta["val_metrics"]["val_accuracy"])
    assert res.f1 == pytest.approx(meta["val_metrics"]["val_f1"])


def test_threshold_moves_predictions(trained_dir: Path, sample_dir: Path) -> None:
    paths = sorted((sample_dir / "test").rglob("*.png"))
    probs = predict_files(trained_dir, paths)
    assert probs.shape == (8,) and np.all((probs >= 0) & (probs <= 1))
    all_ai = run_evaluate(trained_dir, sample_dir, threshold=1e-9)
    assert all_ai.recall == 1.0 and all_ai.confusion_matrix[0][0] == 0


def test_metrics_match_hand_counts() -> None:
    m = compute_metrics(np.array([0.9, 0.8, 0.2, 0.6]), np.array([1, 0, 0, 1]), 0.5)
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert (m["accuracy"], m["precision"], m["recall"]) == (0.75, 2 / 3, 1.0)
    assert m["roc_auc"] == pytest.approx(0.75)


def test_not_a_model_folder(tmp_path: Path, sample_dir: Path) -> None:
    with pytest.raises(PhotoDetectorError, match=r"model.json does not exist"):
        run_evaluate(tmp_path, sample_dir)
