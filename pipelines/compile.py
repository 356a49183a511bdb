"""`photo-detector compile`: the pipeline spec Vertex AI runs, written atomically and deterministically."""

from pathlib import Path

import yaml

from photo_detector.config import Config
from photo_detector.io import atomic_path

DEFAULT_OUTPUT = Path("compiled") / "training_pipeline.yaml"


def compile_pipeline(cfg: Config, output: str | Path = DEFAULT_OUTPUT, project: str | None = None) -> Path:
    """Compile the DAG bound to `cfg` (images, resources, parameter defaults) to `output`. Names derived from
    the project (registry, data bucket) use `project`, or the placeholder PROJECT_ID when it is None."""
    from kfp import compiler

    from photo_detector.pipelines.training_pipeline import build_pipeline

    output = Path(output)
    with atomic_path(output) as tmp:
        yaml_tmp = tmp.with_suffix(".yaml")  # kfp picks the format from the suffix
        try:
            compiler.Compiler().compile(build_pipeline(cfg, project), str(yaml_tmp))
            yaml_tmp.replace(tmp)
        finally:
            yaml_tmp.unlink(missing_ok=True)
    return output


def load_spec(path: str | Path) -> dict:
    """A compiled file as a dict (the pipeline spec document)."""
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)
