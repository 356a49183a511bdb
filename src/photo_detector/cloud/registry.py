"""Vertex AI Model Registry: each deployed model becomes a new version of one registered model, the alias
`champion` moves to it, and the quality gate can read the champion's evaluation metrics back.

Versions carry labels linking them to the pipeline run and the data digest (filterable in the console) and
a version description holding their evaluation metrics as JSON (what the gate compares against).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from photo_detector.cloud.retry import with_retries
from photo_detector.cloud.settings import Settings
from photo_detector.cloud.vertex import init_vertex
from photo_detector.config import Config
from photo_detector.errors import PhotoDetectorError

log = logging.getLogger(__name__)

CHAMPION = "champion"
# Declared on every version, so a Vertex endpoint or batch prediction job can run the serve image as is
# (it answers the Vertex protocol on these routes: serving.app.Routes).
VERTEX_PREDICT_ROUTE, VERTEX_HEALTH_ROUTE, VERTEX_PORT = "/v1/predict", "/health", 8080


def _label(value: str) -> str:
    """Label values: lower-case letters, digits, '_' and '-', at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]", "-", value.lower())[:63]


def find_model(settings: Settings, cfg: Config) -> Any | None:
    from google.cloud import aiplatform

    init_vertex(settings)
    models = with_retries("listing registered models", lambda: aiplatform.Model.list(
        filter=f'display_name="{cfg.gcp.model_name}"'))
    return models[0] if models else None


def register_version(settings: Settings, cfg: Config, *, artifact_uri: str, serving_image: str,
                     metrics: dict[str, float], data_digest: str, pipeline_run: str, model_version: str) -> dict:
    """Upload a new version (of the existing model, if any) and move the champion alias to it."""
    from google.cloud import aiplatform

    if not artifact_uri.startswith("gs://"):
        raise PhotoDetectorError(f"cannot register {artifact_uri}: the Model Registry needs a gs:// model folder",
                                 "deploy a model stored in Cloud Storage (pipeline runs always are)")
    parent = find_model(settings, cfg)
    labels = {"app": "photo-detector", "pipeline_run": _label(pipeline_run or "manual"),
              "data_digest": _label(data_digest.removeprefix("sha256:")[:32]), "model_version": _label(model_version)}
    described = json.dumps({"metrics": metrics, "data_digest": data_digest, "pipeline_run": pipeline_run,
                            "model_version": model_version}, sort_keys=True)
    model = with_retries("uploading the model version", lambda: aiplatform.Model.upload(
        display_name=cfg.gcp.model_name, artifact_uri=artifact_uri, serving_container_image_uri=serving_image,
        serving_container_predict_route=VERTEX_PREDICT_ROUTE, serving_container_health_route=VERTEX_HEALTH_ROUTE,
        serving_container_ports=[VERTEX_PORT],
        # serve.gcs_allowed_prefixes reaches an endpoint or batch job's container as on Cloud Run (run_service)
        serving_container_environment_variables={"PHOTO_DETECTOR_GCS_ALLOWED_PREFIXES": ",".join(
            cfg.serve.gcs_allowed_prefixes)} if cfg.serve.gcs_allowed_prefixes else None,
        parent_model=parent.resource_name if parent else None, is_default_version=True,
        version_aliases=[CHAMPION], version_description=described, labels=labels, sync=True))
    info = {"resource_name": model.resource_name, "version_id": model.version_id, "aliases": [CHAMPION],
            "parent": parent.resource_name if parent else None}
    log.info("registered %s version %s as %s", model.resource_name, model.version_id, CHAMPION)
    return info


def champion_metrics(settings: Settings, cfg: Config) -> dict[str, float] | None:
    """The champion version's evaluation metrics, or None when no model is registered yet."""
    from google.api_core import exceptions as gexc
    from google.cloud import aiplatform

    parent = find_model(settings, cfg)
    if parent is None:
        return None
    name = f"{parent.resource_name}@{CHAMPION}"
    try:
        champion = with_retries("reading the champion", lambda: aiplatform.Model(model_name=name))
    except gexc.NotFound:
        return None
    try:
        return json.loads(champion.version_description)["metrics"]
    except (TypeError, ValueError, KeyError):
        raise PhotoDetectorError(f"the champion {name} has no metrics in its version description",
                                 "register it with photo-detector (deploy), or pass champion_metrics") from None


