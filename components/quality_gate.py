"""quality-gate: pass/fail on the evaluation metrics (and the champion's, when given); fails closed."""

from kfp.dsl import Artifact, Input, Metrics, Output

from photo_detector.components._factory import stage_component


@stage_component("gate")
def quality_gate(
    metrics: Input[Metrics],
    decision: Output[Artifact],
    min_accuracy: float,
    min_f1: float,
    champion_metrics: dict,
    champion_from_registry: bool,
    pipeline_job: str,
    config_overrides: dict,
) -> bool:
    """`decision` lists every check with its value, threshold and result; the returned pass/fail drives
    dsl.If. (A single `Output`, not a named one: kfp local resolves only that form inside conditions.)"""
    from photo_detector import stages

    return stages.quality_gate(metrics, decision, champion_metrics=champion_metrics, pipeline_job=pipeline_job,
                               config_overrides=config_overrides, min_accuracy=min_accuracy, min_f1=min_f1,
                               champion_from_registry=champion_from_registry)
