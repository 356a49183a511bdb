"""The training DAG: import data -> verify-data -> train (T4) -> evaluate -> quality-gate -> [deploy].

Parameters carry the config's names and defaults (`photo_detector.stages.PIPELINE_PARAMETERS`); any other
config key can be set through `config_overrides` ({"train.warmup_epochs": 1}). `build_pipeline(cfg)` binds a
config (images, resources, defaults); `training_pipeline` is the one built from the packaged defaults.
"""

from typing import Any

from kfp import dsl

from photo_detector.cloud.naming import data_uri as default_data_uri
from photo_detector.cloud.naming import image_uri
from photo_detector.components._factory import rebuild
from photo_detector.components.deploy import deploy
from photo_detector.components.evaluate import evaluate
from photo_detector.components.fingerprint import fingerprint
from photo_detector.components.quality_gate import quality_gate
from photo_detector.components.train import train
from photo_detector.components.verify_data import verify_data
from photo_detector.config import Config, load_config

DESCRIPTION = ("Detector of AI-generated product photos: verify the data, train EfficientNet-B0 on a T4, "
               "evaluate the exported ONNX model, gate on accuracy/F1, deploy to Cloud Run.")


TRAIN_NODES_ENV = "PHOTO_DETECTOR_TRAIN_NODES"  # how the replicas learn train.nodes (stages.train reads it)


def multi_node_train(train_op: Any, cfg: Config) -> Any:
    """The train component as a Vertex AI CustomJob of train.nodes replicas (google-cloud-pipeline-components
    puts the first in workerpool0 and the others in workerpool1), each an n1-standard machine with
    train.gpus accelerators. The replicas run the same command; parallel.rendezvous turns Vertex's
    CLUSTER_SPEC into one torch.distributed job and only the primary writes the outputs. Compile-time: the
    replica count, machine and accelerators are fixed in the spec (the gpus parameter must keep its
    compiled value)."""
    try:
        from google_cloud_pipeline_components.v1.custom_job import create_custom_training_job_from_component
    except ImportError:
        from photo_detector.errors import PhotoDetectorError

        raise PhotoDetectorError(f"train.nodes={cfg.train.nodes} compiles the train task as a Vertex AI CustomJob, "
                                 "which needs google-cloud-pipeline-components",
                                 "pip install 'photo-detector[multinode]', or set train.nodes=1") from None
    cpus = cfg.pipeline.train_cpu_per_gpu * cfg.train.gpus
    return create_custom_training_job_from_component(
        train_op, display_name="train", replica_count=cfg.train.nodes, machine_type=f"n1-standard-{cpus}",
        accelerator_type=cfg.pipeline.train_accelerator, accelerator_count=cfg.train.gpus,
        env=[{"name": TRAIN_NODES_ENV, "value": str(cfg.train.nodes)}])


