"""Model Registry: versions of one model, the champion alias, and the gate reading the champion back."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fakes import FakeVertex

from photo_detector.cloud.registry import champion_metrics, register_version
from photo_detector.cloud.settings import resolve
from photo_detector.config import load_config


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVertex]:
    api = FakeVertex()
    server, url = api.serve()
    monkeypatch.setenv("PHOTO_DETECTOR_VERTEX_ENDPOINT", url)
    monkeypatch.setenv("PHOTO_DETECTOR_PROJECT", "proj")
    monkeypatch.setenv("PHOTO_DETECTOR_REGION", "europe-west4")
    monkeypatch.setenv("PHOTO_DETECTOR_RETRY_BACKOFF", "0")
    yield api
    server.shutdown()


def register(n: int, acc: float, **overrides: object) -> dict:
    cfg = load_config(None, overrides)
    return register_version(resolve(cfg), cfg, artifact_uri=f"gs://b/run{n}/model", serving_image="r/serve@sha256:ab",
                            metrics={"accuracy": acc, "f1": acc - 0.01}, data_digest="sha256:" + "cd" * 32,
                            pipeline_run=f"photo-detector-training-{n}", model_version=f"m-{n:012d}")


def test_no_model_means_no_champion(registry: FakeVertex) -> None:
    cfg = load_config()
    assert champion_metrics(resolve(cfg), cfg) is None


def test_a_model_without_the_champion_alias_means_no_champion_yet(registry: FakeVertex) -> None:
    """The alias lookup answers 404: that is "no champion yet", not an error that fails the gate."""
    first = register(1, 0.90)
    for version in registry.state["models"][first["resource_name"]]:
        version["versionAliases"] = []
    cfg = load_config()
    assert champion_metrics(resolve(cfg), cfg) is None
    assert registry.calls("GET", r"@champion$"), "the alias was asked for and answered 404"


def test_versions_of_one_model_and_the_champion_alias_moves(registry: FakeVertex) -> None:
    first = register(1, 0.90)
    second = register(2, 0.93)
    assert first["parent"] is None and second["parent"] == first["resource_name"]
    uploads = registry.calls("POST", r"models:upload$")
    assert "parentModel" not in uploads[0].body and uploads[1].body["parentModel"] == first["resource_name"]
    body = uploads[1].body["model"]
    assert body["displayName"] == "photo-detector" and "champion" in body["versionAliases"]
    assert body["labels"]["pipeline_run"] == "photo-detector-training-2"
    assert body["labels"]["data_digest"] == "cd" * 16 and body["containerSpec"]["imageUri"] == "r/serve@sha256:ab"
    # Declared routes: a registered version works on a Vertex endpoint and in batch prediction.
    assert body["containerSpec"]["predictRoute"] == "/v1/predict" and body["containerSpec"]["healthRoute"] == "/health"
    assert body["containerSpec"]["ports"] == [{"containerPort": 8080}]
    assert json.loads(body["versionDescription"])["metrics"] == {"accuracy": 0.93, "f1": 0.92}
    versions = registry.state["models"][first["resource_name"]]
    assert ["champion" in v["versionAliases"] for v in versions] == [False, True]
    cfg = load_config()
    assert champion_metrics(resolve(cfg), cfg) == {"accuracy": 0.93, "f1": 0.92}


def test_gate_stage_compares_with_the_registry_champion(registry: FakeVertex, tmp_path) -> None:
    from kfp import dsl

    from photo_detector import stages

    register(1, 0.95)
    metrics = dsl.Metrics(uri=str(tmp_path / "m"), metadata={"accuracy": 0.93, "f1": 0.92})
    decision = dsl.Artifact(uri=str(tmp_path / "d"))
    passed = stages.quality_gate(metrics, decision, champion_metrics={},
                                 config_overrides={"gate.fail_run_on_reject": False}, min_accuracy=0.85,
                                 min_f1=0.8, champion_from_registry=True)
    assert passed is False
    with pytest.raises(SystemExit) as stopped:  # the default: the rejection fails the task and the run
        stages.quality_gate(metrics, decision, champion_metrics={}, config_overrides={}, min_accuracy=0.85,
                            min_f1=0.8, champion_from_registry=True)
    assert stopped.value.code == 2
    record = json.loads((tmp_path / "d").read_text())
    assert record["rule"].startswith("absolute thresholds and not worse than the champion")
    assert any(c["name"] == "champion_accuracy" and not c["passed"] for c in record["checks"])


def test_evaluation_import_retries_a_5xx_and_names_a_missing_version(registry: FakeVertex) -> None:
    from google.api_core import exceptions as gexc

    from photo_detector.cloud.registry import import_evaluation

    first = register(1, 0.9)
    result = {"roc_auc": 0.97, "average_precision": 0.96, "confusion_matrix": [[9, 1], [0, 10]],
              "roc_fpr": [0.0, 0.1, 1.0], "roc_tpr": [0.0, 1.0, 1.0], "roc_thresholds": [1.0, 0.6, 0.0],
              "class_names": ["real", "ai_generated"], "split": "test", "n_images": 20, "threshold": 0.5}
    registry.fail("POST", r"evaluations:import$", 503)
    cfg = load_config()
    name = import_evaluation(resolve(cfg), first["resource_name"], first["version_id"], result)
    assert name.endswith("/evaluations/1") and len(registry.calls("POST", r"evaluations:import$")) == 2
    metrics = registry.state["models"][first["resource_name"]][0]["evaluations"][0]["metrics"]
    at = {p["confidenceThreshold"]: p for p in metrics["confidenceMetrics"]}
    assert at[0.5]["recall"] == 1.0 and at[0.5]["falsePositiveRate"] == 0.1 and at[0.5]["falsePositiveCount"] == 1
    assert at[0.7]["recall"] == 0.0 and metrics["auPrc"] == 0.96
    with pytest.raises(gexc.NotFound, match="not found"):
        import_evaluation(resolve(cfg), first["resource_name"], "9", result)


def test_allowed_gcs_prefixes_reach_the_registered_container(registry: FakeVertex) -> None:
    register(1, 0.9, **{"serve.gcs_allowed_prefixes": ["gs://catalog/a/", "gs://catalog/b/"]})
    register(2, 0.9)
    first, second = (c.body["model"]["containerSpec"] for c in registry.calls("POST", r"models:upload$"))
    assert first["env"] == [{"name": "PHOTO_DETECTOR_GCS_ALLOWED_PREFIXES", "value": "gs://catalog/a/,gs://catalog/b/"}]
    assert "env" not in second  # unset: the container's own default (the job's storage under Vertex)
