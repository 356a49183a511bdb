"""train: the packed dataset -> Model (checkpoint, ONNX, metadata), per-epoch metrics and an HTML report."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from photo_detector.components._factory import stage_component


@stage_component("train")
def train(
    verified: Input[Dataset],
    model: Output[Model],
    epoch_metrics: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[HTML],
    data_digest: str,
    seed: int,
    image_size: int,
    batch_size: int,
    epochs: int,
    max_minutes: float,
    gpus: int,
    learning_rate: float,
    weight_decay: float,
    freeze_backbone: bool,
    classification_threshold: float,
    experiment: str,
    pipeline_job: str,
    config_overrides: dict,
):
    """`data_digest` is an input so the cache key changes whenever the data's content does. `max_minutes`
    bounds training (stops between epochs, keeps the best); the task itself is retried by Vertex. `gpus`:
    one training process per GPU. With an `experiment`, every epoch is also logged as the time series of
    this run (`pipeline_job`, the run's resource name) in Vertex AI TensorBoard."""
    from photo_detector import stages

    stages.train(verified, model, epoch_metrics, metrics, report, data_digest=data_digest,
                 config_overrides=config_overrides, seed=seed, image_size=image_size, batch_size=batch_size,
                 epochs=epochs, max_minutes=max_minutes, gpus=gpus, learning_rate=learning_rate,
                 weight_decay=weight_decay, freeze_backbone=freeze_backbone,
                 classification_threshold=classification_threshold, experiment=experiment,
                 pipeline_job=pipeline_job)
