"""schedule create|list|pause|resume|delete and runs list|get|cancel against the Vertex REST fake."""

from __future__ import annotations

import json

import pytest
from test_vertex import cli, cloud_env, gcs, vertex  # noqa: F401 - shared fixtures

SCHEDULES = "/v1/projects/proj/locations/europe-west4/schedules"


def test_schedule_create_sends_cron_with_time_zone_and_the_run_request(gcs, vertex) -> None:  # noqa: F811
    api, url = vertex
    out = cli("schedule", "create", "--cron", "0 3 * * 1", "--time-zone", "Europe/Berlin",
              "--max-concurrent-runs", "2", "--max-runs", "10", "--start-time", "2026-12-01T00:00:00+01:00",
              "--end-time", "2027-06-01", "--param", "epochs=5", "--param", "gpus=2", "--display-name", "weekly",
              "--experiment", "catalog-v2", env=cloud_env(gcs, url))
    assert out.returncode == 0, out.stderr
    body = api.calls("POST", SCHEDULES + "$")[0].body
    assert body["cron"] == "TZ=Europe/Berlin 0 3 * * 1" and body["displayName"] == "weekly"
    assert body["maxConcurrentRunCount"] == "2" and body["maxRunCount"] == "10"
    assert body["startTime"] == "2026-11-30T23:00:00Z" and body["endTime"] == "2027-06-01T00:00:00Z"
    request = body["createPipelineJobRequest"]
    assert request["parent"] == "projects/proj/locations/europe-west4"
    job = request["pipelineJob"]
    values = job["runtimeConfig"]["parameterValues"]
    assert values["epochs"] == 5
    # Each run's train task: two T4s on the machine that feeds them, epochs as the experiment's time series.
    assert (values["gpus"], values["train_cpu"], values["train_memory"]) == (2, "8", "30G")
    assert values["experiment"] == "catalog-v2"
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://runs-bucket/root"
    assert job["pipelineSpec"]["pipelineInfo"]["name"] == "photo-detector-training"
    assert "created schedule 1000 (weekly)" in out.stdout


@pytest.mark.parametrize(("args", "needle"), [
    (["--cron", "0 3 * *"], "must have 5 fields"),
    (["--cron", "0 3 * * 1", "--time-zone", "Mars/Olympus"], "unknown time zone"),
    (["--cron", "0 3 * * 1", "--start-time", "2027-01-01", "--end-time", "2026-01-01"], "is not after"),
    (["--cron", "0 3 * * 1", "--start-time", "next tuesday"], "not an ISO 8601 time"),
])
def test_schedule_create_rejects_bad_input_before_sending(gcs, vertex, args: list[str], needle: str) -> None:  # noqa: F811
    api, url = vertex
    out = cli("schedule", "create", *args, env=cloud_env(gcs, url))
    assert out.returncode == 2 and needle in out.stderr and api.requests == []


def test_schedule_list_pause_resume_delete(gcs, vertex) -> None:  # noqa: F811
    api, url = vertex
    env = cloud_env(gcs, url)
    assert cli("schedule", "create", "--cron", "0 3 * * *", env=env).returncode == 0
    listed = cli("schedule", "list", "--json", env=env)
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["state"], r["cron"]) for r in rows] == [("1000", "ACTIVE", "TZ=Etc/UTC 0 3 * * *")]
    paused = cli("schedule", "pause", "1000", env=env)
    assert paused.returncode == 0 and "PAUSED" in paused.stdout
    assert api.calls("POST", r"schedules/1000:pause$")
    assert "ACTIVE" in cli("schedule", "resume", "1000", env=env).stdout
    deleted = cli("schedule", "delete", "1000", env=env)
    assert deleted.returncode == 0 and api.calls("DELETE", r"schedules/1000$")
    missing = cli("schedule", "pause", "1000", env=env)
    assert missing.returncode == 2 and "HTTP 404" in missing.stderr


def test_runs_list_get_cancel(gcs, vertex) -> None:  # noqa: F811
    api, url = vertex
    api.polls_until_done = 0
    env = cloud_env(gcs, url)
    out = cli("submit", "--job-id", "run-one", env=env)
    assert out.returncode == 0, out.stderr
    rows = json.loads(cli("runs", "list", "--json", env=env).stdout)
    assert [r["id"] for r in rows] == ["run-one"]
    got = json.loads(cli("runs", "get", "run-one", env=env).stdout)
    assert got["state"] == "PIPELINE_STATE_SUCCEEDED" and got["duration_s"] == 450.0
    api.polls_until_done = 100
    cli("submit", "--job-id", "run-two", env=env)
    cancelled = cli("runs", "cancel", "run-two", env=env)
    assert cancelled.returncode == 0 and api.calls("POST", r"pipelineJobs/run-two:cancel$")
    assert "CANCELLING" in cancelled.stdout
    assert "HTTP 404" in cli("runs", "get", "nope", env=env).stderr


def test_runs_get_metrics_reads_the_train_task_while_it_runs(gcs, vertex) -> None:  # noqa: F811
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    api, url = vertex
    api.polls_until_done = 100  # still running
    env = cloud_env(gcs, url)
    assert cli("submit", "--job-id", "run-live", "--skip-checks", env=env).returncode == 0
    early = cli("runs", "get", "run-live", "--metrics", env=env)
    assert early.returncode == 2 and "has no train task output yet" in early.stderr

    model_uri = "gs://runs-bucket/root/123/run-live/train_-42/model"
    job = api.state["jobs"]["projects/proj/locations/europe-west4/pipelineJobs/run-live"]
    job["jobDetail"]["taskDetails"] = [{"taskName": "train", "state": "RUNNING", "outputs": {
        "model": {"artifacts": [{"uri": model_uri, "schemaTitle": "system.Model"}]}}}]
    waiting = cli("runs", "get", "run-live", "--metrics", env=env)
    assert waiting.returncode == 0 and "no epoch has finished yet" in waiting.stdout

    header = "epoch,train_loss,train_accuracy,val_loss,val_accuracy,val_precision,val_recall,val_f1," \
             "learning_rate,images_per_second,seconds\n"
    rows = "1,0.69,0.55,0.68,0.6,0.6,0.6,0.61,0.001,812.5,41.2\n2,0.52,0.74,0.49,0.78,0.8,0.75,0.77,0.00095,820,40.9\n"
    storage.Client(project="proj", credentials=AnonymousCredentials()).bucket("runs-bucket").blob(
        "root/123/run-live/train_-42/model/metrics.csv").upload_from_string(header + rows)
    table = cli("runs", "get", "run-live", "--metrics", env=env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert "RUNNING" in lines[0] and model_uri in lines[0]
    assert lines[1].split()[:3] == ["epoch", "train", "loss"]
    assert lines[2].split() == ["1", "0.6900", "0.5500", "0.6800", "0.6000", "0.6100", "1.00e-03", "812", "41.2"]
    assert lines[3].split()[0] == "2" and len(lines) == 4
    as_json = json.loads(cli("runs", "get", "run-live", "--metrics", "--json", env=env).stdout)
    assert [r["epoch"] for r in as_json["epochs"]] == ["1", "2"] and as_json["model"] == model_uri
