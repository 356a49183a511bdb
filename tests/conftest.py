"""Shared fixtures: a tiny deterministic dataset and a config small enough to train in seconds on 2 cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network: there is none here

from photo_detector.config import Config, load_config
from photo_detector.data.sample import generate_sample


def pytest_configure(config: pytest.Config) -> None:
    """Names derived from the project stay deterministic: the checked-in spec is compiled without one."""
    for var in ("PHOTO_DETECTOR_PROJECT", "CLOUD_ML_PROJECT_ID", "GOOGLE_CLOUD_PROJECT"):
        os.environ.pop(var, None)


TINY = {
    "data.image_size": 32, "data.crop_pct": 0.8, "data.batch_size": 16, "data.num_workers": 2,
    "model.pretrained": False, "model.hidden_dim": 32,
    "train.epochs": 2, "train.warmup_epochs": 0, "train.learning_rate": 0.003,
    "verify.min_images_per_class": 2,
}


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 images per class, 40 px: train 22, val 4, test 4 per class."""
    return generate_sample(tmp_path_factory.mktemp("data") / "sample", per_class=30, size=40, seed=7).root


def tiny_config(**overrides: object) -> Config:
    return load_config(None, {**TINY, **overrides})


@pytest.fixture(scope="session")
def trained_dir(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny training run, shared by the evaluate and export tests."""
    from photo_detector.train import run_train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    run_train(sample_dir, out, tiny_config())
    return out


@pytest.fixture(scope="session")
def smoke_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model that classifies a known image of each class correctly (what a deploy smoke test needs)."""
    import json

    from photo_detector.train import run_train

    data = generate_sample(tmp_path_factory.mktemp("data60") / "sample", per_class=60, size=40, seed=7).root
    out = tmp_path_factory.mktemp("runs") / "smoke-model"
    run_train(data, out, tiny_config(**{"train.epochs": 12, "train.learning_rate": 0.005,
                                        "train.warmup_epochs": 1, "train.early_stopping_patience": 0}))
    smoke = json.loads((out / "model.json").read_text())["smoke_images"]
    assert set(smoke) == {"real", "ai_generated"}, smoke
    return out
