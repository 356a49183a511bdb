"""deploy: the Cloud Run service for the gated model (a dry run writes the exact service it would apply)."""

from kfp.dsl import Artifact, Input, Metrics, Model, Output

from photo_detector.components._factory import stage_component


@stage_component("deploy")
def deploy(
    model: Input[Model],
    metrics: Input[Metrics],
    deployment: Output[Artifact],
    serve_image: str,
    service_name: str,
    region: str,
    project: str,
    dry_run: bool,
    pipeline_run: str,
    pipeline_job: str,
    config_overrides: dict,
    evaluation: Input[Artifact] = None,
):
    """Runs only under the gate's dsl.If; `deployment` records the service, revisions, model version and the
    registry version the model became (with `metrics`, the evaluation the gate passed; `evaluation`, the
    evaluate stage's eval.json, is imported onto that version as a ModelEvaluation). `serve_image` is fixed
    at compile time to the serve image of the same build, so the spec shows what will be rolled out. The
    service goes to the project and region of the run (`pipeline_job`) unless `project`/`region` name others."""
    from photo_detector import stages

    stages.deploy(model, metrics, deployment, serve_image=serve_image, dry_run=dry_run, pipeline_run=pipeline_run,
                  pipeline_job=pipeline_job, config_overrides=config_overrides, evaluation=evaluation,
                  service_name=service_name,
                  region=region, project=project)
