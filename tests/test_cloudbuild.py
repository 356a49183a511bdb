"""cloudbuild.yaml, checked without Cloud Build: its substitutions are resolved the way Cloud Build resolves
them (built-ins, user defaults, dynamic references), once for a manual `gcloud builds submit` (no SHORT_SHA)
and once for a trigger build; every image reference must then be fully qualified, the spec compiled by the
compile step must name exactly the images pushed, and the deploy task must roll out the serve image built."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from photo_detector.components._factory import STAGE_IMAGES
from photo_detector.config import load_config
from photo_detector.pipelines.compile import load_spec

ROOT = Path(__file__).resolve().parents[1]
IMAGES = {*STAGE_IMAGES.values(), "serve"}
REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
QUALIFIED = re.compile(r"[a-z0-9-]+-docker\.pkg\.dev/[a-z][a-z0-9-]{4,28}[a-z0-9]/[a-z][a-z0-9-]*/(\w+)"
                       r":[\w][\w.-]{0,127}")
# What Cloud Build itself defines; the trigger-only ones are empty for `gcloud builds submit`.
TRIGGER_ONLY = ("COMMIT_SHA", "SHORT_SHA", "REVISION_ID", "BRANCH_NAME", "TAG_NAME", "REPO_NAME", "TRIGGER_NAME")


@pytest.fixture(scope="module")
def build() -> dict:
    return yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())


def expand(text: str, values: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(f"cloudbuild.yaml uses ${name}, which is neither built in nor a substitution")
        return values[name]
    return REF.sub(sub, text)


def resolve(build: dict, *, passed: dict[str, str], trigger_sha: str | None) -> list[dict]:
    """Every step with its substitutions applied, as Cloud Build runs it."""
    values = {"PROJECT_ID": "my-proj-123", "PROJECT_NUMBER": "123456789", "BUILD_ID": "b-1",
              "LOCATION": "global", **dict.fromkeys(TRIGGER_ONLY, "")}
    if trigger_sha:
        values.update(COMMIT_SHA=trigger_sha + "f" * 33, SHORT_SHA=trigger_sha, BRANCH_NAME="main")
    user = {**{k: str(v) for k, v in build["substitutions"].items()}, **passed}
    assert build["options"]["dynamicSubstitutions"] is True, "user substitutions reference others"
    for _ in range(len(user)):  # dynamic substitutions may refer to each other: expand to a fixed point
        user = {k: expand(v, {**values, **user}) for k, v in user.items()}
    values.update(user)
    return [{**step, "args": [expand(a, values) for a in step.get("args", [])]} for step in build["steps"]]


def pushed_images(steps: list[dict]) -> dict[str, str]:
    refs = [s["args"][1] for s in steps if s["args"] and s["args"][0] == "push"]
    return {QUALIFIED.fullmatch(r).group(1) if QUALIFIED.fullmatch(r) else r: r for r in refs}


@pytest.mark.parametrize(("kind", "passed", "trigger_sha", "tag"), [
    ("manual", {"_IMAGE_TAG": "abc1234", "_REGION": "europe-west4"}, None, "abc1234"),
    ("trigger", {}, "0a1b2c3", "0a1b2c3"),
])
def test_every_image_reference_is_fully_qualified_and_the_spec_names_exactly_those(
        build: dict, tmp_path: Path, kind: str, passed: dict, trigger_sha: str | None, tag: str) -> None:
    steps = resolve(build, passed=passed, trigger_sha=trigger_sha)
    pushed = pushed_images(steps)
    assert set(pushed) == IMAGES, f"{kind}: not fully qualified or missing: {pushed}"
    assert all(ref.endswith(f":{tag}") and "/my-proj-123/photo-detector-images/" in ref for ref in pushed.values())
    built = {s["args"][s["args"].index("-t") + 1] for s in steps if s["args"] and s["args"][0] == "build"}
    assert built == set(pushed.values())

    script = next(s for s in steps if s["id"] == "compile")["args"][1]
    command = shlex.split(script.split("&&", 1)[1])
    assert command[0] == "photo-detector"
    out_file = tmp_path / "p.yaml"
    command[command.index("--output") + 1] = str(out_file)
    out = subprocess.run([sys.executable, "-m", "photo_detector", *command[1:]], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    spec = load_spec(out_file)
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values() if "container" in e}
    assert images == {pushed[i] for i in STAGE_IMAGES.values()}
    deploy = spec["components"]["comp-condition-2"]["dag"]["tasks"]["deploy"]
    assert deploy["inputs"]["parameters"]["serve_image"]["runtimeValue"]["constant"] == pushed["serve"]
    upload = next(s for s in steps if s["id"] == "upload-template")["args"][1]
    assert f'--tag "{tag}" --tag latest' in upload and '--repository "photo-detector-pipelines"' in upload


def test_a_manual_build_without_a_tag_stops_first_and_says_how(build: dict) -> None:
    steps = resolve(build, passed={}, trigger_sha=None)
    check = next(s for s in steps if s["id"] == "check-substitutions")
    out = subprocess.run(["bash", *check["args"]], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "--substitutions=_IMAGE_TAG=" in out.stderr
    ok = resolve(build, passed={"_IMAGE_TAG": "v1"}, trigger_sha=None)
    out = subprocess.run(["bash", *next(s for s in ok if s["id"] == "check-substitutions")["args"]],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "photo-detector-images/<image>:v1" in out.stdout
    for step in build["steps"]:
        if step["id"] != "check-substitutions":
            assert step["waitFor"] != ["-"], f"{step['id']} must wait for the check"


def test_docker_and_kfp_repositories_differ_and_match_the_config(build: dict) -> None:
    subs, cfg = build["substitutions"], load_config()
    assert subs["_DOCKER_REPOSITORY"] != subs["_KFP_REPOSITORY"]
    assert (subs["_DOCKER_REPOSITORY"], subs["_KFP_REPOSITORY"]) == (cfg.gcp.docker_repository,
                                                                    cfg.gcp.kfp_repository)
    assert "${_DOCKER_REPOSITORY}" in subs["_REGISTRY"]


def test_every_built_image_has_a_dockerfile_and_builds_run_in_parallel(build: dict) -> None:
    for step in build["steps"]:
        args = step.get("args", [])
        if args and args[0] == "build":
            dockerfile = args[args.index("-f") + 1]
            image = re.fullmatch(r"\$\{_REGISTRY\}/(\w+):\$\{_IMAGE_TAG\}", args[args.index("-t") + 1]).group(1)
            assert dockerfile == f"images/{image}/Dockerfile" and (ROOT / dockerfile).is_file()
            assert step["waitFor"] == ["check-substitutions"], "builds start together, right after the check"


def test_template_upload_waits_for_every_push_and_submit_is_opt_in(build: dict) -> None:
    upload = next(s for s in build["steps"] if s["id"] == "upload-template")
    pushes = {s["id"] for s in build["steps"] if s.get("args", [""])[0] == "push"}
    assert set(upload["waitFor"]) == {"compile", *pushes}
    submit = next(s for s in build["steps"] if s["id"] == "submit")
    assert submit["waitFor"] == ["upload-template"]
    assert 'if [ "${_SUBMIT}" != "true" ]' in submit["args"][1] and build["substitutions"]["_SUBMIT"] == "false"
    text = (ROOT / "cloudbuild.yaml").read_text()
    for name in build["substitutions"]:
        assert f"#   {name}" in text, f"substitution {name} is not documented in the header"


def test_python_steps_use_the_images_python_and_real_commands(build: dict) -> None:
    slim = re.search(r"^FROM\s+(\S+)", (ROOT / "images/gate/Dockerfile").read_text(), re.M).group(1)
    for step in build["steps"]:
        if step.get("entrypoint") != "bash":
            continue
        assert step["name"] == slim, "compile with the same Python as the images"
        for match in re.finditer(r"photo-detector ((?:template )?[a-z-]+)", step["args"][1]):
            cmd = shlex.split(match.group(1))
            out = subprocess.run([sys.executable, "-m", "photo_detector", *cmd, "--help"], capture_output=True,
                                 text=True, timeout=120)
            assert out.returncode == 0, f"`photo-detector {match.group(1)}` is not a command: {out.stderr}"
