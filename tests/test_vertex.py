"""submit and template upload against local stand-ins: what reached the wire, and how API errors read."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli
from fakes import FakeKfpRegistry, FakeVertex

from photo_detector.cloud.settings import resolve
from photo_detector.cloud.vertex import parse_parameters, unique_job_id
from photo_detector.config import load_config
from photo_detector.errors import PhotoDetectorError
from photo_detector.pipelines.compile import DEFAULT_OUTPUT, load_spec

ROOT = Path(__file__).resolve().parents[1]
COMPILED = ROOT / DEFAULT_OUTPUT


@pytest.fixture
def gcs() -> Iterator[str]:
    from fakes import fake_gcs
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    with fake_gcs() as server:
        import os

        storage.Client(project="proj", credentials=AnonymousCredentials()).create_bucket("runs-bucket")
        yield os.environ["STORAGE_EMULATOR_HOST"]
        del server


@pytest.fixture
def vertex() -> Iterator[tuple[FakeVertex, str]]:
    api = FakeVertex()
    server, url = api.serve()
    yield api, url
    server.shutdown()


@pytest.fixture
def registry() -> Iterator[tuple[FakeKfpRegistry, str]]:
    api = FakeKfpRegistry()
    server, url = api.serve()
    yield api, url
    server.shutdown()


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI (in process); submit and schedule create skip doctor's preflight here (tests/test_project.py
    tests it): these tests are about what reaches the Vertex API."""
    if args[:1] == ("submit",) or args[:2] == ("schedule", "create"):
        args = (*args, "--skip-checks")
    return run_cli(*args, env=env)


def cloud_env(gcs: str, vertex_url: str = "", registry_url: str = "") -> dict[str, str]:
    env = {"STORAGE_EMULATOR_HOST": gcs, "PHOTO_DETECTOR_PROJECT": "proj", "PHOTO_DETECTOR_REGION": "europe-west4",
           "PHOTO_DETECTOR_PIPELINE_ROOT": "gs://runs-bucket/root"}
    if vertex_url:
        env["PHOTO_DETECTOR_VERTEX_ENDPOINT"] = vertex_url
    if registry_url:
        env["PHOTO_DETECTOR_ARTIFACT_REGISTRY_ENDPOINT"] = registry_url
    return env


def test_parameters_are_typed_and_checked_against_the_spec() -> None:
    spec = load_spec(COMPILED)
    values = parse_parameters(spec, ["epochs=3", "learning_rate=0.01", "auto_deploy=false", "data_uri=gs://b/d",
                                     'config_overrides={"train.warmup_epochs": 0}'])
    assert values == {"epochs": 3, "learning_rate": 0.01, "auto_deploy": False, "data_uri": "gs://b/d",
                      "config_overrides": {"train.warmup_epochs": 0}}
    with pytest.raises(PhotoDetectorError, match="'epochs' must be an integer"):
        parse_parameters(spec, ["epochs=three"])
    with pytest.raises(PhotoDetectorError, match="no parameter 'epoch'.*valid parameters: .*epochs"):
        parse_parameters(spec, ["epoch=3"])


def test_gpus_alone_sizes_the_train_machine_and_counts_are_checked() -> None:
    spec = load_spec(COMPILED)
    assert parse_parameters(spec, ["gpus=2"]) == {"gpus": 2, "train_cpu": "8", "train_memory": "30G"}
    assert parse_parameters(spec, ["gpus=4", "train_cpu=32"]) == {"gpus": 4, "train_cpu": "32",
                                                                   "train_memory": "60G"}
    with pytest.raises(PhotoDetectorError, match=r"'gpus' is 3, but a machine takes 1, 2, 4 NVIDIA_TESLA_T4.*"
                                                 r"--param gpus=2"):
        parse_parameters(spec, ["gpus=3"])


def test_job_ids_are_unique_within_a_second() -> None:
    ids = {unique_job_id("photo-detector-training") for _ in range(50)}
    assert len(ids) == 50 and all(i.startswith("photo-detector-training-") for i in ids)


