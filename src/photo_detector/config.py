"""The one config: a dataclass tree loaded from the packaged defaults, a user YAML and CLI overrides.

Why a typed tree instead of a dict: every key is validated once, here, so stages can trust what they read,
and a mistyped key fails at load time naming itself and its valid siblings instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from photo_detector.errors import ConfigError

PROFILES_PACKAGE = "photo_detector.configs"


def _spec(*, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
          choices: tuple[Any, ...] | None = None, length: int | None = None) -> dict[str, Any]:
    return {"lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices, "length": length}


def _f(default: Any, **spec: Any) -> Any:
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=_spec(**spec))
    return field(default=default, metadata=_spec(**spec))


@dataclass
class DataConfig:
    image_size: int = _f(224, lo=16, hi=1024)
    crop_pct: float = _f(0.875, lo=0.0, hi=1.0, lo_open=True)
    batch_size: int = _f(64, lo=2, hi=4096)
    num_workers: int = _f(4, lo=0, hi=256)
    mean: list[float] = _f([0.485, 0.456, 0.406], lo=0.0, hi=1.0, length=3)
    std: list[float] = _f([0.229, 0.224, 0.225], lo=0.0, hi=1.0, lo_open=True, length=3)

    @property
    def resize_size(self) -> int:
        """Side the eval path resizes to before center-cropping `image_size`."""
        return max(self.image_size, round(self.image_size / self.crop_pct))


@dataclass
class VerifyConfig:
    min_images_per_class: int = _f(100, lo=1, hi=10_000_000)
    min_class_balance: float = _f(0.3, lo=0.0, hi=1.0)
    max_image_pixels: int = _f(89_478_485, lo=1024, hi=268_435_456)
    near_duplicate_distance: int = _f(4, lo=-1, hi=32)
    near_duplicate_max_mad: float = _f(4.0, lo=0.0, hi=255.0)
    shortcut_max_score: float = _f(0.7, lo=0.5, hi=1.0)
    shortcut_policy: str = _f("error", choices=("error", "align"))
    align_jpeg_quality: int = _f(90, lo=1, hi=100)
    leakage: str = _f("quarantine", choices=("quarantine", "error"))
    max_quarantine_fraction: float = _f(0.05, lo=0.0, hi=1.0)
    workers: int = _f(0, lo=0, hi=256)
    shard_mb: float = _f(128.0, lo=0.001, hi=4096.0)


@dataclass
class ModelConfig:
    name: str = _f("efficientnet_b0")
    pretrained: bool = _f(True)
    weights: str | None = _f(None)
    hidden_dim: int = _f(512, lo=1, hi=16384)
    dropout: float = _f(0.3, lo=0.0, hi=1.0)
    freeze_backbone: bool = _f(False)


@dataclass
class TrainConfig:
    epochs: int = _f(15, lo=1, hi=10000)
    optimizer: str = _f("adamw", choices=("adamw",))
    learning_rate: float = _f(0.001, lo=0.0, hi=10.0, lo_open=True)
    weight_decay: float = _f(0.0001, lo=0.0, hi=1.0)
    scheduler: str = _f("cosine", choices=("cosine", "constant"))
    warmup_epochs: int = _f(2, lo=0, hi=10000)
    early_stopping_patience: int = _f(5, lo=0, hi=10000)
    grad_clip_norm: float = _f(1.0, lo=0.0, hi=1e6)
    checkpoint_monitor: str = _f("val_accuracy", choices=("val_accuracy", "val_f1", "val_loss"))
    checkpoint_mode: str = _f("max", choices=("max", "min"))
    device: str = _f("auto", choices=("auto", "cpu", "cuda"))
    precision: str = _f("auto", choices=("auto", "fp32", "bf16", "fp16"))
    channels_last: bool = _f(True)
    max_minutes: float = _f(180.0, lo=0.0, hi=1e6)
    # Training processes, one per GPU (DDP); data.batch_size stays the global batch. On the CPU: gloo processes.
    gpus: int = _f(1, lo=1, hi=16)
    # Mid-epoch checkpoints (step, sampler position, every RNG) at most this far apart; 0 = epoch ends only.
    checkpoint_every_minutes: float = _f(10.0, lo=0.0, hi=1e6)
    # Machines (Vertex AI CustomJob replicas) with train.gpus processes each; one torch.distributed job.
    nodes: int = _f(1, lo=1, hi=64)
    # Boot-disk MiB per training process for shards staged whole from Cloud Storage (data under /gcs/): two
    # windows of 16 shards of verify.shard_mb by default; 0 = read rows through the mount.
    stage_mb: int = _f(4096, lo=0, hi=10**7)


@dataclass
class ColorJitterConfig:
    brightness: float = _f(0.2, lo=0.0, hi=1.0)
    contrast: float = _f(0.2, lo=0.0, hi=1.0)
    saturation: float = _f(0.1, lo=0.0, hi=1.0)
    hue: float = _f(0.05, lo=0.0, hi=0.5)


@dataclass
class AugmentationConfig:
    horizontal_flip: float = _f(0.5, lo=0.0, hi=1.0)
    rotation_degrees: float = _f(15.0, lo=0.0, hi=180.0)
    random_crop: bool = _f(True)
    jpeg_probability: float = _f(0.0, lo=0.0, hi=1.0)
    jpeg_quality: list[int] = _f([60, 100], lo=1, hi=100, length=2)
    downscale_probability: float = _f(0.0, lo=0.0, hi=1.0)
    downscale_range: list[float] = _f([0.25, 0.75], lo=0.05, hi=1.0, length=2)
    blur_probability: float = _f(0.0, lo=0.0, hi=1.0)
    blur_sigma: list[float] = _f([0.2, 1.5], lo=0.0, hi=20.0, length=2)
    color_jitter: ColorJitterConfig = field(default_factory=ColorJitterConfig)


@dataclass
class ThresholdsConfig:
    classification: float = _f(0.5, lo=0.0, hi=1.0, lo_open=True)
    high_confidence: float = _f(0.8, lo=0.0, hi=1.0)
    low_confidence: float = _f(0.3, lo=0.0, hi=1.0)
    target_fpr: float | None = _f(None, lo=0.0, hi=0.5, lo_open=True)


@dataclass
class EvaluateConfig:
    perturbations: list[str] = _f(["jpeg_q90", "jpeg_q75", "jpeg_q50", "webp_q80", "downscale_0.5",
                                   "downscale_0.25", "crop_0.8", "blur_1.0"])
    max_images_per_perturbation: int = _f(2000, lo=0, hi=100_000_000)
    bootstrap_samples: int = _f(1000, lo=0, hi=100_000)
    confidence: float = _f(0.95, lo=0.5, hi=0.999)
    calibration_bins: int = _f(15, lo=2, hi=1000)
    workers: int = _f(0, lo=0, hi=256)


@dataclass
class GateConfig:
    min_accuracy: float = _f(0.85, lo=0.0, hi=1.0)
    min_f1: float = _f(0.80, lo=0.0, hi=1.0)
    champion_from_registry: bool = _f(True)
    fail_run_on_reject: bool = _f(True)
    use_lower_bound: bool = _f(False)
    min_source_accuracy: float | None = _f(None, lo=0.0, hi=1.0)
    robustness: dict[str, float] = _f({"jpeg_q75": 0.80, "webp_q80": 0.80}, lo=0.0, hi=1.0)


@dataclass
class ExportConfig:
    opset: int = _f(18, lo=13, hi=23)
    parity_tolerance: float = _f(1e-4, lo=0.0, hi=1.0, lo_open=True)
    calibrate: bool = _f(True)


@dataclass
class ImagesConfig:
    registry: str = _f("")  # "" = {gcp.region}-docker.pkg.dev/{project}/{gcp.docker_repository}
    tag: str = _f("0.1.0")


@dataclass
class PipelineConfig:
    name: str = _f("photo-detector-training")
    data_uri: str = _f("")  # "" = gs://{project}-photo-detector-data/cifake
    train_accelerator: str = _f("NVIDIA_TESLA_T4")
    # The train machine per GPU (train.gpus of them): 4 CPUs and 15 GB is n1-standard-4, T4's usual host;
    # 2 GPUs get n1-standard-8, 4 get n1-standard-16.
    train_cpu_per_gpu: int = _f(4, lo=1, hi=96)
    train_memory_gb_per_gpu: int = _f(15, lo=1, hi=1024)
    retries: int = _f(2, lo=0, hi=10)

    def train_machine(self, gpus: int) -> tuple[str, str]:
        """The train task's CPU and memory limits for `gpus` GPUs: Vertex picks the machine type from them."""
        return str(self.train_cpu_per_gpu * gpus), f"{self.train_memory_gb_per_gpu * gpus}G"