CLASSIFICATION_SCHEMA = "gs://google-cloud-aiplatform/schema/modelevaluation/classification_metrics_1.0.0.yaml"
CONFIDENCE_STEPS = [i / 100 for i in range(0, 100, 5)] + [0.96, 0.97, 0.98, 0.99]  # the schema's documented grid


def evaluation_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """An evaluation (`eval.json`) in the classification-metrics schema the console's Evaluate tab reads:
    AU-ROC, AU-PRC, log loss, the confusion matrix and metrics at the schema's confidence thresholds (read off
    the ROC points, whose thresholds are the model's calibrated probabilities)."""
    fpr, tpr, thr = result["roc_fpr"], result["roc_tpr"], result["roc_thresholds"]
    (tn, fp), (fn, tp) = result["confusion_matrix"]
    positives, negatives = tp + fn, tn + fp
    points = []
    for step in CONFIDENCE_STEPS:
        # ROC thresholds fall; the last point whose threshold is >= the step is the rate at that threshold.
        k = max((i for i, t in enumerate(thr) if t >= step), default=None)
        r, f = (tpr[k], fpr[k]) if k is not None else (0.0, 0.0)
        tp_k, fp_k = r * positives, f * negatives
        precision = tp_k / (tp_k + fp_k) if tp_k + fp_k else 1.0
        points.append({"confidenceThreshold": step, "recall": r, "precision": precision, "falsePositiveRate": f,
                       "f1Score": 2 * precision * r / (precision + r) if precision + r else 0.0,
                       "truePositiveCount": round(tp_k), "falsePositiveCount": round(fp_k),
                       "falseNegativeCount": round(positives - tp_k), "trueNegativeCount": round(negatives - fp_k)})
    out = {"auRoc": result["roc_auc"], "auPrc": result.get("average_precision"), "confidenceMetrics": points,
           "confusionMatrix": {"annotationSpecs": [{"id": str(i), "displayName": n}
                                                   for i, n in enumerate(result.get("class_names", []))],
                               "rows": result["confusion_matrix"]}}
    if "log_loss" in result:
        out["logLoss"] = result["log_loss"]
    return {k: v for k, v in out.items() if v is not None and v == v}  # NaN (one class) is not JSON


def import_evaluation(settings: Settings, model_resource: str, version_id: str, result: dict[str, Any], *,
                      pipeline_run: str = "") -> str:
    """Attach an evaluation to a registered model version (ModelService.ImportModelEvaluation), so the
    console's Evaluate tab shows it beside the version; returns the evaluation's resource name."""
    from google.cloud import aiplatform_v1
    from google.protobuf import json_format, struct_pb2

    client = settings.vertex_client(aiplatform_v1.ModelServiceClient)
    metrics = json_format.ParseDict(evaluation_metrics(result), struct_pb2.Value())
    metadata = json_format.ParseDict({"pipeline_job_id": pipeline_run, "evaluation_dataset_type": "image-folder",
                                      "split": result.get("split", ""), "images": result.get("n_images", 0),
                                      "threshold": result.get("threshold"),
                                      "robustness": {r["perturbation"]: r["accuracy"]
                                                     for r in result.get("robustness", [])},
                                      "worst_source": result.get("worst_source") or ""}, struct_pb2.Value())
    evaluation = aiplatform_v1.ModelEvaluation(
        display_name=f"{result.get('split', 'test')} split" + (f" ({pipeline_run})" if pipeline_run else ""),
        metrics_schema_uri=CLASSIFICATION_SCHEMA, metrics=metrics, metadata=metadata)
    parent = f"{model_resource}@{version_id}"
    made = with_retries("importing the model evaluation", lambda: client.import_model_evaluation(
        parent=parent, model_evaluation=evaluation))
    log.info("imported evaluation %s onto %s", made.name, parent)
    return made.name