def test_missing_setting_names_the_flag_and_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PHOTO_DETECTOR_PROJECT", raising=False)
    with pytest.raises(PhotoDetectorError, match="--project, set PHOTO_DETECTOR_PROJECT"):
        resolve(load_config()).require("project")


def test_flags_override_environment_override_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHOTO_DETECTOR_REGION", "asia-east1")
    cfg = load_config(None, {"gcp.region": "us-east1", "gcp.project": "from-config"})
    s = resolve(cfg, {"project": None, "region": None})
    assert (s.project, s.region) == ("from-config", "asia-east1")
    assert resolve(cfg, {"region": "europe-west1"}).region == "europe-west1"


def test_submit_sends_the_spec_parameters_and_labels_and_follows_the_run(gcs: str, vertex) -> None:
    api, url = vertex
    out = cli("submit", "--param", "epochs=3", "--param", "min_f1=0.75", "--label", "team=vision",
              "--caching", "off", "--sync", "--poll-seconds", "0.01", env=cloud_env(gcs, url))
    assert out.returncode == 0, out.stderr
    create = api.calls("POST", r"/pipelineJobs$")
    assert len(create) == 1
    req = create[0]
    assert req.path == "/v1/projects/proj/locations/europe-west4/pipelineJobs"
    job_id = req.query["pipelineJobId"][0]
    assert job_id.startswith("photo-detector-training-")
    body = req.body
    assert body["displayName"] == "photo-detector-training"
    assert body["runtimeConfig"]["gcsOutputDirectory"] == "gs://runs-bucket/root"
    assert body["runtimeConfig"]["parameterValues"]["epochs"] == 3
    assert body["runtimeConfig"]["parameterValues"]["min_f1"] == 0.75
    assert body["labels"]["team"] == "vision" and body["labels"]["app"] == "photo-detector"
    assert body["pipelineSpec"]["root"]["dag"]["tasks"]["train"]["cachingOptions"] == {"enableCache": False}
    assert "state: PIPELINE_STATE_RUNNING" in out.stdout and "finished: PIPELINE_STATE_SUCCEEDED" in out.stdout
    assert f"pipelines/runs/{job_id}?project=proj" in out.stdout


def test_failed_run_gives_a_non_zero_exit(gcs: str, vertex) -> None:
    api, url = vertex
    api.final_state = "PIPELINE_STATE_FAILED"
    out = cli("submit", "--sync", "--poll-seconds", "0.01", env=cloud_env(gcs, url))
    assert out.returncode == 1 and "finished: PIPELINE_STATE_FAILED" in out.stdout
    # the failed task's own error: a rejected model's reasons reach the person who submitted
    assert "quality-gate: error in stage quality-gate: the quality gate rejected the model: accuracy 0.8100" \
        in out.stdout


def test_quota_errors_are_retried_then_succeed(gcs: str, vertex) -> None:
    api, url = vertex
    api.fail("POST", r"/pipelineJobs$", 429, times=1)
    out = cli("submit", env={**cloud_env(gcs, url), "PHOTO_DETECTOR_RETRY_BACKOFF": "0"})
    assert out.returncode == 0, out.stderr
    assert len(api.calls("POST", r"/pipelineJobs$")) == 2


@pytest.mark.parametrize(("status", "needle"), [(403, "roles/aiplatform.user"), (404, "check the project"),
                                                (409, "already exists")])
def test_api_errors_read_clearly_and_nothing_is_retried(gcs: str, vertex, status: int, needle: str) -> None:
    api, url = vertex
    api.fail("POST", r"/pipelineJobs$", status, times=5)
    out = cli("submit", env=cloud_env(gcs, url))
    assert out.returncode == 2 and out.stderr.startswith("error: submitting ") and needle in out.stderr
    assert f"HTTP {status}" in out.stderr and "Traceback" not in out.stderr
    assert len(api.calls("POST", r"/pipelineJobs$")) == 1


