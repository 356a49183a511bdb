"""verify-data: check the dataset (layout, full decode, counts), pack it for training, digest its content."""

from typing import NamedTuple

from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from photo_detector.components._factory import stage_component


@stage_component("verify")
def verify_data(
    dataset: Input[Dataset],
    verified: Output[Dataset],
    report: Output[Markdown],
    metrics: Output[Metrics],
    image_size: int,
    config_overrides: dict,
    fingerprint: str,
) -> NamedTuple("Outputs", [("digest", str)]):
    """Fails the run on any error finding. Cached: `fingerprint` (from listings) is part of its cache key, so
    it re-runs when any file changes; `digest` keys the train step's cache on content."""
    from photo_detector import stages

    return (stages.verify_data(dataset, verified, report, metrics, image_size=image_size,
                               config_overrides=config_overrides, fingerprint=fingerprint),)
