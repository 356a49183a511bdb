"""model.json as a typed record: written by export, read back equal, versions checked when read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from photo_detector.artifacts import MODEL_FORMAT_VERSION, ModelRecord, read_record
from photo_detector.errors import PhotoDetectorError


def test_a_trained_model_round_trips(trained_dir: Path) -> None:
    raw = json.loads((trained_dir / "model.json").read_text())
    record = read_record(trained_dir)
    assert raw["format_version"] == record.format_version == MODEL_FORMAT_VERSION
    assert json.loads(json.dumps(record.to_dict())) == raw, "every field written is a field of the record"
    assert record.preprocess.crop_size == record.image_size and record.training["stopped_by"] in (
        "epochs", "early_stopping", "budget")
    assert 0.0 <= record.classification_threshold <= 1.0


def test_versions_are_checked_when_read(trained_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(trained_dir, folder)
    raw = json.loads((folder / "model.json").read_text())

    def write(d: dict) -> None:
        (folder / "model.json").write_text(json.dumps(d))

    write({**raw, "format_version": MODEL_FORMAT_VERSION + 1})
    with pytest.raises(PhotoDetectorError, match="upgrade photo-detector"):
        read_record(folder)
    write({k: v for k, v in raw.items() if k != "format_version"})
    with pytest.raises(PhotoDetectorError, match="no format_version"):
        read_record(folder)
    write({k: v for k, v in raw.items() if k != "preprocess"})
    with pytest.raises(PhotoDetectorError, match="lacks preprocess"):
        read_record(folder)
    # Format 1 (before `training`): still read, the new fields take their defaults.
    write({**{k: v for k, v in raw.items() if k != "training"}, "format_version": 1})
    assert read_record(folder).training == {}
    write(["not", "an", "object"])  # type: ignore[arg-type]
    with pytest.raises(PhotoDetectorError, match="not a JSON object"):
        read_record(folder)


def test_a_misspelt_field_fails_at_export_time() -> None:
    with pytest.raises(TypeError, match="val_metric"):
        ModelRecord(model_file="m.onnx", framework="onnx", image_size=8, preprocess=None,  # type: ignore[arg-type]
                    thresholds={}, val_metric={})  # type: ignore[call-arg]