@dataclass
class ServeConfig:
    max_body_bytes: int = _f(10 * 1024 * 1024, lo=1024, hi=1 << 30)
    max_batch_files: int = _f(16, lo=1, hi=256)
    max_image_pixels: int = _f(40_000_000, lo=1024, hi=268_435_456)
    request_timeout_seconds: float = _f(10.0, lo=0.1, hi=3600.0)
    threads: int = _f(0, lo=0, hi=256)
    explain_grid: int = _f(7, lo=2, hi=10)  # /v1/explain: grid x grid occluded copies + the image
    # gs:// prefixes a {"gcs_uri"} instance may name; [] = none on Cloud Run, the model's bucket under Vertex
    gcs_allowed_prefixes: list[str] = _f([])


@dataclass
class GcpConfig:
    project: str = _f("")
    region: str = _f("us-central1")
    pipeline_root: str = _f("")
    service_account: str = _f("")
    docker_repository: str = _f("photo-detector-images")
    kfp_repository: str = _f("photo-detector-pipelines")
    experiment: str = _f("")
    tensorboard: str = _f("photo-detector")  # display name of the Vertex AI TensorBoard instance setup creates
    model_name: str = _f("photo-detector")


@dataclass
class DeployConfig:
    service_name: str = _f("photo-detector")
    project: str = _f("")  # "" = the project of the run (or gcp.project)
    region: str = _f("")   # "" = the region of the run (or gcp.region)
    cpu: str = _f("1")
    memory: str = _f("1Gi")
    min_instances: int = _f(0, lo=0, hi=1000)
    max_instances: int = _f(3, lo=1, hi=1000)
    concurrency: int = _f(8, lo=1, hi=1000)
    timeout_seconds: int = _f(30, lo=1, hi=3600)
    api_keys_secret: str = _f("photo-detector-api-keys")
    smoke_key_secret: str = _f("photo-detector-smoke-key")
    auto_deploy: bool = _f(False)
    dry_run: bool = _f(False)


