"""The installed command, run as users run it: one-line errors with exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "photo_detector", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_help_lists_the_commands() -> None:
    out = cli("--help")
    assert out.returncode == 0
    for cmd in ("config", "data", "train", "evaluate"):
        assert cmd in out.stdout


def test_config_show_applies_profile_and_set() -> None:
    out = cli("config", "show", "--config", "sample", "--set", "train.epochs=3")
    assert out.returncode == 0 and "epochs: 3" in out.stdout and "image_size: 64" in out.stdout


@pytest.mark.parametrize(("args", "needle"), [
    (["config", "show", "--set", "train.epoch=3"], "unknown config key 'train.epoch'"),
    (["train", "--data", "/nonexistent", "--out", "{tmp}/o", "--set", "model.pretrained=false"],
     "dataset folder /nonexistent does not exist"),
    (["train", "--data", "{tmp}", "--out", "{tmp}/o", "--batch-size", "1"], "'data.batch_size' must be >= 2"),
    (["evaluate", "--model", "{tmp}", "--data", "{tmp}"], "model.json does not exist"),
    (["data", "sample", "{tmp}/d", "--per-class", "2"], "--per-class 2 is too small"),
])
def test_bad_input_is_one_clear_line(tmp_path: Path, args: list[str], needle: str) -> None:
    out = cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert out.returncode == 2
    assert needle in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 or out.stderr.strip().splitlines()[-1].startswith("error:")


def test_sample_then_evaluate_round_trip(tmp_path: Path, trained_dir: Path) -> None:
    out = cli("data", "sample", str(tmp_path / "d"), "--per-class", "6", "--size", "40")
    assert out.returncode == 0 and "wrote 12 images" in out.stdout
    out = cli("evaluate", "--model", str(trained_dir), "--data", str(tmp_path / "d"), "--json")
    assert out.returncode == 0 and '"accuracy"' in out.stdout
