"""What can be checked of the images without a Docker daemon: each stage has a Dockerfile that installs its
own extra on a pinned base, runs as non-root, and names an entrypoint that is a real, working command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from kfp import __version__ as kfp_version

from photo_detector.components._factory import STAGE_IMAGES

ROOT = Path(__file__).resolve().parents[1]
IMAGES = sorted({*STAGE_IMAGES.values(), "serve"})  # the five stages and the service


def dockerfile(image: str) -> str:
    return (ROOT / "images" / image / "Dockerfile").read_text()


def entrypoint(text: str) -> list[str]:
    match = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M)
    assert match, "no exec-form ENTRYPOINT"
    return json.loads(match.group(1))


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_installs_its_extra_on_a_pinned_base_as_non_root(image: str) -> None:
    text = dockerfile(image)
    bases = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(bases) == 1 and ":" in bases[0] and not bases[0].endswith(":latest"), bases
    if image == "train":
        assert bases[0].startswith("pytorch/pytorch:") and "cuda" in bases[0] and bases[0].endswith("-runtime")
    else:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", bases[0]), "slim Python, same minor as compile time"
    assert f'pip install ".[{image}]"' in text
    assert re.search(r"^USER\s+(?!root|0\b)\S+", text, re.M), "runs as non-root"
    for folder in ("src", "components", "pipelines"):
        assert f"COPY {folder} ./{folder}" in text


def test_extras_pin_the_compile_time_kfp_and_the_spec_records_it() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for image in STAGE_IMAGES.values():
        assert f"kfp=={kfp_version}" in extras[image], f"extra {image} must pin kfp {kfp_version}"
    assert f"sdkVersion: kfp-{kfp_version}" in (ROOT / "compiled" / "training_pipeline.yaml").read_text()


@pytest.mark.parametrize("image", IMAGES)
def test_entrypoint_is_a_real_command_that_runs(image: str) -> None:
    cmd = entrypoint(dockerfile(image))
    assert cmd[0] == "photo-detector"
    out = subprocess.run([sys.executable, "-m", "photo_detector", *cmd[1:], "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: photo-detector " + " ".join(cmd[1:]))


def test_torch_free_stages_do_not_import_torch() -> None:
    """verify, evaluate, gate and deploy images have no torch: their code paths must not import it."""
    code = ("import sys; from photo_detector import stages, verify, evaluate, gate, reports, inference; "
            "from photo_detector.cloud import run_service, settings, vertex, templates; "
            "import photo_detector.serving.app; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_evaluate_and_serve_run_with_torch_unimportable(trained_dir: Path, sample_dir: Path) -> None:
    """Not just imports: the evaluate stage and a prediction really run where torch cannot be imported."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision', 'timm'):\n"
        "            raise ImportError(name + ' is not in this image')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from photo_detector.evaluate import run_evaluate\n"
        f"r = run_evaluate({str(trained_dir)!r}, {str(sample_dir)!r}, split='test')\n"
        "from photo_detector.inference import LoadedModel\n"
        f"m = LoadedModel.load({str(trained_dir)!r})\n"
        "print(r.n_images, m.version)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "8"
