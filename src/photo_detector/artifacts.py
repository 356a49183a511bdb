"""Names and readers of what a training run writes; torch-free so evaluate and serve can use them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from photo_detector.errors import PhotoDetectorError

BEST, LAST, ONNX, METADATA, HISTORY, CONFIG = ("best.pt", "last.pt", "model.onnx", "model.json",
                                               "metrics.csv", "config.yaml")


def read_metadata(model_dir: str | Path) -> dict[str, Any]:
    """The model folder's model.json, with a clear error when the folder is not a trained model."""
    path = Path(model_dir) / METADATA
    if not path.is_file():
        raise PhotoDetectorError(f"{path} does not exist",
                                 "pass the --out folder of a finished `photo-detector train` run")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PhotoDetectorError(f"{path} is not valid JSON: {exc}", "re-run training") from None
    if not (Path(model_dir) / meta.get("model_file", ONNX)).is_file():
        raise PhotoDetectorError(f"{Path(model_dir) / meta.get('model_file', ONNX)} is missing",
                                 "re-run training to export the model")
    return meta
