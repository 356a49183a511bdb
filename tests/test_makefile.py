"""The Makefile's targets are one line each over our CLI, and say what the README says."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def recipe(target: str, **variables: str) -> list[str]:
    args = ["make", "-s", "-n", "-C", str(ROOT), target, *(f"{k}={v}" for k, v in variables.items())]
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout.splitlines()


def readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    return re.search(rf"<!-- {marker} -->\n```bash\n(.+)\n", text).group(1)


def test_each_target_is_one_line() -> None:
    for target in ("dev", "data", "train", "test", "lint", "format"):
        assert len(recipe(target)) == 1, target


def test_dev_is_the_readme_install_and_test_is_the_readme_test_command() -> None:
    assert readme_block("main-command").startswith(recipe("dev")[0] + " && ")
    assert recipe("test") == ["bash .ci/run"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci and 'bash -c "set -eo pipefail; $cmd"' in ci  # runs that line verbatim
    assert "lint-imports" in readme_block("test-command") and recipe("lint") == ["ruff check . && lint-imports"]


def test_data_and_train_are_our_commands(tmp_path: Path) -> None:
    out = tmp_path / "d"
    res = subprocess.run(["make", "-s", "-C", str(ROOT), "data", f"DATA={out}"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert {p.name for p in out.iterdir()} == {"train", "val", "test"}
    assert recipe("train", DATA="x", OUT="y") == ["photo-detector train --config sample --data x --out y"]