def build_pipeline(cfg: Config | None = None, project: str | None = None, *, local: bool = False) -> Any:
    """The pipeline bound to `cfg` (and `project`, for derived names): its images, the train task's resources
    and every parameter default. `local=True` for kfp local, which cannot resolve the job resource-name
    placeholder that tells the gate and deploy tasks the project and region of the run on Vertex."""
    cfg = cfg or load_config()
    job = "" if local else dsl.PIPELINE_JOB_RESOURCE_NAME_PLACEHOLDER
    serve_image = image_uri(cfg, "serve", project)
    fingerprint_op, verify_op, train_op, evaluate_op, gate_op, deploy_op = (
        rebuild(c, cfg, project) for c in (fingerprint, verify_data, train, evaluate, quality_gate, deploy))
    p, d = cfg.pipeline, cfg.deploy
    cpu, memory = p.train_machine(cfg.train.gpus)
    multi_node = cfg.train.nodes > 1 and not local  # kfp local runs the plain component on this machine
    if multi_node:
        train_op = multi_node_train(train_op, cfg)

    @dsl.pipeline(name=p.name, description=DESCRIPTION)
    def training_pipeline(
        data_uri: str = default_data_uri(cfg, project),
        seed: int = cfg.seed,
        image_size: int = cfg.data.image_size,
        batch_size: int = cfg.data.batch_size,
        epochs: int = cfg.train.epochs,
        max_minutes: float = cfg.train.max_minutes,
        gpus: int = cfg.train.gpus,
        train_cpu: str = cpu,
        train_memory: str = memory,
        learning_rate: float = cfg.train.learning_rate,
        weight_decay: float = cfg.train.weight_decay,
        freeze_backbone: bool = cfg.model.freeze_backbone,
        classification_threshold: float = cfg.thresholds.classification,
        min_accuracy: float = cfg.gate.min_accuracy,
        min_f1: float = cfg.gate.min_f1,
        champion_metrics: dict = {},  # noqa: B006 - kfp parameter default, never mutated
        champion_from_registry: bool = cfg.gate.champion_from_registry,
        eval_split: str = "test",
        auto_deploy: bool = d.auto_deploy,
        deploy_dry_run: bool = d.dry_run,
        service_name: str = d.service_name,
        region: str = d.region,
        project: str = d.project,
        experiment: str = cfg.gcp.experiment,
        config_overrides: dict = {},  # noqa: B006 - kfp parameter default, never mutated
    ) -> None:
        data = dsl.importer(artifact_uri=data_uri, artifact_class=dsl.Dataset, reimport=False)
        data.set_display_name("import dataset")

        # Never cached: listings only, seconds even for CIFAKE; it is what notices new content behind an
        # unchanged URI. verify-data, train and evaluate are cached on it (and the parameters).
        fp = fingerprint_op(data_uri=data_uri)
        fp.set_display_name("fingerprint data").set_caching_options(False).set_retry(p.retries)
        verified = verify_op(dataset=data.output, image_size=image_size, config_overrides=config_overrides,
                             fingerprint=fp.outputs["fingerprint"])
        verified.set_display_name("verify data").set_retry(p.retries)

        trained = train_op(
            verified=verified.outputs["verified"], data_digest=verified.outputs["digest"], seed=seed,
            image_size=image_size, batch_size=batch_size, epochs=epochs, max_minutes=max_minutes, gpus=gpus,
            learning_rate=learning_rate,
            weight_decay=weight_decay, freeze_backbone=freeze_backbone,
            classification_threshold=classification_threshold, experiment=experiment, pipeline_job=job,
            config_overrides=config_overrides)
        # Retried like the other stages: an attempt resumes from the last checkpoint an earlier one saved.
        trained.set_display_name("train").set_retry(p.retries)
        if not multi_node:
            # One DDP process per GPU. KFP cannot compute a resource from a parameter, so the machine's CPUs and
            # memory are parameters too: `submit/schedule --param gpus=N` scales them (pipeline.train_machine);
            # in the console, set all three (the README's table).
            trained.set_accelerator_type(p.train_accelerator).set_accelerator_limit(gpus)
            trained.set_cpu_limit(train_cpu).set_memory_limit(train_memory)

        # The verified dataset, not the import: quarantined or broken files are never scored.
        evaluated = evaluate_op(model=trained.outputs["model"], dataset=verified.outputs["verified"],
                                split=eval_split, config_overrides=config_overrides)
        evaluated.set_display_name("evaluate").set_retry(p.retries)

        gate = gate_op(metrics=evaluated.outputs["metrics"], min_accuracy=min_accuracy, min_f1=min_f1,
                       champion_metrics=champion_metrics, champion_from_registry=champion_from_registry,
                       pipeline_job=job, config_overrides=config_overrides)
        # Never cached: it reads the registry's champion, which changes between runs. No retries: a rejection
        # is final (API calls inside retry on their own).
        gate.set_display_name("quality gate").set_caching_options(False)

        # Deploy only when the gate passed and the run asks for it (both conditions show in the console).
        with dsl.If(gate.outputs["Output"] == True, name="gate-passed"), \
                dsl.If(auto_deploy == True, name="auto-deploy"):  # noqa: E712 - kfp conditions, not Python bools
            deployed = deploy_op(model=trained.outputs["model"], metrics=evaluated.outputs["metrics"],
                                 evaluation=evaluated.outputs["evaluation"],
                                 serve_image=serve_image, service_name=service_name, region=region, project=project,
                                 dry_run=deploy_dry_run, pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                 pipeline_job=job,
                                 config_overrides=config_overrides)
            # Never cached: a cache hit would report a rollout that did not happen.
            deployed.set_display_name("deploy to Cloud Run").set_caching_options(False)

    return training_pipeline


training_pipeline = build_pipeline()
