"""The six images built by Docker from the real Dockerfiles and run as Vertex AI and Cloud Run run them.

Builds each image from the repository root exactly as cloudbuild.yaml does (`docker build -f
images/<image>/Dockerfile .`, tagged with the names the compiled spec uses), then:
- runs the five stages as the compiled spec's own `command`/`args` in each stage's image, chained on sample
  data by tools/rehearse_images.py's chaining (the same executor inputs and checks), with a bind-mounted folder
  standing for the /gcs/ Cloud Storage FUSE mount: artifact URIs are gs:// URIs that the KFP executor maps to
  /gcs/..., and the stages write there as the image's own user (root). Behind that mount, for the train
  stage, fake-gcs-server holds the same files as the bucket: train stages its shards from /gcs/ through the
  storage client (data.staging), as on Vertex AI, so the image's client and the path rule are exercised;
- checks every artifact file is readable by others (0644, folders 0755, under the containers' 0022 umask);
- starts the serve image on the model trained in the train image, mounted read-only, as Cloud Run (PORT) and
  as Vertex AI (AIP_*) start it, as uid 10001 with a read-only root filesystem and a tmpfs /tmp;
- checks that only train holds torch, and that it is the CUDA build its Dockerfile pins.

Needs a Docker daemon. In CI (`CI=true`; .ci/run installs docker.io and starts dockerd) a missing daemon fails
this module with one line; elsewhere it skips. The base image comes from tools/base_image.py (pulled, or a
Debian stand-in where Docker Hub cannot be reached; cached by tag). Not covered here: the GPU (no GPU on these
machines) and the real /gcs/ FUSE mount (a bind mount stands in for it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location("rehearse_images", ROOT / "tools" / "rehearse_images.py")
rehearsal = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules["rehearse_images"] = rehearsal
_spec.loader.exec_module(rehearsal)  # type: ignore[union-attr]

GCS_BUCKET = "rehearsal"  # the host work folder is mounted at /gcs/rehearsal, as gs://rehearsal would be
BUILD_TIMEOUT_S = 1800  # the train image downloads CUDA torch (several GB) on a cold cache


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} ... exited {res.returncode}: {res.stderr[-3000:]}")
    return res


def need_docker() -> None:
    why = None
    if shutil.which("docker") is None:
        why = "the docker CLI is missing (apt-get install -y docker.io)"
    else:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                              timeout=60, check=False)
        if info.returncode != 0:
            why = f"no Docker daemon answers ({(info.stderr.strip().splitlines() or ['?'])[-1]})"
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"cannot build or run the images in CI: {why}; .ci/run starts dockerd as root", pytrace=False)
    pytest.skip(f"{why}: the images are built and run only where Docker runs (CI starts it)")


def image_refs() -> dict[str, str]:
    """Image name (verify, train, ..., serve) -> the reference the compiled spec uses for it."""
    spec = rehearsal.load_spec()
    refs = {}
    for executor in spec["deploymentSpec"]["executors"].values():
        if "container" not in executor:  # the importer
            continue
        ref = executor["container"]["image"]
        refs[ref.rsplit("/", 1)[-1].split(":")[0]] = ref
    serve = re.search(r"constant: (\S+/serve:\S+)", rehearsal.SPEC.read_text(encoding="utf-8"))
    assert serve, "the compiled spec names no serve image for the deploy task"
    refs["serve"] = serve.group(1)
    assert sorted(refs) == sorted(rehearsal.IMAGES), refs
    return refs


def local_tag(ref: str) -> str:
    """The spec's reference as a local tag: Docker wants lowercase (the spec's default project is PROJECT_ID)."""
    return ref.lower()


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    """Build the six images (docker's cache makes a rebuild of an unchanged tree take seconds)."""
    need_docker()
    base = subprocess.run([sys.executable, str(ROOT / "tools" / "base_image.py")], capture_output=True, text=True,
                          timeout=900, check=False)
    assert base.returncode == 0, f"tools/base_image.py failed: {base.stdout[-2000:]}{base.stderr[-2000:]}"
    refs = image_refs()
    for image, ref in refs.items():
        start = time.perf_counter()
        res = docker("build", "-f", f"images/{image}/Dockerfile", "-t", local_tag(ref), str(ROOT),
                     timeout=BUILD_TIMEOUT_S, check=False)
        assert res.returncode == 0, f"docker build of images/{image}/Dockerfile failed:\n{res.stdout[-4000:]}" \
                                    f"{res.stderr[-2000:]}"
        size = int(docker("image", "inspect", "--format", "{{.Size}}", local_tag(ref)).stdout)
        print(f"built {image:<8} in {time.perf_counter() - start:6.1f}s: {size / 1e6:7.0f} MB  {ref}")
    return refs


def test_only_train_holds_torch_and_it_is_the_cuda_build_its_dockerfile_pins(images: dict[str, str]) -> None:
    probe = ("import importlib.util as u, json; t = u.find_spec('torch'); v = None\n"
             "if t:\n import torch; v = [torch.__version__, torch.version.cuda]\nprint(json.dumps(v))")
    found = {image: json.loads(docker("run", "--rm", "--network", "none", "--entrypoint", "python", local_tag(ref),
                                      "-c", probe).stdout) for image, ref in images.items()}
    print(f"torch per image: {found}")
    assert {image: v is not None for image, v in found.items()} == {i: i == "train" for i in images}
    pin = re.search(r"\btorch==([\w.]+)", (ROOT / "images" / "train" / "Dockerfile").read_text()).group(1)
    version, cuda = found["train"]
    assert version.split("+")[0] == pin and "+cpu" not in version, f"train has torch {version}, pinned {pin}"
    assert cuda is not None and cuda.startswith("13."), \
        f"train's torch is built for CUDA {cuda}; the Dockerfile says its CUDA 13 runtime comes from PyPI"


def docker_runner(ref: str, work: Path, names: list[str], emulator: str | None = None) -> Any:
    """Run a task's spec command in its image, as Vertex would: the image's own user, the spec's command in
    place of the entrypoint, artifact URIs gs://rehearsal/... (the executor maps them to /gcs/rehearsal/...).
    With `emulator` (fake-gcs-server's URL) the work folder is copied into its bucket first and the container
    reaches it (host network): the bucket behind /gcs/rehearsal. Otherwise no network at all."""
    host = str(work)

    def to_container(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: to_container(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [to_container(v) for v in value]
        if isinstance(value, str) and (value == host or value.startswith(host + "/")):
            rel = value[len(host):]
            return f"gs://{GCS_BUCKET}{rel}" if key == "uri" else f"/gcs/{GCS_BUCKET}{rel}"
        return value

    def run_in_image(container: dict[str, Any], payload: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        assert container["image"] == ref
        argv = rehearsal.spec_argv(container, to_container(payload))
        name = f"pd-test-{os.getpid()}-{len(names)}"
        names.append(name)
        network = ["--network", "none"]
        if emulator:
            from photo_detector.cloud.gcs import upload_folder

            upload_folder(work, f"gs://{GCS_BUCKET}")
            network = ["--network", "host", "-e", f"STORAGE_EMULATOR_HOST={emulator}"]
        return docker("run", "--rm", "--name", name, *network, "-v", f"{host}:/gcs/{GCS_BUCKET}",
                      "--entrypoint", argv[0], local_tag(ref), *argv[1:], timeout=900, check=False)
    return run_in_image


@pytest.fixture(scope="module")
def chain(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path, Path]]:
    from fakes import fake_gcs

    with fake_gcs() as server:  # the bucket behind /gcs/rehearsal for the train stage (docker_runner)
        yield from _chain(images, tmp_path_factory, server.url)


def _chain(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory,
           emulator: str) -> Iterator[tuple[Any, Path, Path]]:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from photo_detector.data.sample import generate_sample

    work = tmp_path_factory.mktemp("docker-chain")
    (work / "logs").mkdir()
    data = generate_sample(work / "data", per_class=30, size=40, seed=7).root
    report, names = rehearsal.Report(), []
    storage.Client(project="p", credentials=AnonymousCredentials()).create_bucket(GCS_BUCKET)
    runners = {image: docker_runner(ref, work, names, emulator if image == "train" else None)
               for image, ref in images.items() if image != "serve"}
    try:
        start = time.perf_counter()
        model = rehearsal.rehearse_pipeline(runners, work, data, report)
        print(f"stage chain in the images: {time.perf_counter() - start:.0f}s "
              "(" + ", ".join(f"{k} {v['seconds']}s" for k, v in report.stages.items()) + ")")
        yield report, work, model
    finally:
        for name in names:
            docker("rm", "-f", name, check=False)


def test_the_stage_images_run_the_spec_commands_chained(chain: tuple[Any, Path, Path]) -> None:
    report, work, model = chain
    logs = {p.name: p.read_text()[-1500:] for p in (work / "logs").glob("*.log")}
    assert report.failures == [], f"{report.failures}\nlogs: {logs}"
    assert list(report.stages) == list(rehearsal.TASK_IMAGE)
    assert report.stages["quality-gate"]["parameters"] == {"Output": True}
    assert all(v["image"].startswith("us-central1-docker.pkg.dev/") for v in report.stages.values())
    plan = json.loads((work / "pipeline-root" / "deploy" / "deployment").read_text())
    assert plan["dry_run"] is True and plan["service"]["template"]["containers"][0]["image"].endswith(
        "/serve:" + image_refs()["serve"].rsplit(":", 1)[-1])
    assert (model / "model.onnx").is_file()
    # The train stage found its data under /gcs/ and staged the shards through the storage client.
    train_log = (work / "logs" / "train.log").read_text()
    assert "streamed from shards staged to" in train_log and re.search(r"staged [\d.]+ MiB of shards", train_log)


def test_every_artifact_the_stages_write_is_readable_by_others(chain: tuple[Any, Path, Path]) -> None:
    """Written as the stage image's own user (root) under the container's default umask 0022: every file
    0644 and folder 0755. (Atomic writes used to leave model.json, best.pt, manifest.json, ... at 0600.)"""
    report, work, _ = chain
    assert report.failures == [], report.failures
    root = work / "pipeline-root"
    files = [p for p in root.rglob("*") if p.is_file()]
    assert len(files) > 20 and {"model.json", "model.onnx", "manifest.json"} <= {p.name for p in files}
    assert {p.stat().st_uid for p in files} == {0}, "the stage images run as root, and wrote as root"
    modes = rehearsal.Report()
    rehearsal.check_modes(root, 0o022, modes)
    assert modes.failures == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def png_of(work: Path) -> bytes:
    return next((work / "data" / "test" / "ai_generated").iterdir()).read_bytes()


@pytest.mark.parametrize("platform", ["cloud-run", "vertex"])
def test_the_serve_image_answers_as_uid_10001_on_a_read_only_root(platform: str, images: dict[str, str],
                                                                  chain: tuple[Any, Path, Path]) -> None:
    _, work, model = chain
    assert model is not None, "the stage chain trained no model"
    key, port = "docker-test-key", free_port()
    env = {"PHOTO_DETECTOR_API_KEY_HASHES": "sha256:" + hashlib.sha256(key.encode()).hexdigest()}
    health, predict = "/health", None
    if platform == "cloud-run":  # Cloud Run sets PORT; the deploy stage passes the model URI
        env.update(PORT="8080", PHOTO_DETECTOR_MODEL_URI="/model", K_SERVICE="photo-detector")
    else:  # Vertex AI prediction containers get AIP_*; AIP_STORAGE_URI is the model folder
        health, predict = "/v1/endpoints/1/deployedModels/2", "/v1/endpoints/1/deployedModels/2:predict"
        env.update(AIP_HTTP_PORT="8080", AIP_HEALTH_ROUTE=health, AIP_PREDICT_ROUTE=predict, AIP_STORAGE_URI="/model")
    name = f"pd-test-{os.getpid()}-serve-{platform}"
    start = time.perf_counter()
    docker("run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", "-p", f"127.0.0.1:{port}:8080",
           "-v", f"{model}:/model:ro", *(a for k, v in env.items() for a in ("-e", f"{k}={v}")),
           local_tag(images["serve"]))
    base = f"http://127.0.0.1:{port}"
    try:
        status, deadline = None, time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                status = httpx.get(base + health, timeout=2).status_code
                if status == 200:
                    break
            except httpx.HTTPError:
                pass
            running = docker("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
            assert running == "true", f"the serve container exited: {docker('logs', name).stderr[-3000:]}"
            time.sleep(0.1)
        cold_start = time.perf_counter() - start
        assert status == 200, f"/health answered {status} for 120s: {docker('logs', name).stderr[-3000:]}"
        image = {"file": ("x.png", png_of(work))}
        assert httpx.post(f"{base}/predict", files=image, timeout=30).status_code == 401
        r = httpx.post(f"{base}/predict", files=image, headers={"X-API-Key": key}, timeout=30)
        assert r.status_code == 200 and r.json()["prediction"] in ("real", "ai_generated"), r.text
        if predict:
            import base64

            r = httpx.post(base + predict, timeout=30,
                           json={"instances": [{"b64": base64.b64encode(png_of(work)).decode()}]})
            assert r.status_code == 200 and len(r.json()["predictions"]) == 1, r.text
        status_lines = docker("exec", name, "cat", "/proc/1/status").stdout  # PID 1: the entrypoint's process
        uids = set(re.findall(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", status_lines, re.M)[0])
        rss_kb = int(re.search(r"^VmRSS:\s+(\d+) kB", status_lines, re.M).group(1))
        assert uids == {"10001"}, f"the service runs as uids {uids}, not 10001 only"
        assert docker("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", name).stdout.strip() == "true"
        assert docker("exec", name, "touch", "/usr/local/x", check=False).returncode != 0, "the root is writable"
        print(f"serve ({platform}): healthy {cold_start:.1f}s after docker run; RSS {rss_kb / 1024:.0f} MiB")
    finally:
        docker("rm", "-f", name, check=False)
