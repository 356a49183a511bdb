"""Whole catalogs: `score` in one process (folder and gs://), and `batch-predict` on Vertex AI, end to end
through the CLI against fake-gcs-server and a REST fake of the Model Registry and batch prediction jobs."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli
from fakes import FakeVertex, fake_gcs

from photo_detector.evaluate import predict_files


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env)


def rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def test_score_a_folder_with_a_bad_file_in_it(trained_dir: Path, sample_dir: Path, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog"
    shutil.copytree(sample_dir / "test", catalog)
    (catalog / "real" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    out = tmp_path / "scores.csv"
    out.write_text("an older file that stays whole until the new one is complete\n")
    r = cli("score", str(catalog), "--model", str(trained_dir), "--out", str(out), "--batch", "3")
    assert r.returncode == 0, r.stderr
    images = sorted(p for p in catalog.rglob("*.png"))
    assert f"scored {len(images)} images" in r.stdout and "1 unreadable" in r.stdout
    got = rows(out)
    assert len(got) == len(images) + 1
    expected = predict_files(trained_dir, images)
    for path, p in zip(images, expected, strict=True):
        row = got[str(path)]
        assert float(row["probability"]) == pytest.approx(float(p), abs=1e-5) and not row["error"]
        assert row["prediction"] in ("real", "ai_generated")
    assert got[str(catalog / "real" / "broken.jpg")]["error"].startswith("the JPEG image cannot be decoded")
    assert not list(tmp_path.glob(".scores.csv.*")), "no temporary file left behind"

    missing = cli("score", str(tmp_path / "nowhere"), "--model", str(trained_dir), "--out", str(out))
    assert missing.returncode == 2 and "is not a folder" in missing.stderr and "Traceback" not in missing.stderr


def test_score_a_gcs_prefix(trained_dir: Path, sample_dir: Path, tmp_path: Path) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    images = sorted((sample_dir / "test" / "ai_generated").iterdir())[:3]
    with fake_gcs():
        bucket = storage.Client(project="p", credentials=AnonymousCredentials()).create_bucket("shop")
        for p in images:
            bucket.blob(f"catalog/{p.name}").upload_from_filename(str(p))
        bucket.blob("catalog/notes.txt").upload_from_string("not an image")
        r = cli("score", "gs://shop/catalog", "--model", str(trained_dir), "--out", str(tmp_path / "s.csv"))
    assert r.returncode == 0, r.stderr
    got = rows(tmp_path / "s.csv")
    assert sorted(got) == [f"gs://shop/catalog/{p.name}" for p in images]
    for p, expected in zip(images, predict_files(trained_dir, images), strict=True):
        assert float(got[f"gs://shop/catalog/{p.name}"]["probability"]) == pytest.approx(float(expected), abs=1e-5)


@pytest.fixture
def vertex_and_gcs(tmp_path: Path) -> Iterator[tuple[FakeVertex, dict[str, str], object]]:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    api = FakeVertex()
    api.polls_until_done = 1
    server, url = api.serve()
    with fake_gcs():
        gcs = storage.Client(project="p", credentials=AnonymousCredentials())
        env = {**os.environ, "PHOTO_DETECTOR_VERTEX_ENDPOINT": url, "PHOTO_DETECTOR_PROJECT": "proj",
               "PHOTO_DETECTOR_REGION": "europe-west4", "PHOTO_DETECTOR_RETRY_BACKOFF": "0"}
        yield api, env, gcs
    server.shutdown()


def test_batch_predict_needs_a_registered_model(vertex_and_gcs) -> None:
    api, env, gcs = vertex_and_gcs
    gcs.create_bucket("shop").blob("catalog/a.jpg").upload_from_string(b"\xff\xd8\xff")
    r = cli("batch-predict", "--source", "gs://shop/catalog", "--out", "gs://shop/scores", env=env)
    assert r.returncode == 2 and "no model 'photo-detector' in the Model Registry" in r.stderr
    empty = cli("batch-predict", "--source", "gs://shop/nothing", "--out", "gs://shop/scores", env=env)
    assert empty.returncode == 2 and "no images under gs://shop/nothing" in empty.stderr
    assert not api.calls("POST", r"batchPredictionJobs$")


def test_batch_predict_submits_on_the_champion_and_follows_the_job(vertex_and_gcs) -> None:
    from photo_detector.cloud.registry import register_version
    from photo_detector.cloud.settings import resolve
    from photo_detector.config import load_config

    api, env, gcs = vertex_and_gcs
    bucket = gcs.create_bucket("shop")
    names = [f"catalog/{i:03d}.jpg" for i in range(5)] + ["catalog/sub/x.PNG", "catalog/readme.txt"]
    for n in names:
        bucket.blob(n).upload_from_string(b"\xff\xd8\xff")
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        cfg = load_config()
        model = register_version(resolve(cfg), cfg, artifact_uri="gs://shop/run1/model",
                                 serving_image="r/serve@sha256:a", metrics={"accuracy": 0.9},
                                 data_digest="sha256:" + "ab" * 32, pipeline_run="run-1", model_version="m-1")
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    r = cli("batch-predict", "--source", "gs://shop/catalog", "--out", "gs://shop/scores/", "--replicas", "3",
            "--poll-seconds", "0", env=env)
    assert r.returncode == 0, r.stderr
    (job,) = api.calls("POST", r"batchPredictionJobs$")
    body = job.body
    assert body["model"] == f"{model['resource_name']}@champion"
    assert body["inputConfig"]["instancesFormat"] == "jsonl" and body["outputConfig"]["predictionsFormat"] == "jsonl"
    assert body["outputConfig"]["gcsDestination"]["outputUriPrefix"] == "gs://shop/scores"
    assert body["dedicatedResources"]["startingReplicaCount"] == body["dedicatedResources"]["maxReplicaCount"] == 3
    assert body["dedicatedResources"]["machineSpec"]["machineType"] == "n1-standard-4"
    assert body["manualBatchTuningParameters"]["batchSize"] == load_config().serve.max_batch_files
    (instances_uri,) = body["inputConfig"]["gcsSource"]["uris"]
    assert instances_uri.startswith("gs://shop/scores/instances-") and instances_uri.endswith(".jsonl")
    lines = bucket.blob(instances_uri.removeprefix("gs://shop/")).download_as_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"gcs_uri": f"gs://shop/{n}"} for n in sorted(names[:6])]
    assert "state: JOB_STATE_RUNNING" in r.stdout and "state: JOB_STATE_SUCCEEDED" in r.stdout
    assert "predictions: gs://shop/scores/prediction-photo-detector-" in r.stdout and "6 instances" in r.stdout

    gcs.create_bucket("elsewhere").blob("catalog/a.jpg").upload_from_string(b"\xff\xd8\xff")
    outside = cli("batch-predict", "--source", "gs://elsewhere/catalog", "--out", "gs://shop/scores", env=env)
    assert outside.returncode == 2 and "reads images only under its model's bucket gs://shop/" in outside.stderr
    assert len(api.calls("POST", r"batchPredictionJobs$")) == 1, "refused before submitting"

    api.batch_final_state = "JOB_STATE_FAILED"
    failed = cli("batch-predict", "--source", "gs://shop/catalog", "--out", "gs://shop/scores", "--poll-seconds",
                 "0", env=env)
    assert failed.returncode == 2 and "ended JOB_STATE_FAILED: Model server never became ready" in failed.stderr
    assert "Traceback" not in failed.stderr

    submitted = cli("batch-predict", "--source", "gs://shop/catalog", "--out", "gs://shop/scores", "--no-sync",
                    env=env)  # one look at the state, no following
    assert submitted.returncode == 0, submitted.stderr
    (state_line,) = [line for line in submitted.stdout.splitlines() if line.startswith("state: ")]
    assert f"submitted ({state_line.removeprefix('state: ')}); predictions will be written under gs://shop/scores" \
        in submitted.stdout
