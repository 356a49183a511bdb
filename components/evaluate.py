"""evaluate: the exported ONNX model + the serving preprocessing on the files verify-data kept of a split,
as stored and under the robustness suite, with intervals, calibration and per-source slices."""

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from photo_detector.components._factory import stage_component


@stage_component("evaluate")
def evaluate(
    model: Input[Model],
    dataset: Input[Dataset],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    report: Output[HTML],
    summary: Output[Markdown],
    evaluation: Output[Artifact],
    config_overrides: dict,
    split: str = "test",
):
    """`dataset` is verify-data's output, so quarantined or broken files are never scored (Metrics records how
    many were left out); confusion matrix and ROC curve render in the Vertex console, `summary` shows the
    robustness and source tables, and `evaluation` holds eval.json and the tables (CSV, Markdown, HTML) that
    deploy imports onto the registered model version."""
    from photo_detector import stages

    stages.evaluate(model, dataset, metrics, classification_metrics, report, summary, evaluation, split=split,
                    config_overrides=config_overrides)
