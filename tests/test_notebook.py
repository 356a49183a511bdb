"""notebooks/train_colab.ipynb runs top to bottom on CPU (nbclient), parameters from PD_* variables: data,
verify, train with checkpoints in a work folder (Drive on Colab), export; run again, it resumes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_SET = ("model.pretrained=false,model.hidden_dim=32,data.image_size=32,data.crop_pct=0.8,data.batch_size=16,"
            "train.epochs=1,train.warmup_epochs=0,verify.min_images_per_class=2")


def run_notebook(env: dict[str, str], until: str | None = None) -> str:
    """Execute the notebook (or its cells up to the first whose source contains `until`); return the text
    it printed."""
    import nbclient
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / "train_colab.ipynb", as_version=4)
    if until is not None:
        stop = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and until in c.source)
        nb.cells = nb.cells[:stop + 1]
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
                                ).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.get("outputs", []))


@pytest.mark.slow
def test_the_colab_notebook_trains_exports_and_resumes(sample_dir: Path, tmp_path: Path) -> None:
    env = {"PD_INSTALL": "0", "PD_DATA": str(sample_dir), "PD_WORK": str(tmp_path / "drive"), "PD_CONFIG": "sample",
           "PD_SET": TINY_SET, "PD_DEPLOY": "none", "HF_HUB_OFFLINE": "1"}
    text = run_notebook(env)
    assert "a new run" in text and "epoch   1  train_loss" in text
    export = tmp_path / "drive" / "export"
    assert (export / "model.onnx").is_file() and (export / "model.json").is_file()
    assert (tmp_path / "drive" / "run" / "last.pt").is_file()

    assert "not deployed" in text
    again = run_notebook(env, until='"train", "--config"')  # a new Colab session, up to training
    assert "resuming from" in again and "best epoch 1/1" in again
