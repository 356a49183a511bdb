from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

from photo_detector.artifacts import BEST, HISTORY, LAST, METADATA, ONNX
from photo_detector.errors import OutputExistsError, PhotoDetectorError
from photo_detector.tblog import read_scalars
from photo_detector.train import METRIC_COLUMNS, TIMING_KEYS, budget_reached, lr_lambda, run_train, select_precision


def test_training_writes_the_model_folder(trained_dir: Path) -> None:
    for name in (BEST, LAST, HISTORY, ONNX, METADATA, "config.yaml"):
        assert (trained_dir / name).is_file(), name
    rows = list(csv.DictReader((trained_dir / HISTORY).open()))
    assert tuple(rows[0]) == METRIC_COLUMNS and [r["epoch"] for r in rows] == ["1", "2"]
    best = torch.load(trained_dir / BEST, weights_only=False)
    for key in ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "val_accuracy",
                "best_val_accuracy", "config", "epoch"):
        assert key in best, key
    assert best["config"]["data"]["image_size"] == 32
    meta = json.loads((trained_dir / METADATA).read_text())
    assert meta["onnx_parity_max_abs_diff"] <= 1e-4
    assert meta["preprocess"] == {"store_size": 40, "resize_size": 40, "crop_size": 32,
                                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert meta["class_names"] == ["real", "ai_generated"]
    assert not list(trained_dir.glob(".*tmp"))  # atomic writes leave nothing behind


def test_existing_output_needs_force_or_resume(trained_dir: Path, sample_dir: Path) -> None:
    before = (trained_dir / BEST).read_bytes()
    with pytest.raises(OutputExistsError, match="--resume .* --force"):
        run_train(sample_dir, trained_dir, tiny_config())
    assert (trained_dir / BEST).read_bytes() == before


def test_resume_needs_a_checkpoint_and_the_same_config(tmp_path: Path, sample_dir: Path,
                                                       trained_dir: Path) -> None:
    with pytest.raises(PhotoDetectorError, match="last.pt does not exist"):
        run_train(sample_dir, tmp_path / "fresh", tiny_config(), resume=True)
    with pytest.raises(PhotoDetectorError, match=r"config differs .*train.learning_rate"):
        run_train(sample_dir, trained_dir, tiny_config(**{"train.learning_rate": 0.1}), resume=True)


class _Killed(Exception):
    pass


def _kill_after_first_epoch(row: dict) -> None:
    """An on_epoch_end that stops training like a killed task: after epoch 1's checkpoints are on disk."""
    if row["epoch"] == 1:
        raise _Killed


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path: Path, sample_dir: Path) -> None:
    cfg = tiny_config(**{"train.epochs": 3, "train.warmup_epochs": 1})
    full = run_train(sample_dir, tmp_path / "full", cfg)

    with pytest.raises(_Killed):
        run_train(sample_dir, tmp_path / "cut", cfg, on_epoch_end=_kill_after_first_epoch)
    assert not (tmp_path / "cut" / ONNX).exists()
    resumed = run_train(sample_dir, tmp_path / "cut", cfg, resume=True)

    def timeless(history: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]

    assert len(full.history) == 3
    assert timeless(resumed.history) == timeless(full.history)
    for name in (LAST, BEST):
        a = torch.load(tmp_path / "full" / name, weights_only=False)["model_state_dict"]
        b = torch.load(tmp_path / "cut" / name, weights_only=False)["model_state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert timeless(list(csv.DictReader((tmp_path / "cut" / HISTORY).open()))) == timeless(
        list(csv.DictReader((tmp_path / "full" / HISTORY).open())))


def test_early_stopping_and_min_mode(tmp_path: Path, sample_dir: Path) -> None:
    cfg = tiny_config(**{"train.epochs": 6, "train.early_stopping_patience": 1,
                         "train.checkpoint_monitor": "val_loss", "train.checkpoint_mode": "min"})
    res = run_train(sample_dir, tmp_path / "es", cfg)
    losses = [r["val_loss"] for r in res.history]
    # Patience 1: the run ends at the first epoch whose val_loss is not below every earlier one.
    first_miss = next(i for i in range(1, len(losses)) if losses[i] >= min(losses[:i])) + 1
    assert res.stopped_early and res.epochs_run == first_miss < 6
    assert res.best_epoch == int(np.argmin(losses)) + 1
    assert torch.load(tmp_path / "es" / BEST, weights_only=False)["epoch"] == res.best_epoch


def test_lr_schedule_warms_up_then_decays() -> None:
    cfg = tiny_config(**{"train.epochs": 4, "train.warmup_epochs": 1})
    f = [lr_lambda(s, steps_per_epoch=10, cfg=cfg) for s in range(40)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[10:])) and f[-1] < 0.01
    const = tiny_config(**{"train.epochs": 4, "train.warmup_epochs": 1, "train.scheduler": "constant"})
    assert lr_lambda(35, steps_per_epoch=10, cfg=const) == 1.0


def test_precision_choice() -> None:
    cpu = torch.device("cpu")
    assert select_precision("fp32", cpu) is None
    assert select_precision("bf16", cpu) is torch.bfloat16
    assert select_precision("fp16", torch.device("cuda")) is torch.float16
    with pytest.raises(PhotoDetectorError, match="fp16, which needs CUDA"):
        select_precision("fp16", cpu)


