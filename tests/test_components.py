"""Each component run alone under `kfp local` (SubprocessRunner, this environment), as the README shows.

kfp local cannot feed artifact inputs to a lone component, so each one runs in a one-stage pipeline whose
inputs come from `dsl.importer` of local folders: the same way the real DAG starts from its data URI.
"""


import json
from pathlib import Path

import pytest
from conftest import TINY
from kfp import dsl, local

from photo_detector.components.deploy import deploy
from photo_detector.components.evaluate import evaluate
from photo_detector.components.quality_gate import quality_gate
from photo_detector.components.train import train
from photo_detector.components.verify_data import verify_data

TINY_PARAMS = dict(seed=42, image_size=32, batch_size=16, epochs=2, max_minutes=180.0, gpus=1, learning_rate=0.003,
                   weight_decay=0.0001,
                   freeze_backbone=False, classification_threshold=0.5, experiment="", pipeline_job="")
TINY_OVERRIDES = {k: v for k, v in TINY.items()
                  if k not in {"data.image_size", "data.batch_size", "train.epochs", "train.learning_rate"}}


@pytest.fixture
def kfp_local(tmp_path: Path) -> Path:
    root = tmp_path / "pipeline-root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    return root


def test_verify_data_component(kfp_local: Path, sample_dir: Path) -> None:
    @dsl.pipeline
    def p() -> dsl.Dataset:
        data = dsl.importer(artifact_uri=str(sample_dir), artifact_class=dsl.Dataset)
        return verify_data(dataset=data.output, image_size=32, config_overrides=TINY_OVERRIDES,
                           fingerprint="fp:test").outputs["verified"]

    verified = p().output
    manifest = json.loads((Path(verified.path) / "manifest.json").read_text())
    assert manifest["splits"]["train"]["count"] == 44 and manifest["store_size"] == 40
    assert verified.metadata["digest"] == manifest["digest"] and \
        verified.metadata["digest"].startswith("sha256:")
    assert verified.metadata["counts"]["test"] == {"real": 4, "ai_generated": 4}


def test_train_component_reads_the_packed_data(kfp_local: Path, sample_dir: Path) -> None:
    @dsl.pipeline
    def p() -> dsl.Model:
        data = dsl.importer(artifact_uri=str(sample_dir), artifact_class=dsl.Dataset)
        v = verify_data(dataset=data.output, image_size=32, config_overrides=TINY_OVERRIDES, fingerprint="fp:test")
        t = train(verified=v.outputs["verified"], data_digest=v.outputs["digest"], config_overrides=TINY_OVERRIDES,
                  **TINY_PARAMS)
        return t.outputs["model"]

    model = p().output
    folder = Path(model.path)
    assert (folder / "model.onnx").is_file() and (folder / "best.pt").is_file()
    meta = json.loads((folder / "model.json").read_text())
    assert model.metadata["framework"] == "onnx" and model.metadata["image_size"] == 32
    assert model.metadata["data_digest"] == meta["data_digest"]
    assert model.metadata["model_version"].startswith("m-") and 0 <= model.metadata["val_accuracy"] <= 1
    report = folder.parent / "report"
    assert report.read_text().startswith("<!doctype html>") and "data:image/png;base64," in report.read_text()
    assert (folder.parent / "epoch_metrics").read_text().startswith("epoch,train_loss")


def test_evaluate_component(kfp_local: Path, sample_dir: Path, trained_dir: Path) -> None:
    @dsl.pipeline
    def p() -> dsl.ClassificationMetrics:
        model = dsl.importer(artifact_uri=str(trained_dir), artifact_class=dsl.Model)
        data = dsl.importer(artifact_uri=str(sample_dir), artifact_class=dsl.Dataset)
        return evaluate(model=model.output, dataset=data.output,
                        config_overrides={}).outputs["classification_metrics"]

    cm = p().output.metadata
    matrix = cm["confusionMatrix"]
    assert [c["displayName"] for c in matrix["annotationSpecs"]] == ["real", "ai_generated"]
    assert sum(sum(r["row"]) for r in matrix["rows"]) == 8  # the test split: 4 + 4
    assert cm["confidenceMetrics"] and all(0 <= m["falsePositiveRate"] <= 1 for m in cm["confidenceMetrics"])


@pytest.mark.parametrize(("metrics", "passed"), [
    ({"accuracy": 0.9, "f1": 0.85, "jpeg_q75_accuracy": 0.9, "webp_q80_accuracy": 0.81}, True),
    ({"accuracy": 0.9, "f1": 0.85, "jpeg_q75_accuracy": 0.9, "webp_q80_accuracy": 0.79}, False),  # robustness
    ({"accuracy": 0.9, "f1": 0.85}, False),  # no robustness metrics: fails closed
    ({"accuracy": 0.9, "f1": 0.79}, False),
    ({"accuracy": "NaN", "f1": 0.9}, False),  # protobuf metadata cannot carry a float NaN
    ({"f1": 0.9}, False),
])
def test_quality_gate_component(kfp_local: Path, tmp_path: Path, metrics: dict, passed: bool) -> None:
    (tmp_path / "m").write_text("{}")

    def gate(overrides: dict):
        @dsl.pipeline
        def p() -> bool:
            m = dsl.importer(artifact_uri=str(tmp_path / "m"), artifact_class=dsl.Metrics, metadata=metrics)
            return quality_gate(metrics=m.output, min_accuracy=0.85, min_f1=0.80, champion_metrics={}, pipeline_job="",
                                champion_from_registry=False, config_overrides=overrides).outputs["Output"]
        return p

    assert gate({"gate.fail_run_on_reject": False})().output is passed  # the decision as a value, for dsl.If
    if passed:
        assert gate({})().output is True
    else:  # the default: a rejection fails the task, so the run (and a schedule) shows red
        with pytest.raises(RuntimeError, match="quality-gate"):
            gate({})()


SERVE = "europe-west4-docker.pkg.dev/proj-1/photo-detector-images/serve:c0ffee1"


def test_deploy_component_writes_the_exact_service_in_a_dry_run(kfp_local: Path, trained_dir: Path,
                                                                tmp_path: Path) -> None:
    (tmp_path / "m").write_text("{}")

    @dsl.pipeline
    def p() -> dsl.Artifact:
        model = dsl.importer(artifact_uri=str(trained_dir), artifact_class=dsl.Model)
        metrics = dsl.importer(artifact_uri=str(tmp_path / "m"), artifact_class=dsl.Metrics,
                               metadata={"accuracy": 0.9, "f1": 0.9})
        return deploy(model=model.output, metrics=metrics.output, serve_image=SERVE, service_name="detector-test",
                      pipeline_job="projects/proj-1/locations/europe-west4/pipelineJobs/run-1",
                      region="", project="", dry_run=True, pipeline_run="run-1",
                      config_overrides={}).outputs["deployment"]

    out = p().output
    plan = json.loads(Path(out.path).read_text())
    assert plan["dry_run"] is True and plan["name"] == "projects/proj-1/locations/europe-west4/services/detector-test"
    container = plan["service"]["template"]["containers"][0]
    assert container["image"] == SERVE and out.metadata["serve_image"] == SERVE
    env = {e["name"]: e for e in container["env"]}
    assert env["PHOTO_DETECTOR_MODEL_URI"]["value"] == str(trained_dir)
    assert env["PHOTO_DETECTOR_API_KEY_HASHES"]["valueSource"]["secretKeyRef"]["secret"] == "photo-detector-api-keys"
    assert out.metadata["model_version"] == plan["service"]["labels"]["model-version"]
