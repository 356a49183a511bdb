"""evaluate: the exported ONNX model + the serving preprocessing on the files verify-data kept of a split."""

from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from photo_detector.components._factory import stage_component


@stage_component("evaluate")
def evaluate(
    model: Input[Model],
    dataset: Input[Dataset],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    report: Output[HTML],
    split: str = "test",
):
    """`dataset` is verify-data's output, so quarantined or broken files are never scored (Metrics records how
    many were left out); confusion matrix and ROC curve render in the Vertex console."""
    from photo_detector import stages

    stages.evaluate(model, dataset, metrics, classification_metrics, report, split=split)