@dataclass
class Config:
    seed: int = _f(42, lo=0, hi=2**32 - 1)
    data: DataConfig = field(default_factory=DataConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    thresholds: ThresholdsConfig = field(default_factory=ThresholdsConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    gcp: GcpConfig = field(default_factory=GcpConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def get(self, dotted: str) -> Any:
        node: Any = self
        for part in dotted.split("."):
            node = getattr(node, part)
        return node


# ---------------------------------------------------------------------------------------------------------
# Loading


def leaf_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the config tree, e.g. `train.epochs`."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys += leaf_keys(tp, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _unknown_key(key: str, valid: list[str], source: str) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], [v.rsplit(".", 1)[-1] for v in valid], n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return ConfigError(f"unknown config key '{key}' in {source}",
                       f"{hint}valid keys here: {', '.join(valid)}")


@functools.cache
def _map_keys(cls: type = Config, prefix: str = "") -> set[str]:
    """Dotted keys whose value is a mapping of the user's own names (gate.robustness): replaced whole by an
    override, never merged key by key like a section."""
    out: set[str] = set()
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            out |= _map_keys(tp, f"{prefix}{name}.")
        elif typing.get_origin(tp) is dict:
            out.add(f"{prefix}{name}")
    return out


def _merge(base: dict[str, Any], over: dict[str, Any], source: str, prefix: str = "") -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise _unknown_key(dotted, [f"{prefix}{k}" for k in base], source)
        if isinstance(base[key], dict) and dotted not in _map_keys():
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{dotted}' in {source} must be a mapping of "
                                  f"{', '.join(base[key])}", f"got {value!r}")
            out[key] = _merge(base[key], value, source, f"{dotted}.")
        else:
            out[key] = value
    return out


def _read_yaml(path: Path, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist",
                          f"pass a YAML file or a profile name ({', '.join(profile_names())})") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}", "fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {source} must hold a mapping of keys", f"got {type(data).__name__}")
    return data


