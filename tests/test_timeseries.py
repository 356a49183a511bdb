"""Per-epoch scalars as a Vertex Experiment run's time series: the real aiplatform_v1 clients (REST) against
the Vertex fake, which keeps every point written."""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import pytest
from fakes import FakeVertex

from photo_detector.cloud.settings import Settings
from photo_detector.cloud.timeseries import TB_RUN_ARTIFACT, TimeSeriesLog
from photo_detector.tblog import TAGS

STORE = "projects/proj/locations/us-central1/metadataStores/default"
ROWS = [{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.5 + e / 10, "val_loss": 0.9 / e, "val_accuracy": 0.6,
         "val_precision": 0.6, "val_recall": 0.7, "val_f1": 0.65, "learning_rate": 1e-3, "images_per_second": 900.0,
         "seconds": 12.0} for e in (1, 2, 3)]


@pytest.fixture
def vertex() -> Iterator[tuple[FakeVertex, str]]:
    api = FakeVertex()
    server, url = api.serve()
    # What setup made (the instance) and what submit made (the run's PipelineRun context).
    tb = "projects/proj/locations/us-central1/tensorboards/7000"
    api.state["tensorboards"] = {tb: {"name": tb, "displayName": "photo-detector"}}
    api.state["contexts"] = {f"{STORE}/contexts/run-1": {"name": f"{STORE}/contexts/run-1",
                                                         "schemaTitle": "system.PipelineRun"}}
    yield api, url
    server.shutdown()


def _log(url: str, run: str = "run-1") -> TimeSeriesLog:
    return TimeSeriesLog(Settings(project="proj", region="us-central1", endpoints={"vertex": url}),
                         experiment="catalog-v2", run=run, tensorboard="photo-detector")


def test_every_epoch_becomes_a_point_of_the_run_s_time_series(vertex: tuple[FakeVertex, str]) -> None:
    api, url = vertex
    on_epoch_end = pickle.loads(pickle.dumps(_log(url)))  # as multi-GPU training hands it to rank 0
    for row in ROWS:
        on_epoch_end(row)
    tags = {f"{'train' if t.startswith('train_') else 'val' if t.startswith('val_') else 'run'}/{t}"
            for t in TAGS if t in ROWS[0]}
    assert set(api.state["points"]) == tags  # the `logs/` event files' tags; seconds is not one of them
    assert api.state["points"]["val/val_f1"] == [(1, 0.65), (2, 0.65), (3, 0.65)]
    assert [v for _, v in api.state["points"]["train/train_loss"]] == pytest.approx([1.0, 0.5, 1 / 3])
    run = "projects/proj/locations/us-central1/tensorboards/7000/experiments/catalog-v2/runs/run-1"
    assert run in api.state["tensorboard_nodes"]
    assert len(api.calls("POST", r"/timeSeries$")) == len(tags), "each series is created once"
    assert len(api.calls("POST", r":write$")) == 3, "one write per epoch"
    # The console finds the TensorBoard run from the run's context.
    (artifact,) = api.state["artifacts"].values()
    assert artifact["schemaTitle"] == TB_RUN_ARTIFACT and artifact["metadata"]["resourceName"] == run
    assert api.state["contexts"][f"{STORE}/contexts/run-1"]["_artifacts"] == [artifact["name"]]


def test_a_retried_task_appends_to_the_same_series(vertex: tuple[FakeVertex, str]) -> None:
    api, url = vertex
    _log(url)(ROWS[0])
    retried = _log(url)  # a new process: it finds the experiment, the run and the series
    for row in ROWS[1:]:
        retried(row)
    assert api.state["points"]["val/val_accuracy"] == [(1, 0.6), (2, 0.6), (3, 0.6)]
    assert len(api.state["artifacts"]) == 1 and len(api.calls("POST", r"/timeSeries$")) == 9


def test_a_missing_instance_or_api_error_warns_once_and_never_stops_training(
        vertex: tuple[FakeVertex, str], caplog: pytest.LogCaptureFixture) -> None:
    api, url = vertex
    api.state["tensorboards"].clear()
    log = _log(url)
    for row in ROWS:
        log(row)  # no exception
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "no Vertex AI TensorBoard instance named photo-detector" in warnings[0]
    assert "photo-detector setup creates it" in warnings[0]
    assert len(api.calls("GET", r"/tensorboards$")) == 1, "it gave up after the first failure"


def test_only_a_vertex_run_with_an_experiment_logs_time_series() -> None:
    from photo_detector.config import load_config
    from photo_detector.stages import _experiment_time_series

    job = "projects/proj/locations/europe-west4/pipelineJobs/photo-detector-training-20261127-abc"
    log = _experiment_time_series(load_config(None, {"gcp.experiment": "catalog-v2"}), job)
    assert log is not None and (log.settings.project, log.settings.region, log.run, log.experiment,
                                log.tensorboard) == (
        "proj", "europe-west4", "photo-detector-training-20261127-abc", "catalog-v2", "photo-detector")
    assert _experiment_time_series(load_config(), job) is None  # no experiment
    assert _experiment_time_series(load_config(None, {"gcp.experiment": "catalog-v2"}), "") is None  # kfp local
