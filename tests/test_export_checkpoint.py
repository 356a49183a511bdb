"""`photo-detector export CHECKPOINT`: a bare best.pt from anywhere becomes a model folder deploy accepts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "photo_detector", *args], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))


@pytest.fixture(scope="module")
def guide_checkpoint(smoke_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The training guide's format: its model calls the head `classifier`, and the file also holds the
    epoch, the optimizer state and the validation accuracy."""
    ours = torch.load(smoke_model / "best.pt", weights_only=True)["model_state_dict"]
    guide = {("classifier." + k.removeprefix("head.")) if k.startswith("head.") else k: v for k, v in ours.items()}
    path = tmp_path_factory.mktemp("colab") / "best_model.pt"
    torch.save({"epoch": 7, "model_state_dict": guide, "optimizer_state_dict": {"state": {}, "param_groups": []},
                "val_acc": 0.91}, path)
    return path


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(tiny_config().to_yaml())
    return path


def test_a_guide_checkpoint_becomes_a_folder_that_deploy_local_accepts(
        guide_checkpoint: Path, tiny_yaml: Path, smoke_data: Path, smoke_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "exported"
    r = cli("export", str(guide_checkpoint), "--out", str(out), "--data", str(smoke_data), "--config", str(tiny_yaml))
    assert r.returncode == 0, r.stderr
    assert "deploy it: photo-detector deploy" in r.stdout
    meta = json.loads((out / "model.json").read_text())
    assert meta["source_checkpoint"] == str(guide_checkpoint) and len(meta["source_checkpoint_sha256"]) == 64
    assert set(meta["smoke_images"]) == {"real", "ai_generated"} and meta["onnx_parity_max_abs_diff"] < 1e-3
    assert 0.0 <= meta["val_metrics"]["val_accuracy"] <= 1.0
    assert meta["val_images"] == len(list((smoke_data / "val").rglob("*.png")))
    # The same weights as the model they came from: the exported ONNX scores like the original one.
    from photo_detector.evaluate import predict_files

    files = sorted((smoke_data / "test" / "real").iterdir())[:4]
    np.testing.assert_allclose(predict_files(out, files), predict_files(smoke_model, files), atol=1e-5)

    deployed = cli("deploy", "--model", str(out), "--local")
    assert deployed.returncode == 0, deployed.stderr
    assert "smoke test passed" in deployed.stdout

    again = cli("export", str(guide_checkpoint), "--out", str(out), "--data", str(smoke_data), "--config",
                str(tiny_yaml))
    assert again.returncode == 2 and "--force" in again.stderr, "an existing folder is never overwritten silently"


def test_checkpoints_that_do_not_fit_are_named(guide_checkpoint: Path, tiny_yaml: Path, smoke_data: Path,
                                               tmp_path: Path) -> None:
    wrong = cli("export", str(guide_checkpoint), "--out", str(tmp_path / "a"), "--data", str(smoke_data),
                "--config", str(tiny_yaml), "--set", "model.hidden_dim=64")
    assert wrong.returncode == 2 and "does not fit model.name=" in wrong.stderr and "model.hidden_dim" in wrong.stderr
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    bad = cli("export", str(junk), "--out", str(tmp_path / "b"), "--data", str(smoke_data))
    assert bad.returncode == 2 and f"cannot read checkpoint {junk}" in bad.stderr and "Traceback" not in bad.stderr
    missing = cli("export", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "c"), "--data", str(smoke_data))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
