"""The Cloud Run rollout against a run_v2 REST fake, smoke-testing a real service on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import FakeCloudRun, FakeDockerRegistry
from serving_helpers import running

from photo_detector.cloud.rollout import rollout
from photo_detector.cloud.run_service import model_version
from photo_detector.cloud.settings import resolve
from photo_detector.config import load_config
from photo_detector.serving.app import create_app
from photo_detector.serving.auth import KeyChecker, hash_key
from photo_detector.smoke import SmokeTestFailed

KEY = "smoke-key"
SERVICE = "projects/proj/locations/europe-west4/services/detector"
DIGEST = "sha256:" + "ab" * 32
SERVE_IMAGE = "europe-west4-docker.pkg.dev/proj/photo-detector-images/serve:c0ffee1"  # what the build produced


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCloudRun]:
    run, registry = FakeCloudRun(), FakeDockerRegistry()
    registry.digests["proj/photo-detector-images/serve:c0ffee1"] = DIGEST
    registry.digests["proj/photo-detector-images/serve:0.1.0"] = DIGEST  # the CLI's: derived from --project
    run_server, run_url = run.serve()
    reg_server, reg_url = registry.serve()
    monkeypatch.setenv("PHOTO_DETECTOR_RUN_ENDPOINT", run_url)
    monkeypatch.setenv("PHOTO_DETECTOR_DOCKER_REGISTRY_ENDPOINT", reg_url)
    monkeypatch.setenv("PHOTO_DETECTOR_RETRY_BACKOFF", "0")
    yield run
    run_server.shutdown()
    reg_server.shutdown()


@pytest.fixture(scope="module")
def good_service(smoke_model: Path) -> Iterator[str]:
    with running(create_app(str(smoke_model), load_config(), KeyChecker([hash_key(KEY)]))) as url:
        yield url


@pytest.fixture(scope="module")
def other_model_service(trained_dir: Path) -> Iterator[str]:
    """A healthy service, but with another model: the smoke test must notice."""
    with running(create_app(str(trained_dir), load_config(), KeyChecker([hash_key(KEY)]))) as url:
        yield url


def cfg():
    return load_config(None, {"deploy.service_name": "detector", "deploy.region": "europe-west4",
                              "deploy.project": "proj"})


def settings():
    return resolve(cfg())


def roll(model: Path, uri: str, **kwargs):
    return rollout(model, uri, cfg(), settings(), serve_image=SERVE_IMAGE, api_key=KEY, **kwargs)


def existing(run: FakeCloudRun, revision: str = "detector-old") -> None:
    run.state["services"] = {SERVICE: {
        "name": SERVICE, "uri": "https://detector-x.a.run.app", "revisions": [revision],
        "latestReadyRevision": f"{SERVICE}/revisions/{revision}",
        "latestCreatedRevision": f"{SERVICE}/revisions/{revision}",
        "template": {"revision": revision, "containers": [{"image": "old@sha256:00"}]},
        "traffic": [{"type": 2, "revision": revision, "percent": 100}],
        "trafficStatuses": [{"type": 2, "revision": revision, "percent": 100}]}}


def live_traffic(run: FakeCloudRun) -> list[dict]:
    return [{k: t[k] for k in ("revision", "percent")} for t in run.state["services"][SERVICE]["traffic"]
            if t.get("percent")]


def test_first_rollout_creates_the_service_by_digest_then_moves_traffic(cloud, smoke_model, good_service) -> None:
    cloud.tag_url = good_service
    res = roll(smoke_model, "gs://bucket/models/m1", smoke_ready_timeout=10)
    version = model_version(smoke_model)
    assert [(r.method, r.path) for r in cloud.requests] == [("GET", f"/v2/{SERVICE}")] + [
        ("PATCH", f"/v2/{SERVICE}")] * 2
    create = cloud.requests[1]
    assert create.query["allowMissing"] == ["true"]
    container = create.body["template"]["containers"][0]
    assert container["image"] == f"europe-west4-docker.pkg.dev/proj/photo-detector-images/serve@{DIGEST}"
    assert {"name": "PHOTO_DETECTOR_MODEL_URI", "value": "gs://bucket/models/m1"} in container["env"]
    assert create.body["template"]["revision"] == f"detector-{version}"
    assert create.body["traffic"][0]["tag"] == version
    assert cloud.requests[2].body["traffic"] == [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION",
                                                   "revision": f"detector-{version}", "percent": 100}] or \
        cloud.requests[2].body["traffic"] == [{"type": 2, "revision": f"detector-{version}", "percent": 100}]
    assert res.changed and res.previous_revision is None and res.revision == f"detector-{version}"
    assert res.url == "https://detector-x.a.run.app" and any("known real image" in c for c in res.smoke_checks)


def test_update_tags_a_zero_traffic_candidate_smoke_tests_it_then_moves_traffic(cloud, smoke_model,
                                                                                 good_service) -> None:
    existing(cloud)
    cloud.tag_url = good_service
    res = roll(smoke_model, "gs://bucket/m", smoke_ready_timeout=10)
    first = cloud.calls("PATCH")[0].body["traffic"]
    assert [(t["revision"], t.get("percent", 0)) for t in first] == [("detector-old", 100), (res.revision, 0)]
    assert live_traffic(cloud) == [{"revision": res.revision, "percent": 100}]
    assert res.previous_revision == "detector-old"


def test_same_model_again_creates_no_revision(cloud, smoke_model, good_service) -> None:
    cloud.tag_url = good_service
    first = roll(smoke_model, "gs://bucket/m", smoke_ready_timeout=10)
    n = len(cloud.requests)
    again = roll(smoke_model, "gs://bucket/m", smoke_ready_timeout=10)
    assert not again.changed and again.revision == first.revision
    assert [r.method for r in cloud.requests[n:]] == ["GET"]
    assert cloud.state["services"][SERVICE]["revisions"] == [first.revision]


def test_failed_smoke_test_leaves_traffic_where_it_was(cloud, smoke_model, other_model_service) -> None:
    existing(cloud)
    cloud.tag_url = other_model_service
    with pytest.raises(SmokeTestFailed) as err:
        roll(smoke_model, "gs://bucket/m", smoke_ready_timeout=10)
    assert "known" in str(err.value) and "no traffic" in str(err.value)
    assert len(cloud.calls("PATCH")) == 1, "traffic was never moved"
    assert live_traffic(cloud) == [{"revision": "detector-old", "percent": 100}]


def test_failed_smoke_test_on_a_first_deploy_removes_the_service(cloud, smoke_model, other_model_service) -> None:
    """No earlier revision can keep the traffic: the unverified one had it all, so the service goes."""
    cloud.tag_url = other_model_service
    with pytest.raises(SmokeTestFailed, match="first deploy .* the service was removed"):
        roll(smoke_model, "gs://bucket/m", smoke_ready_timeout=10)
    assert [r.method for r in cloud.requests] == ["GET", "PATCH", "DELETE"]
    assert SERVICE not in cloud.state["services"]


def test_candidate_that_accepts_requests_without_a_key_fails(cloud, smoke_model) -> None:
    existing(cloud)
    with running(create_app(str(smoke_model), load_config(), KeyChecker([], allow_all=True))) as url:
        cloud.tag_url = url
        with pytest.raises(SmokeTestFailed, match="without a key answered 200"):
            roll(smoke_model, "gs://bucket/m", smoke_ready_timeout=10)
    assert live_traffic(cloud) == [{"revision": "detector-old", "percent": 100}]


def test_unreachable_candidate_fails_with_the_reason(cloud, smoke_model) -> None:
    existing(cloud)
    cloud.tag_url = "http://127.0.0.1:9"
    with pytest.raises(SmokeTestFailed, match="unreachable"):
        roll(smoke_model, "gs://bucket/m", smoke_ready_timeout=1)
    assert live_traffic(cloud) == [{"revision": "detector-old", "percent": 100}]


def test_api_errors_are_clear_and_quota_is_retried(cloud, smoke_model, good_service) -> None:
    cloud.tag_url = good_service
    cloud.fail("PATCH", r"/services/", 429, times=1)
    res = roll(smoke_model, "gs://bucket/m", smoke_ready_timeout=10)
    assert res.changed and len(cloud.calls("PATCH")) == 3
    cloud.fail("GET", r"/services/", 403, times=1)
    with pytest.raises(Exception, match="HTTP 403"):
        roll(smoke_model, "gs://bucket/m")


def test_deploy_cli_uploads_a_local_model_and_rolls_it_out(cloud, smoke_model, good_service, tmp_path) -> None:
    from fakes import fake_gcs
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    cloud.tag_url = good_service
    with fake_gcs():
        gcs = storage.Client(project="proj", credentials=AnonymousCredentials())
        gcs.create_bucket("runs")
        out = subprocess.run(
            [sys.executable, "-m", "photo_detector", "deploy", "--model", str(smoke_model), "--service", "detector",
             "--region", "europe-west4", "--project", "proj", "--pipeline-root", "gs://runs/root"],
            capture_output=True, text=True, timeout=180, env={**os.environ, "PHOTO_DETECTOR_SMOKE_API_KEY": KEY})
        assert out.returncode == 0, out.stderr
        version = model_version(smoke_model)
        uploaded = {b.name for b in gcs.list_blobs("runs", prefix=f"root/models/{version}/")}
    assert f"root/models/{version}/model.onnx" in uploaded and f"root/models/{version}/smoke/real.png" in uploaded
    env = {e["name"]: e.get("value") for e in cloud.calls("PATCH")[0].body["template"]["containers"][0]["env"]}
    assert env["PHOTO_DETECTOR_MODEL_URI"] == f"gs://runs/root/models/{version}"
    assert "now has 100% of traffic" in out.stdout


def test_deploy_local_runs_the_same_smoke_test(smoke_model: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "photo_detector", "deploy", "--model", str(smoke_model), "--local"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "smoke test passed" in out.stdout and "known ai_generated image -> ai_generated" in out.stdout


def test_deploy_dry_run_plan_is_a_valid_run_v2_service(smoke_model: Path, tmp_path: Path) -> None:
    from google.cloud import run_v2

    plan = tmp_path / "plan.json"
    out = subprocess.run([sys.executable, "-m", "photo_detector", "deploy", "--model", str(smoke_model), "--dry-run",
                          "--plan", str(plan), "--project", "proj"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    body = json.loads(plan.read_text())
    run_v2.Service.from_json(json.dumps(body["service"]))  # strict: unknown fields would raise
    assert body["name"] == "projects/proj/locations/us-central1/services/photo-detector"


def test_deploy_stage_rolls_out_then_registers_the_champion(cloud, smoke_model, smoke_data, good_service, tmp_path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from fakes import FakeVertex
    from kfp import dsl

    from photo_detector import stages

    vertex = FakeVertex()
    server, url = vertex.serve()
    monkeypatch.setenv("PHOTO_DETECTOR_VERTEX_ENDPOINT", url)
    monkeypatch.setenv("PHOTO_DETECTOR_SMOKE_API_KEY", KEY)
    cloud.tag_url = good_service
    try:
        # As on Vertex: the artifact lives in Cloud Storage (uri) and is read through its local mount (path).
        model = SimpleNamespace(uri="gs://runs/root/train/model", path=str(smoke_model), metadata={})
        metrics = dsl.Metrics(uri=str(tmp_path / "metrics"), metadata={"accuracy": 0.91, "f1": 0.9})
        deployment = dsl.Artifact(uri=str(tmp_path / "deployment"))
        from photo_detector.config import load_config
        from photo_detector.evaluate import run_evaluate

        evaluation = dsl.Artifact(uri=str(tmp_path / "evaluation"))
        evaluated = run_evaluate(smoke_model, smoke_data, out_dir=evaluation.path,
                                 cfg=load_config(None, {"evaluate.perturbations": ["jpeg_q75", "webp_q80"]}))
        stages.deploy(model, metrics, deployment, serve_image=SERVE_IMAGE, dry_run=False, evaluation=evaluation,
                      pipeline_run="photo-detector-training-7",
                      config_overrides={"gcp.region": "europe-west4"}, service_name="detector",
                      region="europe-west4", project="proj")
    finally:
        server.shutdown()
    meta = deployment.metadata
    assert meta["changed"] is True and meta["revision"].startswith("detector-m-") and meta["url"]
    upload = vertex.calls("POST", r"models:upload$")[0].body["model"]
    assert upload["artifactUri"] == "gs://runs/root/train/model"
    assert upload["containerSpec"]["imageUri"] == SERVE_IMAGE.rsplit(":", 1)[0] + f"@{DIGEST}"
    assert upload["labels"]["pipeline_run"] == "photo-detector-training-7"
    assert json.loads(upload["versionDescription"])["metrics"] == {"accuracy": 0.91, "f1": 0.9}
    assert meta["registry_version"] == "1"
    # The evaluation the gate passed is on that version: the console's Evaluate tab shows it.
    (imported,) = vertex.calls("POST", r"evaluations:import$")
    assert imported.path.replace("%40", "@").endswith(f"{meta['registry_model']}@1/evaluations:import")
    body = imported.body["modelEvaluation"]
    assert body["metricsSchemaUri"].endswith("/modelevaluation/classification_metrics_1.0.0.yaml")
    assert body["metrics"]["auRoc"] == pytest.approx(evaluated.roc_auc)
    assert body["metrics"]["confusionMatrix"]["rows"] == evaluated.confusion_matrix
    steps = [p["confidenceThreshold"] for p in body["metrics"]["confidenceMetrics"]]
    assert steps[0] == 0.0 and steps[-1] == 0.99 and len(steps) == 24
    assert body["metadata"]["pipeline_job_id"] == "photo-detector-training-7"
    assert set(body["metadata"]["robustness"]) == {"clean", "jpeg_q75", "webp_q80"}
    assert meta["registry_evaluation"].endswith("/evaluations/1")
