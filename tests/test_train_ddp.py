"""Two training processes (gloo, CPU) train like one on the same global batch: the multi-GPU path, tested here
without GPUs. Comparisons use fp32: bf16 autocast (on CPUs with AMX) rounds differently per batch shape."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

from photo_detector.artifacts import BEST, HISTORY, LAST, ONNX, read_record
from photo_detector.config import Config
from photo_detector.errors import PhotoDetectorError
from photo_detector.parallel import Shard, launch
from photo_detector.tblog import read_scalars
from photo_detector.train import TIMING_KEYS, _Trainer, run_train

pytestmark = pytest.mark.slow

# Dropout and every augmentation stay on: their draws are what the two processes must share.
DDP = {"train.epochs": 3, "train.warmup_epochs": 1, "train.precision": "fp32", "data.batch_size": 16,
       "train.early_stopping_patience": 0}
# Whole runs compare at a learning rate too small to move the weights far. Why: tiny-model training on a CPU
# is chaotic. Adam turns the float noise of a near-zero gradient into a full step of either sign, and one
# process differs from itself with another thread count (1 vs 2: epoch-2 train loss 0.80 vs 0.92, measured).
# A tiny rate keeps that noise tiny, while everything the loop does per epoch (shuffles, augmentation and
# dropout draws, BatchNorm running statistics, gathered validation, checkpoints) still has to line up.
WHOLE_RUN = {**DDP, "train.learning_rate": 1e-6}


class Killed(Exception):
    """Raised by `kill_after_first_epoch`; module level so that a spawned process can pickle it."""


def kill_after_first_epoch(row: dict) -> None:
    if row["epoch"] == 1:
        raise Killed


def _timeless(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]


@pytest.fixture(scope="module")
def runs(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp")
    run_train(sample_dir, root / "one", tiny_config(**WHOLE_RUN))
    run_train(sample_dir, root / "two", tiny_config(**WHOLE_RUN, **{"train.gpus": 2}))
    return {"one": root / "one", "two": root / "two"}


def first_step_gradients(data_dir: Path, cfg: Config, shard: Shard) -> dict[str, torch.Tensor]:
    """Gradients of the first training step, after DDP averaged them (module level: spawned processes import it)."""
    torch.manual_seed(cfg.seed)
    trainer = _Trainer(cfg, data_dir, shard)
    trainer.build(load_pretrained=False)
    trainer.model.train()
    idx, xb = next(trainer.epoch_batches(1))
    loss, _, _ = trainer.forward_batch(idx, xb)
    loss.backward()
    return {name: p.grad.clone() for name, p in trainer.model.named_parameters()}


def test_two_processes_compute_the_gradient_of_the_global_batch(sample_dir: Path) -> None:
    """Global BatchNorm statistics, shared dropout and augmentation draws, DDP's averaging: the step is the one
    process's step. Tolerance is relative to each tensor's size: biases that feed a BatchNorm have a gradient
    of exactly zero in theory and float noise (1e-8 to 1e-6, by batch) in practice, in either run."""
    cfg = tiny_config(**DDP)
    one = first_step_gradients(sample_dir, cfg, Shard())
    two = launch(first_step_gradients, (sample_dir, cfg), 2, "gloo")
    assert one.keys() == two.keys()
    for name, a in one.items():
        assert float((two[name] - a).abs().max()) <= 1e-3 * float(a.abs().max()) + 1e-5, name


def test_two_processes_train_like_one_on_the_same_global_batch(runs: dict[str, Path]) -> None:
    one = torch.load(runs["one"] / LAST, weights_only=False)
    two = torch.load(runs["two"] / LAST, weights_only=False)
    assert [r["epoch"] for r in one["history"]] == [r["epoch"] for r in two["history"]] == [1, 2, 3]
    for a, b in zip(_timeless(one["history"]), _timeless(two["history"]), strict=True):
        assert a.keys() == b.keys()
        np.testing.assert_allclose([b[k] for k in a], [a[k] for k in a], atol=1e-5, rtol=1e-5, err_msg=str(a))
    for key, a in one["model_state_dict"].items():  # BatchNorm running statistics included
        torch.testing.assert_close(two["model_state_dict"][key], a, atol=1e-4, rtol=1e-4, msg=key)


def test_exactly_one_set_of_artifacts_is_written(runs: dict[str, Path]) -> None:
    names = {p.relative_to(runs["one"]).as_posix() for p in runs["one"].rglob("*") if "tfevents" not in p.name}
    assert {p.relative_to(runs["two"]).as_posix() for p in runs["two"].rglob("*")
            if "tfevents" not in p.name} == names
    assert len(list((runs["two"] / "logs").rglob("events.out.tfevents.*"))) == 1
    assert len(list(csv.DictReader((runs["two"] / HISTORY).open()))) == 3
    assert read_scalars(runs["two"] / "logs")["val/val_accuracy"].keys() == {1, 2, 3}
    record = read_record(runs["two"])
    assert record.config["train"]["gpus"] == 2 and (runs["two"] / ONNX).is_file()


def test_two_processes_resume_after_a_kill(runs: dict[str, Path], sample_dir: Path, tmp_path: Path) -> None:
    cfg = tiny_config(**WHOLE_RUN, **{"train.gpus": 2})
    with pytest.raises(Killed):  # raised in process 0, re-raised here; process 1 is stopped
        run_train(sample_dir, tmp_path / "cut", cfg, on_epoch_end=kill_after_first_epoch)
    assert torch.load(tmp_path / "cut" / LAST, weights_only=False)["epoch"] == 1
    resumed = run_train(sample_dir, tmp_path / "cut", cfg, resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    whole = torch.load(runs["two"] / BEST, weights_only=False)["model_state_dict"]
    again = torch.load(tmp_path / "cut" / BEST, weights_only=False)["model_state_dict"]
    assert all(torch.equal(whole[k], again[k]) for k in whole)  # gloo's two-way sums are order-free: exact


def test_a_batch_that_does_not_split_evenly_is_refused(sample_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(PhotoDetectorError, match=r"data.batch_size.*\(15\).*train.gpus \(2\)"):
        run_train(sample_dir, tmp_path / "odd", tiny_config(**{**DDP, "data.batch_size": 15, "train.gpus": 2}))
    assert not (tmp_path / "odd").exists()
