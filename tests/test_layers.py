"""The layers of docs/architecture.md hold because `lint-imports` (in the README's test command) fails on a
broken one: each case adds one forbidden import to a copy of the tree and shows the check fails, naming it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))


def contracts() -> dict[str, dict]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {c["id"]: c for c in data["tool"]["importlinter"]["contracts"]}


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports on `tree` (its src/ first on the path, ahead of the installed editable checkout)."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    return subprocess.run([LINT, "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    copy = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("src", "components", "pipelines"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


def add(path: Path, code: str) -> None:
    path.write_text(path.read_text() + "\n\n" + code.strip() + "\n")


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    res = lint(tree)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout and "6 kept" in res.stdout


# A lazy import inside a function counts as much as one at the top: each probe is one.
CASES = {
    "library imports cloud": ("src/photo_detector/gate.py", "def _probe():\n    from photo_detector.cloud import gcs\n",
                              "photo_detector.gate -> photo_detector.cloud.gcs"),
    "library imports Google": ("src/photo_detector/model.py", "def _probe():\n    from google.cloud import storage\n",
                               "photo_detector.model -> google"),
    "library imports kfp": ("src/photo_detector/reports.py", "def _probe():\n    import kfp\n",
                            "photo_detector.reports -> kfp"),
    "cloud imports serving": ("src/photo_detector/cloud/deploy.py",
                              "def _probe():\n    from photo_detector.serving import app\n",
                              "photo_detector.cloud.deploy -> photo_detector.serving.app"),
    "serving imports cli": ("src/photo_detector/serving/auth.py", "def _probe():\n    import photo_detector.cli\n",
                            "photo_detector.serving.auth -> photo_detector.cli"),
    "serving imports torch": ("src/photo_detector/serving/metrics.py", "def _probe():\n    import torch\n",
                              "photo_detector.serving.metrics -> torch"),
    "the evaluate image reaches torch": ("src/photo_detector/evaluate.py",
                                         "def _probe():\n    from photo_detector import train\n",
                                         "photo_detector.evaluate -> photo_detector.train"),
    "a component calls the library": ("components/evaluate.py", "def _probe():\n    from photo_detector import train\n",
                                      "components.evaluate -> photo_detector.train"),
    "a cycle": ("src/photo_detector/metrics.py", "def _probe():\n    from photo_detector import export\n",
                ".metrics -> .export"),  # export imports metrics: now a cycle
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_forbidden_import_fails_the_check(tree: Path, case: str) -> None:
    file, code, needle = CASES[case]
    add(tree / file, code)
    res = lint(tree)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "BROKEN" in res.stdout and needle in " ".join(res.stdout.split()), res.stdout


def test_a_new_module_must_join_a_layer(tree: Path) -> None:
    (tree / "src" / "photo_detector" / "newthing.py").write_text('"""Not yet in a layer."""\n')
    res = lint(tree)
    assert res.returncode == 1 and "photo_detector.newthing" in res.stdout, res.stdout + res.stderr


def test_the_library_is_one_list() -> None:
    """The library layer and the sources of the no-Google contract name the same modules, and together with the
    edge layers they cover every module of src/photo_detector."""
    c = contracts()
    layers = [set(layer.replace("|", ":").replace(" ", "").split(":")) for layer in c["layers"]["layers"]]
    library = layers[-1]
    assert {m.removeprefix("photo_detector.") for m in c["library-no-google"]["source_modules"]} == library
    on_disk = {p.stem if p.is_file() else p.name for p in (ROOT / "src" / "photo_detector").iterdir()
               if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert set().union(*layers) == on_disk