def profile_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(PROFILES_PACKAGE).iterdir()
                  if p.name.endswith(".yaml") and p.name != "default.yaml")


def _profile_path(name: str) -> Path:
    return Path(str(resources.files(PROFILES_PACKAGE).joinpath(f"{name}.yaml")))


def parse_override(text: str) -> tuple[str, Any]:
    """Parse `key.sub=value` (value in YAML syntax, so 3, 0.1, true, null and [1,2] keep their types)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like KEY=VALUE", "e.g. --set train.epochs=3")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    node: Any = value
    for part in reversed(dotted.split(".")):
        node = {part: node}
    return node


def load_config(config: str | Path | None = None,
                overrides: dict[str, Any] | list[str] | None = None) -> Config:
    """Defaults <- profile name or YAML file <- overrides (`{"train.epochs": 3}` or `["train.epochs=3"]`)."""
    default_path = _profile_path("default")
    merged = _read_yaml(default_path, "the packaged default.yaml")
    if config is not None:
        cfg_path = Path(config)
        if not cfg_path.exists() and str(config) in profile_names():
            cfg_path, source = _profile_path(str(config)), f"profile '{config}'"
        else:
            source = str(cfg_path)
        merged = _merge(merged, _read_yaml(cfg_path, source), source)
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    for key, value in (overrides or {}).items():
        merged = _merge(merged, _nest(key, value), "overrides")
    return from_dict(merged)


def from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a Config from a complete nested dict (e.g. one stored in a checkpoint)."""
    cfg = _build(Config, data, "")
    _validate_cross(cfg)
    return cfg


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise _unknown_key(f"{prefix}{key}", [f"{prefix}{n}" for n in names], "config")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}{f.name}"
        tp = hints[f.name]
        if f.name not in data:
            continue
        if dataclasses.is_dataclass(tp):
            value = data[f.name]
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{dotted}' must be a mapping", f"got {value!r}")
            kwargs[f.name] = _build(tp, value, f"{dotted}.")
        else:
            kwargs[f.name] = _check(dotted, data[f.name], tp, f.metadata)
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check(key: str, value: Any, tp: Any, spec: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):  # Optional[X]
        if value is None:
            return None
        inner = next(a for a in args if a is not type(None))
        return _check(key, value, inner, spec)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping", f"got {value!r}")
        return {str(k): _check(f"{key}.{k}", v, args[1], spec) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}' must be a list", f"got {value!r}")
        if spec.get("length") is not None and len(value) != spec["length"]:
            raise ConfigError(f"config key '{key}' must have {spec['length']} items", f"got {len(value)}")
        return [_check(f"{key}[{i}]", v, args[0], spec) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false", f"got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer", f"got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key '{key}' must be a number", f"got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string", f"got {value!r}")
    else:  # pragma: no cover - guards future field types
        raise ConfigError(f"config key '{key}' has unsupported type {_type_name(tp)}")
    choices, lo, hi = spec.get("choices"), spec.get("lo"), spec.get("hi")
    if choices is not None and value not in choices:
        raise ConfigError(f"config key '{key}' must be one of {', '.join(map(str, choices))}", f"got {value!r}")
    if lo is not None and (value < lo or (spec.get("lo_open") and value == lo)):
        op = ">" if spec.get("lo_open") else ">="
        raise ConfigError(f"config key '{key}' must be {op} {lo}", f"got {value!r}")
    if hi is not None and value > hi:
        raise ConfigError(f"config key '{key}' must be <= {hi}", f"got {value!r}")
    return value


def _validate_cross(cfg: Config) -> None:
    """Rules that involve two keys."""
    mode_for = {"val_accuracy": "max", "val_f1": "max", "val_loss": "min"}
    want = mode_for[cfg.train.checkpoint_monitor]
    if cfg.train.checkpoint_mode != want:
        raise ConfigError(f"config key 'train.checkpoint_mode' is '{cfg.train.checkpoint_mode}' but "
                          f"'train.checkpoint_monitor' {cfg.train.checkpoint_monitor} improves when it goes "
                          f"{'up' if want == 'max' else 'down'}", f"set train.checkpoint_mode={want}")
    if cfg.thresholds.low_confidence > cfg.thresholds.high_confidence:
        raise ConfigError("config key 'thresholds.low_confidence' must be <= 'thresholds.high_confidence'",
                          f"got {cfg.thresholds.low_confidence} > {cfg.thresholds.high_confidence}")
    if cfg.train.warmup_epochs >= cfg.train.epochs and cfg.train.warmup_epochs > 0:
        raise ConfigError(f"config key 'train.warmup_epochs' ({cfg.train.warmup_epochs}) must be smaller than "
                          f"'train.epochs' ({cfg.train.epochs})", "lower warmup_epochs or raise epochs")
    for key in ("augmentation.jpeg_quality", "augmentation.downscale_range", "augmentation.blur_sigma"):
        lo, hi = cfg.get(key)
        if lo > hi:
            raise ConfigError(f"config key '{key}' must be [low, high] with low <= high", f"got {cfg.get(key)}")
    from photo_detector.perturb import parse_all

    parse_all(cfg.evaluate.perturbations)
    missing = [name for name in cfg.gate.robustness if name not in cfg.evaluate.perturbations]
    if missing:
        raise ConfigError(f"config key 'gate.robustness' names {', '.join(missing)}, which "
                          "'evaluate.perturbations' does not list",
                          "add it to evaluate.perturbations, or remove it from gate.robustness")
    if cfg.deploy.min_instances > cfg.deploy.max_instances:
        raise ConfigError("config key 'deploy.min_instances' must be <= 'deploy.max_instances'",
                          f"got {cfg.deploy.min_instances} > {cfg.deploy.max_instances}")
    if cfg.gcp.docker_repository == cfg.gcp.kfp_repository:
        raise ConfigError(f"config keys 'gcp.docker_repository' and 'gcp.kfp_repository' are both "
                          f"'{cfg.gcp.kfp_repository}'", "Artifact Registry repository ids are unique per project "
                          "and region: give the Docker and the KFP repository different ids")
    if cfg.gcp.pipeline_root and not cfg.gcp.pipeline_root.startswith("gs://"):
        raise ConfigError("config key 'gcp.pipeline_root' must be a gs:// URI", f"got {cfg.gcp.pipeline_root!r}")
    for key in ("gcp.region", "gcp.docker_repository", "gcp.kfp_repository", "images.tag", "pipeline.name",
                "deploy.service_name"):
        if not str(cfg.get(key)).strip():
            raise ConfigError(f"config key '{key}' is empty", "set it to a non-empty value")
    if cfg.model.pretrained and cfg.model.weights is not None and not cfg.model.weights.strip():
        raise ConfigError("config key 'model.weights' is empty", "use null for the hub default or a path")