def test_gradient_clipping_is_applied(tmp_path: Path, sample_dir: Path) -> None:
    """A tiny clip norm with a huge learning rate keeps weights close; without clipping they move far."""
    def drift(clip: float, out: str) -> float:
        cfg = tiny_config(**{"train.epochs": 1, "train.learning_rate": 0.05, "train.grad_clip_norm": clip,
                             "train.weight_decay": 0.0})
        torch.manual_seed(0)
        run_train(sample_dir, tmp_path / out, cfg)
        ckpt = torch.load(tmp_path / out / LAST, weights_only=False)["model_state_dict"]
        return float(np.abs(ckpt["head.4.weight"].numpy()).max())
    assert drift(1e-6, "clipped") < drift(0.0, "free")


def test_divergence_is_a_clear_error(tmp_path: Path, sample_dir: Path) -> None:
    cfg = tiny_config(**{"train.epochs": 2, "train.learning_rate": 10.0, "train.grad_clip_norm": 0.0})
    with pytest.raises(PhotoDetectorError, match=r"training diverged.*lower train.learning_rate"):
        run_train(sample_dir, tmp_path / "nan", cfg)


def test_jpeg_recompression_touches_the_chosen_share_only_and_is_seeded() -> None:
    import torch

    from photo_detector.data.augment import jpeg_recompress

    rng = np.random.default_rng(0)
    smooth = np.repeat(np.repeat(rng.integers(0, 255, (32, 3, 8, 8), dtype=np.uint8), 4, 2), 4, 3)
    x = torch.from_numpy(smooth)
    none = jpeg_recompress(x.clone(), 0.0, (60, 100), torch.Generator().manual_seed(1))
    assert torch.equal(none, x)
    a = jpeg_recompress(x.clone(), 0.5, (30, 40), torch.Generator().manual_seed(1))
    b = jpeg_recompress(x.clone(), 0.5, (30, 40), torch.Generator().manual_seed(1))
    assert torch.equal(a, b), "same seed, same batch"
    changed = [not torch.equal(a[i], x[i]) for i in range(32)]
    assert 8 <= sum(changed) <= 24, "about half the images, drawn per image"
    diff = (a.float() - x.float()).abs().mean(dim=(1, 2, 3))
    assert all(0 < d < 40 for d, c in zip(diff.tolist(), changed, strict=True) if c), "a lossy copy, not noise"


def test_training_with_jpeg_recompression_runs_and_resumes_exactly(sample_dir: Path, tmp_path: Path) -> None:
    cfg = tiny_config(**{"augmentation.jpeg_probability": 0.5, "train.epochs": 2})
    whole = run_train(sample_dir, tmp_path / "whole", cfg)

    with pytest.raises(_Killed):
        run_train(sample_dir, tmp_path / "cut", cfg, on_epoch_end=_kill_after_first_epoch)
    resumed = run_train(sample_dir, tmp_path / "cut", cfg, resume=True)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in whole.history]


def test_an_attached_gpu_torch_cannot_use_is_an_error_not_a_cpu_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from photo_detector.train import gpu_attached, select_device

    if torch.cuda.is_available():
        pytest.skip("torch can use the GPU here")
    with pytest.raises(PhotoDetectorError, match="a GPU is attached but torch cannot use it.*driver"):
        select_device("auto", attached=lambda: True)
    assert select_device("auto", attached=lambda: False).type == "cpu"
    assert select_device("cpu", attached=lambda: True).type == "cpu", "an explicit cpu is respected"
    with pytest.raises(PhotoDetectorError, match="no CUDA device is visible"):
        select_device("cuda", attached=lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_attached() is False, "GPUs hidden on purpose are not attached"


def test_every_epoch_is_in_tensorboard_event_files(trained_dir: Path) -> None:
    """The shared tiny run: each epoch's metrics, images/s and learning rate, as TensorBoard scalars."""
    import csv

    scalars = read_scalars(trained_dir / "logs")
    with (trained_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows
    for metric in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_precision", "val_recall",
                   "val_f1", "learning_rate"):
        tag = ("train/" if metric.startswith("train_") else "val/" if metric.startswith("val_") else "run/") + metric
        assert sorted(scalars[tag]) == [int(r["epoch"]) for r in rows], tag
        for r in rows:
            assert scalars[tag][int(r["epoch"])] == pytest.approx(float(r[metric]), rel=1e-4)
    assert all(v > 0 for v in scalars["run/images_per_second"].values())
    assert "run/gpu_peak_memory_mib" not in scalars  # CPU: nothing to report, nothing made up


def test_budget_arithmetic() -> None:
    rows = [{"seconds": 50.0}, {"seconds": 70.0}, {"seconds": 60.0}]
    assert not budget_reached(0.0, [], 0.001), "the first epoch always runs"
    assert not budget_reached(1000.0, rows, 0), "0 = no budget"
    assert budget_reached(180 * 60 - 69, rows, 180) and not budget_reached(180 * 60 - 71, rows, 180)


def test_a_tiny_budget_stops_between_epochs_and_keeps_the_best(tmp_path: Path, sample_dir: Path) -> None:
    cfg = tiny_config(**{"train.epochs": 6, "train.max_minutes": 0.0005, "train.early_stopping_patience": 0})
    res = run_train(sample_dir, tmp_path / "out", cfg)
    assert res.stopped_by == "budget" and 1 <= res.epochs_run < 6
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert meta["training"] == {"epochs_run": res.epochs_run, "stopped_by": "budget", "max_minutes": 0.0005,
                                "logs": "logs"}
    assert (tmp_path / "out" / ONNX).is_file() and meta["best_epoch"] <= res.epochs_run
    # A resumed attempt counts the time already spent: the budget is still used up, so nothing more runs.
    again = run_train(sample_dir, tmp_path / "out", cfg, resume=True)
    assert again.epochs_run == res.epochs_run and again.stopped_by == "budget"