def test_missing_pipeline_root_bucket_is_caught_before_sending(gcs: str, vertex) -> None:
    api, url = vertex
    out = cli("submit", "--pipeline-root", "gs://no-such-bucket/x", env=cloud_env(gcs, url))
    assert out.returncode == 2 and "gs://no-such-bucket does not exist" in out.stderr
    assert api.calls("POST") == []


def test_unknown_parameter_fails_before_anything_is_sent(gcs: str, vertex) -> None:
    api, url = vertex
    out = cli("submit", "--param", "epoch=3", env=cloud_env(gcs, url))
    assert out.returncode == 2 and "no parameter 'epoch'" in out.stderr and api.requests == []


def test_template_upload_with_tags_then_submit_by_name_and_tag(gcs: str, vertex, registry) -> None:
    reg, reg_url = registry
    api, url = vertex
    env = cloud_env(gcs, url, reg_url)
    up = cli("template", "upload", str(COMPILED), "--tag", "abc123", "--tag", "latest", env=env)
    assert up.returncode == 0, up.stderr
    post = reg.calls("POST")[0]
    assert post.path == "/proj/photo-detector-pipelines"  # the KFP repository, not the Docker one
    assert post.body["tags"] == "abc123,latest" and post.body["content"] == COMPILED.read_bytes()
    out = cli("submit", "--template", "photo-detector-training:abc123", "--param", "epochs=2", env=env)
    assert out.returncode == 0, out.stderr
    assert reg.calls("GET")[0].path == "/proj/photo-detector-pipelines/photo-detector-training/abc123"
    body = api.calls("POST", r"/pipelineJobs$")[0].body
    assert body["runtimeConfig"]["parameterValues"]["epochs"] == 2
    missing = cli("submit", "--template", "photo-detector-training:nope", env=env)
    assert missing.returncode == 2 and "HTTP 404" in missing.stderr


def test_compiled_spec_default_template_path_is_the_checked_in_file(gcs: str, vertex) -> None:
    api, url = vertex
    out = cli("submit", env=cloud_env(gcs, url))
    assert out.returncode == 0, out.stderr
    sent = api.calls("POST", r"/pipelineJobs$")[0].body["pipelineSpec"]
    assert sent["pipelineInfo"] == load_spec(COMPILED)["pipelineInfo"]
    def norm(d: dict) -> dict:  # protobuf Struct turns every number into a double
        return json.loads(json.dumps(d), parse_int=float)

    assert norm(sent["root"]) == norm(load_spec(COMPILED)["root"])


def test_runs_can_be_attached_to_an_experiment(gcs: str, vertex) -> None:
    api, url = vertex
    out = cli("submit", "--job-id", "exp-run-1", "--experiment", "detector-tuning", env=cloud_env(gcs, url))
    assert out.returncode == 0, out.stderr
    experiment = api.state["contexts"]["projects/proj/locations/europe-west4/metadataStores/default/contexts/"
                                       "detector-tuning"]
    assert experiment["schemaTitle"] == "system.Experiment"
    assert experiment["_children"] == [
        "projects/proj/locations/europe-west4/metadataStores/default/contexts/exp-run-1"]
    # The train task learns the experiment from a parameter: it logs each epoch as the run's time series.
    (job,) = api.state["jobs"].values()
    assert job["runtimeConfig"]["parameterValues"]["experiment"] == "detector-tuning"


def test_server_errors_are_retried_and_a_persistent_one_reads_clearly(gcs: str, vertex) -> None:
    api, url = vertex
    env = {**cloud_env(gcs, url), "PHOTO_DETECTOR_RETRY_BACKOFF": "0"}
    api.fail("POST", r"/pipelineJobs$", 503, times=2)
    assert cli("submit", env=env).returncode == 0
    assert len(api.calls("POST", r"/pipelineJobs$")) == 3
    api.fail("POST", r"/pipelineJobs$", 500, times=10)
    out = cli("submit", env=env)
    assert out.returncode == 2 and "HTTP 500" in out.stderr and "Traceback" not in out.stderr
    assert len(api.calls("POST", r"/pipelineJobs$")) == 3 + 4, "four attempts, then a clear error"
    assert len(api.state["jobs"]) == 1, "nothing half-created by the failed submit"
