"""From an empty project to a green run: `setup` (dry run, then twice), `doctor` (all PASS, then one FAIL per
removed prerequisite), and the preflight of `submit`, against local fakes of every API they call (the official
clients over REST), fake-gcs-server and a Docker registry fake."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli
from fakes import BucketIamFront, FakeDockerRegistry, FakeGoogle, fake_gcs

from photo_detector.cloud.project import ACCOUNTS, APIS, roles_table
from photo_detector.config import load_config
from photo_detector.pipelines.compile import compile_pipeline

ROOT = Path(__file__).resolve().parents[1]
ENDPOINTS = ("SERVICE_USAGE", "ARTIFACT_REGISTRY", "SECRET_MANAGER", "IAM", "RESOURCE_MANAGER", "QUOTAS", "VERTEX")
MUTATING = ("POST", "PATCH", "PUT", "DELETE")


class Project:
    def __init__(self, api: FakeGoogle, registry: FakeDockerRegistry, env: dict[str, str], tmp: Path,
                 iam: BucketIamFront) -> None:
        self.api, self.registry, self.env, self.tmp, self.iam = api, registry, env, tmp, iam

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=self.env)

    def storage(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="proj", credentials=AnonymousCredentials())


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    api, registry = FakeGoogle(), FakeDockerRegistry()
    server, url = api.serve()
    reg_server, reg_url = registry.serve()
    with fake_gcs():
        iam = BucketIamFront(os.environ["STORAGE_EMULATOR_HOST"])  # fake-gcs-server plus bucket IAM policies
        iam_server, iam_url = iam.serve()
        env = {**os.environ, "PHOTO_DETECTOR_PROJECT": "proj", "PHOTO_DETECTOR_REGION": "us-central1",
               "PHOTO_DETECTOR_DOCKER_REGISTRY_ENDPOINT": reg_url, "STORAGE_EMULATOR_HOST": iam_url,
               **{f"PHOTO_DETECTOR_{name}_ENDPOINT": url for name in ENDPOINTS}}
        yield Project(api, registry, env, tmp_path, iam)
        iam_server.shutdown()
    server.shutdown()
    reg_server.shutdown()


def ready(p: Project) -> Path:
    """A set-up project with data uploaded and the spec's images pushed; returns the spec."""
    out = p.cli("setup")
    assert out.returncode == 0, out.stderr
    spec = compile_pipeline(load_config(None, {"images.tag": "c0ffee1"}), p.tmp / "spec.yaml", project="proj")
    for image in ("verify", "train", "evaluate", "gate", "deploy", "serve"):
        p.registry.digests[f"proj/photo-detector-images/{image}:c0ffee1"] = "sha256:" + "ab" * 32
    bucket = p.storage().bucket("proj-photo-detector-data")
    for split in ("train", "val", "test"):
        for cls in ("real", "ai_generated"):
            bucket.blob(f"cifake/{split}/{cls}/0.jpg").upload_from_string(b"x")
    return spec


