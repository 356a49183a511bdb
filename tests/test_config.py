from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from photo_detector.config import Config, leaf_keys, load_config, profile_names
from photo_detector.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = (ROOT / "src" / "photo_detector", ROOT / "components", ROOT / "pipelines")


def test_defaults_are_the_training_guide() -> None:
    cfg = load_config()
    assert cfg.seed == 42
    assert (cfg.data.image_size, cfg.data.batch_size) == (224, 64)
    assert (cfg.model.name, cfg.model.pretrained, cfg.model.dropout, cfg.model.freeze_backbone) == (
        "efficientnet_b0", True, 0.3, False)
    t = cfg.train
    assert (t.epochs, t.optimizer, t.learning_rate, t.weight_decay, t.scheduler, t.warmup_epochs) == (
        15, "adamw", 0.001, 0.0001, "cosine", 2)
    assert (t.early_stopping_patience, t.grad_clip_norm, t.checkpoint_monitor, t.checkpoint_mode) == (
        5, 1.0, "val_accuracy", "max")
    a = cfg.augmentation
    assert (a.horizontal_flip, a.rotation_degrees, a.random_crop) == (0.5, 15.0, True)
    cj = a.color_jitter
    assert (cj.brightness, cj.contrast, cj.saturation, cj.hue) == (0.2, 0.2, 0.1, 0.05)
    assert (cfg.thresholds.classification, cfg.thresholds.high_confidence, cfg.thresholds.low_confidence) == (
        0.5, 0.8, 0.3)
    assert (cfg.gate.min_accuracy, cfg.gate.min_f1) == (0.85, 0.80)


def test_packaged_yaml_and_dataclass_defaults_agree() -> None:
    """The YAML is the source of truth people read; the dataclass defaults must not drift from it."""
    assert load_config().to_dict() == Config().to_dict()


def test_profile_user_yaml_and_overrides_layer_in_order(tmp_path: Path) -> None:
    assert "sample" in profile_names()
    user = tmp_path / "user.yaml"
    user.write_text("train:\n  epochs: 7\n  learning_rate: 0.01\n")
    cfg = load_config(user, {"train.learning_rate": 0.02})
    assert cfg.train.epochs == 7 and cfg.train.learning_rate == 0.02
    assert cfg.data.image_size == 224  # untouched keys keep the defaults
    sample = load_config("sample", ["data.batch_size=8"])
    assert sample.data.image_size == 64 and sample.data.batch_size == 8 and sample.model.pretrained is False


def test_unknown_key_names_itself_and_lists_valid_ones(tmp_path: Path) -> None:
    user = tmp_path / "typo.yaml"
    user.write_text("train:\n  learnig_rate: 0.01\n")
    with pytest.raises(ConfigError) as err:
        load_config(user)
    msg = str(err.value)
    assert "train.learnig_rate" in msg and str(user) in msg
    assert "did you mean 'learning_rate'" in msg and "train.epochs" in msg
    with pytest.raises(ConfigError, match="unknown config key 'bogus'"):
        load_config(None, {"bogus": 1})


def test_bad_yaml_and_missing_file_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist.*profile name"):
        load_config(tmp_path / "missing.yaml")


def _invalid_value(cfg: Config, key: str) -> object:
    value = cfg.get(key)
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, int | float):
        return -1e9
    if isinstance(value, list):
        return [0.5]
    return 12345  # strings and optional strings


@pytest.mark.parametrize("key", leaf_keys())
def test_every_key_is_validated(key: str) -> None:
    cfg = Config()
    with pytest.raises(ConfigError, match=re.escape(f"'{key}")):
        load_config(None, {key: _invalid_value(cfg, key)})


@pytest.mark.parametrize("key", leaf_keys())
def test_every_key_is_read_by_the_code(key: str) -> None:
    """A key nobody reads is a lie in the config: each must be accessed as an attribute somewhere."""
    _, _, name = key.rpartition(".")
    pattern = re.compile(rf"\.{re.escape(name)}\b")
    users = [p for d in CODE_DIRS for p in d.rglob("*.py") if pattern.search(p.read_text())]
    assert users, f"config key {key} is never read"


@pytest.mark.parametrize(("override", "needle"), [
    ({"data.batch_size": 1}, "'data.batch_size' must be >= 2"),
    ({"train.checkpoint_monitor": "val_loss"}, "set train.checkpoint_mode=min"),
    ({"thresholds.low_confidence": 0.9}, "low_confidence"),
    ({"train.epochs": 2}, "warmup_epochs"),
    ({"train.optimizer": "sgd"}, "must be one of adamw"),
    ({"data.mean": [0.1, 0.2]}, "must have 3 items"),
])
def test_cross_and_range_rules(override: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(None, override)


def test_resolved_config_round_trips_through_yaml() -> None:
    cfg = load_config("sample")
    again = yaml.safe_load(cfg.to_yaml())
    assert again == cfg.to_dict()
