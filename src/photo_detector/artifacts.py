"""Names of what a training run writes, and model.json as a typed, versioned record; torch-free so evaluate
and serve can use them."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from photo_detector.errors import PhotoDetectorError

BEST, LAST, ONNX, METADATA, HISTORY, CONFIG, LOGS = ("best.pt", "last.pt", "model.onnx", "model.json",
                                                     "metrics.csv", "config.yaml", "logs")


@dataclass(frozen=True)
class Preprocess:
    """The parameters of the preprocessing steps (the steps are in preprocess.py). Defined here, beside the
    record that stores them, so the deploy and gate images read model.json without numpy or Pillow."""

    store_size: int
    resize_size: int
    crop_size: int
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(int(d["store_size"]), int(d["resize_size"]), int(d["crop_size"]),
                   tuple(d["mean"]), tuple(d["std"]))  # type: ignore[arg-type]


# 1: the first layout; 2: adds `training` (epochs run, why training stopped, logs) and the export-from-
# checkpoint fields; 3: adds `calibration` (the temperature built into the graph, the chosen threshold and
# how it was chosen). Older versions are read (their new fields take defaults); newer ones are refused.
MODEL_FORMAT_VERSION = 3
_REQUIRED = ("model_file", "framework", "image_size", "preprocess", "thresholds")


@dataclass(frozen=True)
class ModelRecord:
    """model.json: what a model folder holds and how to run it. Written by export, read by evaluate, serve,
    score, deploy and the smoke test, always through this record (never by string keys)."""

    model_file: str
    framework: str
    image_size: int
    preprocess: Preprocess
    thresholds: dict[str, float]
    model_name: str = ""
    class_names: tuple[str, ...] = ("real", "ai_generated")
    config: dict[str, Any] = field(default_factory=dict)
    best_epoch: int | None = None
    val_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] | None = None
    data_digest: str = ""
    train_images: int | None = None
    val_images: int | None = None
    checkpoint_file: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    smoke_images: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)  # temperature, threshold, ECE before/after
    source_checkpoint: str | None = None
    source_checkpoint_sha256: str | None = None
    onnx_parity_max_abs_diff: float | None = None
    photo_detector_version: str = ""
    torch_version: str = ""
    created_at: str = ""
    format_version: int = MODEL_FORMAT_VERSION

    @property
    def classification_threshold(self) -> float:
        return float(self.thresholds.get("classification", 0.5))

    @property
    def temperature(self) -> float:
        """What the graph divides the network's logit by (1 for a model exported before calibration)."""
        return float(self.calibration.get("temperature", 1.0))

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = METADATA) -> ModelRecord:
        version = d.get("format_version")
        if not isinstance(version, int):
            raise PhotoDetectorError(f"{where} has no format_version", "it is not a photo-detector model.json; "
                                     "re-export the model (`photo-detector export` or training)")
        if version > MODEL_FORMAT_VERSION:
            raise PhotoDetectorError(f"{where} is format {version}; this photo-detector reads up to "
                                     f"{MODEL_FORMAT_VERSION}", "upgrade photo-detector to read this model")
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise PhotoDetectorError(f"{where} lacks {', '.join(missing)}", "re-export the model")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values["preprocess"] = Preprocess.from_dict(d["preprocess"])
        values["class_names"] = tuple(d.get("class_names", cls.class_names))
        values["thresholds"] = {k: float(v) for k, v in d["thresholds"].items() if isinstance(v, int | float)}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["preprocess"] = self.preprocess.to_dict()
        out["class_names"] = list(self.class_names)
        return out

    def replace(self, **changes: Any) -> ModelRecord:
        return dataclasses.replace(self, **changes)


def read_record(model_dir: str | Path) -> ModelRecord:
    """The model folder's model.json, checked: a clear error when the folder is not a model this version
    can run."""
    path = Path(model_dir) / METADATA
    if not path.is_file():
        raise PhotoDetectorError(f"{path} does not exist",
                                 "pass the --out folder of a finished `photo-detector train` run")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PhotoDetectorError(f"{path} is not valid JSON: {exc}", "re-run training") from None
    if not isinstance(raw, dict):
        raise PhotoDetectorError(f"{path} is not a JSON object", "re-run training")
    record = ModelRecord.from_dict(raw, str(path))
    if not (Path(model_dir) / record.model_file).is_file():
        raise PhotoDetectorError(f"{Path(model_dir) / record.model_file} is missing",
                                 "re-run training to export the model")
    return record


def write_record(model_dir: str | Path, record: ModelRecord) -> Path:
    from photo_detector.io import write_json_atomic

    return write_json_atomic(Path(model_dir) / METADATA, record.to_dict())
