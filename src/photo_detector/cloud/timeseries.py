"""A train task's per-epoch scalars as its Vertex AI Experiment run's time series (Vertex AI TensorBoard).

Why by hand and not `aiplatform.start_run(...).log_time_series_metrics`: a pipeline run's experiment run is
its PipelineRun context, which the SDK's ExperimentRun cannot resume. The resources are the ones the SDK
makes: a TensorboardExperiment named after the experiment, a TensorboardRun named after the run, one
scalar time series per tag (the same tags as the `logs/` event files), and a `google.VertexTensorboardRun`
artifact that links the TensorBoard run to the run's context, where the console looks for it.

Logging never stops training: after the first failure it warns once (with the fix) and goes quiet.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from photo_detector.cloud.settings import Settings
from photo_detector.errors import PhotoDetectorError
from photo_detector.tblog import TAGS, tag_for

log = logging.getLogger(__name__)

TB_RUN_ARTIFACT = "google.VertexTensorboardRun"
TB_EXPERIMENT_LABELS = {"vertex_tensorboard_experiment_source": "vertex_experiment"}  # what the SDK sets


def find_tensorboard(client: Any, project: str, region: str, display_name: str, **call: Any) -> str | None:
    """The resource name of the project's TensorBoard instance called `display_name`, if there is one
    (`call`: timeout and retry of the API call; setup and doctor pass short ones)."""
    call.setdefault("timeout", 30)
    found = client.list_tensorboards(request={"parent": f"projects/{project}/locations/{region}",
                                              "filter": f'display_name="{display_name}"'}, **call)
    return next((tb.name for tb in found), None)


@dataclass
class TimeSeriesLog:
    """`on_epoch_end` for run_train. Picklable until first used (multi-GPU training sends it to rank 0)."""

    settings: Settings  # the run's project and region, and a redirected Vertex endpoint if any
    experiment: str
    run: str
    tensorboard: str  # the instance's display name (gcp.tensorboard)
    _client: Any = field(default=None, repr=False)
    _run_name: str = ""
    _series: dict[str, str] = field(default_factory=dict)
    _failed: bool = False

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    def __call__(self, row: dict[str, float]) -> None:
        if self._failed:
            return
        try:
            if self._client is None:
                self._open()
            self._write(row)
        except Exception as exc:
            self._failed = True
            hint = exc.hint if isinstance(exc, PhotoDetectorError) else "the per-epoch table stays in the model " \
                "folder (metrics.csv, logs/) and in `photo-detector runs get RUN_ID --metrics`"
            log.warning("Vertex time series for experiment %s are off for this run: %s: %s (%s)", self.experiment,
                        type(exc).__name__, getattr(exc, "message", exc), hint)

    def _open(self) -> None:
        from google.api_core import exceptions as gexc
        from google.cloud import aiplatform_v1

        s = self.settings
        client = s.vertex_client(aiplatform_v1.TensorboardServiceClient)
        tb = find_tensorboard(client, s.project, s.region, self.tensorboard)
        if tb is None:
            raise PhotoDetectorError(f"no Vertex AI TensorBoard instance named {self.tensorboard} in "
                                     f"{s.project}/{s.region}", "photo-detector setup creates it")
        experiment, run = f"{tb}/experiments/{self.experiment}", f"{tb}/experiments/{self.experiment}/runs/{self.run}"
        try:
            client.get_tensorboard_experiment(name=experiment, timeout=30)
        except gexc.NotFound:
            client.create_tensorboard_experiment(request={
                "parent": tb, "tensorboard_experiment_id": self.experiment,
                "tensorboard_experiment": {"display_name": self.experiment, "labels": TB_EXPERIMENT_LABELS}},
                timeout=30)
        try:
            client.get_tensorboard_run(name=run, timeout=30)
        except gexc.NotFound:
            client.create_tensorboard_run(request={"parent": experiment, "tensorboard_run_id": self.run,
                                                   "tensorboard_run": {"display_name": self.run}}, timeout=30)
            self._link(run)
        self._series = {s.display_name: s.name.rsplit("/", 1)[1]
                        for s in client.list_tensorboard_time_series(parent=run, timeout=30)}
        self._client, self._run_name = client, run
        log.info("per-epoch time series go to %s (experiment %s)", run, self.experiment)

    def _link(self, run: str) -> None:
        """The artifact by which the console finds the TensorBoard run of the experiment run (a retried
        task finds the run already there and links nothing twice)."""
        from google.api_core import exceptions as gexc
        from google.cloud import aiplatform_v1

        s = self.settings
        meta = s.vertex_client(aiplatform_v1.MetadataServiceClient)
        store = f"projects/{s.project}/locations/{s.region}/metadataStores/default"
        try:
            artifact = meta.create_artifact(request={
                "parent": store, "artifact_id": f"{self.run}-tb-run"[:128],
                "artifact": {"schema_title": TB_RUN_ARTIFACT, "schema_version": "0.0.1", "state": "LIVE",
                             "uri": f"https://{s.region}-aiplatform.googleapis.com/v1/{run}",
                             "metadata": {"resourceName": run, "vertex_experiment_tracking": True}}}, timeout=30)
        except gexc.AlreadyExists:
            return
        meta.add_context_artifacts_and_executions(context=f"{store}/contexts/{self.run}",
                                                  artifacts=[artifact.name], timeout=30)

    def _write(self, row: dict[str, float]) -> None:
        from google.cloud import aiplatform_v1

        client, step = self._client, int(row["epoch"])
        scalar = aiplatform_v1.TensorboardTimeSeries.ValueType.SCALAR
        data = []
        seconds = time.time()
        for metric in TAGS:
            if metric not in row:
                continue
            tag = tag_for(metric)
            if tag not in self._series:
                made = client.create_tensorboard_time_series(parent=self._run_name, tensorboard_time_series={
                    "display_name": tag, "value_type": scalar}, timeout=30)
                self._series[tag] = made.name.rsplit("/", 1)[1]
            data.append({"tensorboard_time_series_id": self._series[tag], "value_type": scalar,
                         "values": [{"scalar": {"value": float(row[metric])}, "step": step,
                                     "wall_time": {"seconds": int(seconds), "nanos": int(seconds % 1 * 1e9)}}]})
        client.write_tensorboard_run_data(tensorboard_run=self._run_name, time_series_data=data, timeout=30)