def test_setup_dry_run_prints_the_plan_and_changes_nothing(project: Project) -> None:
    out = project.cli("setup", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "would enable APIs: " + ", ".join(APIS) in out.stdout
    for line in ("would create data bucket gs://proj-photo-detector-data in us-central1",
                 "would create docker repository photo-detector-images (DOCKER)",
                 "would create kfp repository photo-detector-pipelines (KFP)",
                 "would create secret photo-detector-api-keys",
                 "would create service account photo-detector-pipelines@proj.iam.gserviceaccount.com",
                 "would create Vertex AI TensorBoard photo-detector in us-central1",
                 "would grant on gs://proj-photo-detector-pipelines: roles/storage.objectAdmin to "
                 "photo-detector-pipelines, roles/storage.objectViewer to photo-detector-service",
                 "13 change(s) to make"):
        assert line in out.stdout, line
    assert project.api.calls and not [r for r in project.api.requests if r.method in MUTATING
                                      and not r.path.endswith(":getIamPolicy")]
    assert not list(project.storage().list_buckets())
    assert not project.iam.calls("PUT")


def test_setup_creates_everything_once_and_a_second_run_changes_nothing(project: Project) -> None:
    out = project.cli("setup", "--write-config", str(project.tmp / "gcp.yaml"))
    assert out.returncode == 0, out.stderr
    key = re.search(r"API key \(shown once; only its hash is stored\): (\S+)", out.stdout).group(1)
    st = project.api.state
    assert st["enabled"] == set(APIS)
    from google.cloud.artifactregistry_v1 import Repository

    formats = {r: Repository.Format(int(v["format"])).name for r, v in st["repos"].items()}  # enums travel as ints
    assert [t["displayName"] for t in st["tensorboards"].values()] == ["photo-detector"]
    assert formats == {"photo-detector-images": "DOCKER", "photo-detector-pipelines": "KFP"}
    hashes = st["secrets"]["photo-detector-api-keys"]["versions"][0].decode().split(",")
    smoke = st["secrets"]["photo-detector-smoke-key"]["versions"][0].decode()
    assert hashes == ["sha256:" + hashlib.sha256(k.encode()).hexdigest() for k in (key, smoke)]
    assert key not in str(st), "only the key's hash is stored"
    for acc in ACCOUNTS.values():
        email = f"serviceAccount:{acc.email('proj')}"
        assert all(email in st["bindings"][role] for role in acc.roles), acc.account_id
        for (key, role) in acc.bucket_roles:  # storage roles: on the bucket, never on the project
            bucket = "proj-photo-detector-data" if key == "data bucket" else "proj-photo-detector-pipelines"
            assert email in project.iam.members(bucket, role), (acc.account_id, key, role)
    assert not [r for r in st["bindings"] if r.startswith("roles/storage.")], "no project-wide storage role"
    runtime = f"serviceAccount:{ACCOUNTS['runtime'].email('proj')}"
    assert not [role for b in project.iam.state["policies"]["proj-photo-detector-data"]["bindings"]
                for role in [b["role"]] if runtime in b["members"]], "the service cannot read the data bucket"
    assert {b.name for b in project.storage().list_buckets()} == {"proj-photo-detector-data",
                                                                   "proj-photo-detector-pipelines"}
    written = (project.tmp / "gcp.yaml").read_text()
    assert "pipeline_root: gs://proj-photo-detector-pipelines/root" in written
    assert "service_account: photo-detector-pipelines@proj.iam.gserviceaccount.com" in written

    before = len(project.api.requests)
    again = project.cli("setup")
    assert again.returncode == 0, again.stderr
    assert "nothing to change" in again.stdout and "shown once" not in again.stdout
    assert not [r for r in project.api.requests[before:] if r.method in MUTATING
                and not r.path.endswith((":getIamPolicy", ":testIamPermissions"))]
    assert len(project.iam.calls("PUT", r"/iam$")) == 2, "the second run wrote no bucket policy"


def test_doctor_passes_on_a_ready_project_and_names_each_missing_prerequisite(project: Project) -> None:
    spec = ready(project)
    out = project.cli("doctor", "--template", str(spec))
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert [line.split()[0] for line in lines] == ["PASS"] * 13, out.stdout
    st, gcs = project.api.state, project.storage()

    def fails(*expected: str) -> None:
        res = project.cli("doctor", "--template", str(spec))
        failed = [re.match(r"FAIL\s+(.+?)\s{2,}", line).group(1).strip() for line in res.stdout.splitlines()
                  if line.startswith("FAIL")]
        assert res.returncode == 1 and failed == list(expected), res.stdout
        assert "fix: " in res.stdout and "Traceback" not in res.stdout + res.stderr

    st["enabled"].discard("run.googleapis.com")
    fails("apis")
    st["enabled"].add("run.googleapis.com")
    del st["repos"]["photo-detector-pipelines"]
    fails("repositories")
    st["repos"]["photo-detector-pipelines"] = {"name": "x", "format": "KFP"}
    del project.registry.digests["proj/photo-detector-images/train:c0ffee1"]
    fails("images")
    project.registry.digests["proj/photo-detector-images/train:c0ffee1"] = "sha256:" + "ab" * 32
    st["bindings"]["roles/run.developer"].clear()
    fails("runner roles")
    st["bindings"]["roles/run.developer"].add(f"serviceAccount:{ACCOUNTS['runner'].email('proj')}")
    runtime = f"serviceAccount:{ACCOUNTS['runtime'].email('proj')}"
    st["bindings"]["roles/storage.objectViewer"] = {runtime}  # what setup used to grant: every object
    fails("storage roles")
    flagged = project.cli("doctor", "--template", str(spec)).stdout
    assert ("project-wide: roles/storage.objectViewer for photo-detector-service" in flagged and
            f"gcloud projects remove-iam-policy-binding proj --member {runtime} --role roles/storage.objectViewer"
            in flagged), flagged
    del st["bindings"]["roles/storage.objectViewer"]
    saved_policy = project.iam.state["policies"].pop("proj-photo-detector-pipelines")
    fails("storage roles")
    project.iam.state["policies"]["proj-photo-detector-pipelines"] = saved_policy
    st["caller_permissions"] = {"aiplatform.pipelineJobs.create", "storage.buckets.get"}
    fails("permissions")
    st["caller_permissions"] = None
    st["t4"] = 0
    fails("t4 quota")
    st["t4"] = 1
    two = project.cli("doctor", "--template", str(spec), "--set", "train.gpus=2")  # both T4s at once
    assert two.returncode == 1 and "FAIL  t4 quota         1 T4 GPU(s) for custom training in us-central1 " \
        "(train.gpus is 2)" in two.stdout and "UsPerProjectPerRegion >= 2" in two.stdout, two.stdout
    st["t4"] = 1
    saved_tb = dict(st["tensorboards"])
    st["tensorboards"].clear()
    fails("tensorboard")
    st["tensorboards"].update(saved_tb)
    gcs.bucket("proj-photo-detector-data").blob("cifake/val/real/0.jpg").delete()
    fails("data")
    gcs.bucket("proj-photo-detector-data").blob("cifake/val/real/0.jpg").upload_from_string(b"x")
    saved = st["secrets"].pop("photo-detector-smoke-key")
    fails("secrets")
    st["secrets"]["photo-detector-smoke-key"] = saved
    for blob in gcs.list_blobs("proj-photo-detector-pipelines"):
        blob.delete()
    gcs.bucket("proj-photo-detector-pipelines").delete()
    fails("pipeline bucket", "storage roles")  # a deleted bucket takes its IAM policy with it


def test_submit_refuses_with_the_failing_checks_first(project: Project) -> None:
    spec = ready(project)
    project.storage().bucket("proj-photo-detector-data").blob("cifake/test/ai_generated/0.jpg").delete()
    out = project.cli("submit", "--template", str(spec))
    assert out.returncode == 2 and "preflight checks failed" in out.stderr
    assert "FAIL data: gs://proj-photo-detector-data/cifake lacks test/ai_generated" in out.stderr
    assert "--skip-checks" in out.stderr and not project.api.calls("POST", "pipelineJobs")


def test_doctor_without_network_or_credentials_fails_fast_one_line_each(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PHOTO_DETECTOR_", "GOOGLE_", "CLOUD_ML"))}
    env.update({f"PHOTO_DETECTOR_{name}_ENDPOINT": closed for name in ENDPOINTS},
               STORAGE_EMULATOR_HOST=closed, PHOTO_DETECTOR_PROJECT="proj")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "photo_detector", "doctor"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert time.perf_counter() - start < 30, "seconds, not minutes of client retries"
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr
    checks = [line for line in out.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(checks) == 12 and all(line.startswith("FAIL") for line in checks[1:]), out.stdout
    no_project = subprocess.run([sys.executable, "-m", "photo_detector", "doctor"], capture_output=True, text=True,
                                env={k: v for k, v in env.items() if k != "PHOTO_DETECTOR_PROJECT"}, timeout=120)
    assert no_project.returncode == 1 and no_project.stdout.startswith("FAIL  credentials      no project")


def test_the_readme_renders_the_roles_table_and_every_endpoint_from_code() -> None:
    from photo_detector.cloud.settings import ENDPOINTS

    readme = (ROOT / "README.md").read_text()
    assert roles_table() in readme
    for variable in (*ENDPOINTS.values(), "PHOTO_DETECTOR_DOCKER_REGISTRY_ENDPOINT"):
        assert f"| `{variable}`" in readme, f"{variable} is not in the README's endpoint table"


def test_setup_and_doctor_read_api_errors_clearly(project: Project) -> None:
    """429 is retried, 409 (created meanwhile) is success, 403 is a FAIL line with the fix, never a traceback."""
    project.env["PHOTO_DETECTOR_RETRY_BACKOFF"] = "0"
    project.api.fail("POST", r"/repositories$", 429, times=1)
    project.api.fail("POST", r"/serviceAccounts$", 409, times=1)
    project.iam.fail("PUT", r"/iam$", 429, times=1)
    out = project.cli("setup")
    assert out.returncode == 0, out.stderr
    assert len(project.iam.calls("PUT", r"/iam$")) == 3, "the bucket policy's 429 was retried (two buckets)"
    assert len(project.api.calls("POST", r"/repositories$")) == 3, "the 429 was retried (two repositories)"
    assert len(project.api.state["accounts"]) == 1, "the 409 account counts as there; the other was created"
    project.api.fail("POST", r":getIamPolicy$", 403, times=10)
    doc = project.cli("doctor")
    lines = {line.split()[1]: line for line in doc.stdout.splitlines() if line.startswith("FAIL")}
    assert doc.returncode == 1 and {"secrets", "runner"} <= set(lines), doc.stdout
    assert "HTTP 403" in lines["runner"] and "grant the missing role" in doc.stdout
    assert "Traceback" not in doc.stdout + doc.stderr
    project.iam.fail("GET", r"/iam$", 403, times=10)
    doc = project.cli("doctor")
    storage = next(line for line in doc.stdout.splitlines() if line.startswith("FAIL  storage roles"))
    assert "HTTP 403" in storage or "403" in storage, doc.stdout


@pytest.mark.parametrize("command", [["submit"], ["schedule", "create", "--cron", "0 3 * * 1"]])
def test_a_spec_for_another_project_is_refused_before_any_request_with_both_fixes(project: Project,
                                                                                  command: list[str]) -> None:
    """The checked-in spec names PROJECT_ID (images and data bucket): refused at once, naming what fixes it; a
    spec compiled for another project likewise."""
    other = compile_pipeline(load_config(None, {"images.tag": "c0ffee1"}), project.tmp / "other.yaml",
                             project="other-proj")
    for template in (ROOT / "compiled" / "training_pipeline.yaml", other):
        out = project.cli(*command, "--template", str(template))
        assert out.returncode == 2, out.stdout + out.stderr
        named = "PROJECT_ID" if template != other else "other-proj"
        assert f"was compiled for project {named}, not proj" in out.stderr, out.stderr
        assert "--template photo-detector-training:TAG" in out.stderr
        assert "photo-detector compile --project proj --image-tag TAG" in out.stderr
        assert "Traceback" not in out.stderr
    assert project.api.requests == [], "refused before any request"
