"""The compiled pipeline spec: current, strictly valid, and the DAG the product promises."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from photo_detector.cloud.naming import data_uri, image_registry
from photo_detector.config import load_config
from photo_detector.pipelines.compile import DEFAULT_OUTPUT, compile_pipeline, load_spec
from photo_detector.stages import PIPELINE_PARAMETERS, stage_config

ROOT = Path(__file__).resolve().parents[1]
COMPILED = ROOT / DEFAULT_OUTPUT
STAGES = ("fingerprint", "verify-data", "train", "evaluate", "quality-gate", "deploy")


@pytest.fixture(scope="module")
def spec() -> dict:
    return load_spec(COMPILED)


def _component_tasks(spec: dict) -> dict[str, dict]:
    """Every task that runs a container, with nested condition groups flattened."""
    tasks: dict[str, dict] = {}

    def walk(dag_tasks: dict) -> None:
        for name, task in dag_tasks.items():
            comp = spec["components"][task["componentRef"]["name"]]
            if "dag" in comp:
                walk(comp["dag"]["tasks"])
            else:
                tasks[name] = task
    walk(spec["root"]["dag"]["tasks"])
    return tasks


def test_checked_in_spec_is_what_compile_writes(tmp_path: Path) -> None:
    fresh = compile_pipeline(load_config(), tmp_path / "p.yaml")
    assert fresh.read_text() == COMPILED.read_text(), "run `photo-detector compile` and commit the result"


def test_spec_parses_strictly_into_pipeline_spec(spec: dict) -> None:
    parsed = json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    assert parsed.pipeline_info.name == load_config().pipeline.name


def test_dag_has_exactly_the_stages_and_their_edges(spec: dict) -> None:
    tasks = _component_tasks(spec)
    assert set(tasks) == {*STAGES, "importer"}
    root = spec["root"]["dag"]["tasks"]
    assert sorted(root["verify-data"]["dependentTasks"]) == ["fingerprint", "importer"]
    assert root["verify-data"]["inputs"]["parameters"]["fingerprint"]["taskOutputParameter"] == {
        "outputParameterKey": "fingerprint", "producerTask": "fingerprint"}
    assert root["fingerprint"]["inputs"]["parameters"]["data_uri"]["componentInputParameter"] == "data_uri"
    assert root["train"]["dependentTasks"] == ["verify-data"]
    assert sorted(root["evaluate"]["dependentTasks"]) == ["train", "verify-data"]
    # evaluate scores the verified data (quarantined and broken files left out), not the raw import
    assert root["evaluate"]["inputs"]["artifacts"]["dataset"]["taskOutputArtifact"] == {
        "outputArtifactKey": "verified", "producerTask": "verify-data"}
    assert root["quality-gate"]["dependentTasks"] == ["evaluate"]
    train_in = root["train"]["inputs"]
    assert train_in["artifacts"]["verified"]["taskOutputArtifact"] == {"outputArtifactKey": "verified",
                                                                       "producerTask": "verify-data"}
    assert root["evaluate"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]["producerTask"] == "train"
    gate_in = root["quality-gate"]["inputs"]["artifacts"]["metrics"]["taskOutputArtifact"]
    assert gate_in == {"outputArtifactKey": "metrics", "producerTask": "evaluate"}
    assert all(t["taskInfo"]["name"] for t in tasks.values()), "every task has a display name"


def test_deploy_runs_only_under_the_gate_and_auto_deploy(spec: dict) -> None:
    root = spec["root"]["dag"]["tasks"]
    assert "deploy" not in root
    outer = root["condition-1"]
    assert "quality-gate" in outer["dependentTasks"]
    assert "quality-gate-Output" in outer["triggerPolicy"]["condition"]
    inner = spec["components"]["comp-condition-1"]["dag"]["tasks"]["condition-2"]
    assert "auto_deploy" in inner["triggerPolicy"]["condition"]
    deploy = spec["components"]["comp-condition-2"]["dag"]["tasks"]["deploy"]
    assert deploy["inputs"]["artifacts"]["model"]["componentInputArtifact"] == "pipelinechannel--train-model"
    assert deploy["inputs"]["artifacts"]["metrics"]["componentInputArtifact"] == "pipelinechannel--evaluate-metrics"
    assert deploy["inputs"]["parameters"]["pipeline_run"]["runtimeValue"]["constant"] == "{{$.pipeline_job_name}}"


def test_each_stage_has_its_own_image(spec: dict) -> None:
    cfg = load_config()
    executors = spec["deploymentSpec"]["executors"]
    images = {name: e["container"]["image"] for name, e in executors.items() if "container" in e}
    assert len(images) == len(STAGES) and len(set(images.values())) == len(STAGES) - 1
    assert images["exec-fingerprint"] == images["exec-verify-data"], "the fingerprint runs in the verify image"
    assert all(i.startswith(image_registry(cfg) + "/") and i.endswith(":" + cfg.images.tag)
               for i in images.values())
    assert image_registry(cfg) == "us-central1-docker.pkg.dev/PROJECT_ID/photo-detector-images"
    for e in executors.values():
        if "container" in e:
            assert "pip install" not in " ".join(e["container"]["command"]), "images carry the dependencies"


def test_train_asks_for_t4s_and_a_machine_the_gpus_parameters_size(spec: dict) -> None:
    """One T4 on n1-standard-4 by default; the count and the machine are run parameters, not compiled in."""
    res = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert res["accelerator"]["resourceType"] == "NVIDIA_TESLA_T4"
    channel = "{{$.inputs.parameters['pipelinechannel--%s']}}"
    assert (res["accelerator"]["resourceCount"], res["resourceCpuLimit"], res["resourceMemoryLimit"]) == (
        channel % "gpus", channel % "train_cpu", channel % "train_memory")
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert [params[n]["defaultValue"] for n in ("gpus", "train_cpu", "train_memory")] == [1, "4", "15G"]
    assert spec["root"]["dag"]["tasks"]["train"]["inputs"]["parameters"]["gpus"] == {
        "componentInputParameter": "gpus"}  # the same value starts one training process per GPU
    others = [e["container"] for n, e in spec["deploymentSpec"]["executors"].items()
              if n != "exec-train" and "container" in e]
    assert len(others) == 5 and all("resources" not in c for c in others)


def test_retries_and_caching_follow_idempotence(spec: dict) -> None:
    tasks = _component_tasks(spec)
    retried = {n for n, t in tasks.items() if t.get("retryPolicy", {}).get("maxRetryCount")}
    # train too: a retried attempt resumes from the last epoch the earlier one saved (test_train_retry.py).
    assert retried == {"fingerprint", "verify-data", "train", "evaluate"}, "a rejection by the gate is not retried"
    uncached = {n for n, t in tasks.items() if not t.get("cachingOptions", {}).get("enableCache")}
    # Content-keyed stages are cached (on the fingerprint and the parameters); what reads live state is not:
    # the fingerprint (listings), the gate (the registry's champion) and deploy (a rollout).
    assert uncached == {"fingerprint", "quality-gate", "deploy"}
    assert {n for n, t in tasks.items() if t.get("cachingOptions", {}).get("enableCache")} == {
        "importer", "verify-data", "train", "evaluate"}


def test_train_cache_key_includes_the_data_content_digest(spec: dict) -> None:
    digest_in = spec["root"]["dag"]["tasks"]["train"]["inputs"]["parameters"]["data_digest"]
    assert digest_in["taskOutputParameter"] == {"outputParameterKey": "digest", "producerTask": "verify-data"}


def test_parameters_carry_the_config_names_and_defaults(spec: dict) -> None:
    cfg = load_config()
    params = spec["root"]["inputDefinitions"]["parameters"]
    for name, key in PIPELINE_PARAMETERS.items():
        assert name in params, f"pipeline parameter {name} ({key}) is missing"
        want = data_uri(cfg) if name == "data_uri" else cfg.get(key)  # "" in the config = derived
        assert params[name]["defaultValue"] == want, name
    assert params["data_uri"]["defaultValue"] == "gs://PROJECT_ID-photo-detector-data/cifake"
    assert params["epochs"]["defaultValue"] == 15 and params["batch_size"]["defaultValue"] == 64
    assert (params["min_accuracy"]["defaultValue"], params["min_f1"]["defaultValue"]) == (0.85, 0.80)


def test_compile_with_another_registry_and_tag_changes_only_images(tmp_path: Path) -> None:
    cfg = load_config(None, {"images.registry": "europe-docker.pkg.dev/p/r", "images.tag": "abc123"})
    doc = yaml.safe_load(compile_pipeline(cfg, tmp_path / "p.yaml").read_text())
    images = {e["container"]["image"] for e in doc["deploymentSpec"]["executors"].values() if "container" in e}
    assert images == {f"europe-docker.pkg.dev/p/r/{s}:abc123" for s in ("verify", "train", "evaluate", "gate",
                                                                        "deploy")}
    deploy = doc["components"]["comp-condition-2"]["dag"]["tasks"]["deploy"]
    assert deploy["inputs"]["parameters"]["serve_image"]["runtimeValue"]["constant"] == \
        "europe-docker.pkg.dev/p/r/serve:abc123", "the deploy task rolls out the serve image of the same build"


def test_compile_for_a_project_names_only_that_project(tmp_path: Path) -> None:
    cfg = load_config(None, {"images.tag": "c0ffee1", "gcp.region": "europe-west4"})
    text = compile_pipeline(cfg, tmp_path / "p.yaml", project="my-proj").read_text()
    doc = yaml.safe_load(text)
    images = {e["container"]["image"] for e in doc["deploymentSpec"]["executors"].values() if "container" in e}
    assert images == {f"europe-west4-docker.pkg.dev/my-proj/photo-detector-images/{s}:c0ffee1"
                      for s in ("verify", "train", "evaluate", "gate", "deploy")}
    assert doc["root"]["inputDefinitions"]["parameters"]["data_uri"]["defaultValue"] == \
        "gs://my-proj-photo-detector-data/cifake"
    assert "PROJECT_ID" not in text and "photo-detector-prod" not in text


def test_struct_parameters_arrive_as_doubles_and_are_coerced() -> None:
    cfg = stage_config({"data.num_workers": 2.0, "train.warmup_epochs": 0.0}, epochs=3.0)
    assert cfg.data.num_workers == 2 and cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    with pytest.raises(Exception, match="must be an integer"):
        stage_config({"data.num_workers": 2.5})


def test_gate_and_deploy_learn_the_project_and_region_of_their_run(spec: dict) -> None:
    """Not gcp.region from the packaged defaults: the job resource name Vertex fills in at run time."""
    gate = spec["root"]["dag"]["tasks"]["quality-gate"]["inputs"]["parameters"]["pipeline_job"]
    deploy = spec["components"]["comp-condition-2"]["dag"]["tasks"]["deploy"]["inputs"]["parameters"]
    assert gate["runtimeValue"]["constant"] == "{{$.pipeline_job_resource_name}}"
    assert deploy["pipeline_job"]["runtimeValue"]["constant"] == "{{$.pipeline_job_resource_name}}"
    assert spec["root"]["inputDefinitions"]["parameters"]["region"]["defaultValue"] == ""


@pytest.mark.slow
def test_train_nodes_compiles_train_as_a_custom_job_with_that_many_replicas(tmp_path: Path) -> None:
    """train.nodes=2: the train task is a Vertex AI CustomJob (google-cloud-pipeline-components) of two
    replicas of the train image, each an n1-standard-4 with one T4, told the node count through the
    environment; kfp local (local=True) keeps the plain component. The default spec is the checked-in one
    (test_checked_in_spec_is_what_compile_writes).

    Compiled where a user compiles it: a clean environment of the wheel with its `multinode` extra (uv), not
    this one. gcpc pins google-cloud-aiplatform below 2, so it cannot join the dev environment (2.x); this
    also proves the extra resolves and that `photo-detector compile` runs with it alone."""
    import subprocess
    import sys

    from test_packaging import built_wheel, rehearsal_module

    from photo_detector.pipelines.training_pipeline import TRAIN_NODES_ENV

    wheel = built_wheel(tmp_path / "wheel")
    env, py = tmp_path / "env", tmp_path / "env" / "bin" / "python"
    for cmd in (["uv", "venv", "--quiet", "--python", sys.executable, str(env)],
                ["uv", "pip", "install", "--quiet", "--python", str(py), *rehearsal_module().pip_sources(),
                 f"{wheel}[multinode]"]):
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"{cmd[:3]} failed: {res.stderr[-3000:]}"
    res = subprocess.run([str(env / "bin" / "photo-detector"), "compile", "--set", "train.nodes=2", "--output",
                          str(tmp_path / "p.yaml")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    local = ("from kfp import compiler; from photo_detector.config import load_config; "
             "from photo_detector.pipelines.training_pipeline import build_pipeline; "
             "compiler.Compiler().compile(build_pipeline(load_config(None, {'train.nodes': 2}), local=True), "
             f"{str(tmp_path / 'local.yaml')!r})")
    res = subprocess.run([str(py), "-c", local], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]

    spec = load_spec(tmp_path / "p.yaml")
    comp = spec["components"][spec["root"]["dag"]["tasks"]["train"]["componentRef"]["name"]]
    pools = comp["inputDefinitions"]["parameters"]["worker_pool_specs"]["defaultValue"]
    assert sum(int(p["replica_count"]) for p in pools) == 2 and len(pools) == 2
    for pool in pools:
        assert pool["machine_spec"] == {"accelerator_count": 1.0, "accelerator_type": "NVIDIA_TESLA_T4",
                                        "machine_type": "n1-standard-4"}
        assert pool["container_spec"]["image_uri"].endswith("/train:0.1.0")
        assert pool["container_spec"]["env"] == [{"name": TRAIN_NODES_ENV, "value": "2"}]
    executor = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert "google_cloud_pipeline_components" in " ".join(executor["command"])
    assert set(spec["root"]["dag"]["tasks"]) == set(load_spec(COMPILED)["root"]["dag"]["tasks"])

    plain = load_spec(tmp_path / "local.yaml")
    assert "worker_pool_specs" not in plain["components"]["comp-train"]["inputDefinitions"]["parameters"]
    assert "photo_detector" in " ".join(plain["deploymentSpec"]["executors"]["exec-train"]["container"]["command"])
