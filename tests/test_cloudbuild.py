"""cloudbuild.yaml, checked without Cloud Build: every image it builds has a Dockerfile, builds run in
parallel, the spec is compiled with exactly the tags it pushes, and the commands it runs exist."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from photo_detector.components._factory import STAGE_IMAGES
from photo_detector.pipelines.compile import load_spec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def build() -> dict:
    return yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())


def steps(build: dict, verb: str) -> list[dict]:
    return [s for s in build["steps"] if s.get("args") and s["args"][0] == verb]


def shell(step: dict) -> str:
    return " ".join(step["args"][1:]) if step.get("entrypoint") == "bash" else ""


def test_every_built_image_has_a_dockerfile_and_builds_start_at_once(build: dict) -> None:
    built = {}
    for step in steps(build, "build"):
        args = step["args"]
        dockerfile = args[args.index("-f") + 1]
        tag = args[args.index("-t") + 1]
        assert (ROOT / dockerfile).is_file(), dockerfile
        image = re.fullmatch(r"\$\{_REGISTRY\}/(\w+):\$\{SHORT_SHA\}", tag).group(1)
        assert dockerfile == f"images/{image}/Dockerfile"
        assert step["waitFor"] == ["-"], "builds run in parallel"
        built[image] = tag
    assert set(built) == {*STAGE_IMAGES.values(), "serve"}
    pushed = {s["args"][1] for s in steps(build, "push")}
    assert pushed == set(built.values())


def test_compile_uses_the_tags_the_build_pushes(build: dict, tmp_path: Path) -> None:
    compile_step = next(s for s in build["steps"] if s["id"] == "compile")
    script = shell(compile_step)
    assert '--registry "${_REGISTRY}"' in script and '--image-tag "${SHORT_SHA}"' in script
    registry, sha = "europe-docker.pkg.dev/proj/photo-detector", "0a1b2c3"
    out = subprocess.run([sys.executable, "-m", "photo_detector", "compile", "--registry", registry,
                          "--image-tag", sha, "--output", str(tmp_path / "p.yaml")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    spec = load_spec(tmp_path / "p.yaml")
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values() if "container" in e}
    pushed = {s["args"][1].replace("${_REGISTRY}", registry).replace("${SHORT_SHA}", sha)
              for s in steps(build, "push")}
    assert images <= pushed and len(images) == len(STAGE_IMAGES)


def test_template_upload_waits_for_every_push_and_submit_is_opt_in(build: dict) -> None:
    upload = next(s for s in build["steps"] if s["id"] == "upload-template")
    assert set(upload["waitFor"]) == {"compile", *(s["id"] for s in steps(build, "push"))}
    assert '--tag "${SHORT_SHA}" --tag latest' in shell(upload)
    submit = next(s for s in build["steps"] if s["id"] == "submit")
    assert submit["waitFor"] == ["upload-template"]
    assert 'if [ "${_SUBMIT}" != "true" ]' in shell(submit) and build["substitutions"]["_SUBMIT"] == "false"
    for name in ("_REGION", "_REGISTRY", "_KFP_REPOSITORY", "_PIPELINE_ROOT", "_SUBMIT", "_SUBMIT_PARAMS"):
        assert name in build["substitutions"] and f"#   {name}" in (ROOT / "cloudbuild.yaml").read_text()


def test_python_steps_use_the_images_python_and_real_commands(build: dict) -> None:
    slim = re.search(r"^FROM\s+(\S+)", (ROOT / "images/gate/Dockerfile").read_text(), re.M).group(1)
    for step in build["steps"]:
        if step.get("entrypoint") != "bash":
            continue
        assert step["name"] == slim, "compile with the same Python as the images"
        for match in re.finditer(r"photo-detector ((?:template )?[a-z-]+)", shell(step)):
            cmd = shlex.split(match.group(1))
            out = subprocess.run([sys.executable, "-m", "photo_detector", *cmd, "--help"], capture_output=True,
                                 text=True, timeout=120)
            assert out.returncode == 0, f"`photo-detector {match.group(1)}` is not a command: {out.stderr}"
