"""Shared fixtures: a tiny deterministic dataset and a config small enough to train in seconds on 2 cores."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network: there is none here

from photo_detector.config import Config, load_config
from photo_detector.data.sample import generate_sample


def pytest_configure(config: pytest.Config) -> None:
    """Names derived from the project stay deterministic: the checked-in spec is compiled without one."""
    for var in ("PHOTO_DETECTOR_PROJECT", "CLOUD_ML_PROJECT_ID", "GOOGLE_CLOUD_PROJECT"):
        os.environ.pop(var, None)


TINY = {
    "data.image_size": 32, "data.crop_pct": 0.8, "data.batch_size": 16, "data.num_workers": 2,
    "model.pretrained": False, "model.hidden_dim": 32,
    "train.epochs": 2, "train.warmup_epochs": 0, "train.learning_rate": 0.003,
    "verify.min_images_per_class": 2,
    # Force the CPU float path the whole suite trains with: auto (default), fp32, or bf16 (autocast on).
    "train.precision": os.environ.get("PHOTO_DETECTOR_TEST_PRECISION", "auto"),
}


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 images per class, 40 px: train 22, val 4, test 4 per class."""
    return generate_sample(tmp_path_factory.mktemp("data") / "sample", per_class=30, size=40, seed=7).root


def tiny_config(**overrides: object) -> Config:
    return load_config(None, {**TINY, **overrides})


@pytest.fixture(scope="session")
def trained_dir(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny training run, shared by the evaluate and export tests."""
    from photo_detector.train import run_train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    run_train(sample_dir, out, tiny_config())
    return out


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 images per class, 40 px: the data the smoke model is constructed from."""
    return generate_sample(tmp_path_factory.mktemp("data60") / "sample", per_class=60, size=40, seed=7).root


@pytest.fixture(scope="session")
def smoke_model(tmp_path_factory: pytest.TempPathFactory, smoke_data: Path) -> Path:
    """A model folder that classifies a known image of each class correctly by construction, not by luck.

    A tiny model's training outcome depends on the CPU's float path (on one AMD EPYC it collapsed to p = 0.585
    for every image), so nothing here is trained by gradient descent. The network is seeded; its BatchNorm
    statistics are measured on the training images (untouched, an untrained backbone's eval features all but
    vanish: norm 5e-5); then only the last layer is set, from the validation images' penultimate features:
    w = mean(ai) - mean(real), threshold halfway. The mean logit of each class then lies on its own side of 0
    (by +-|w|^2 / 2), so at least one image of each class is classified correctly, which is all a deploy smoke
    test needs. Export, metadata and smoke images come from the library call training makes."""
    import torch

    from photo_detector.data.augment import eval_transform, uint8_nchw
    from photo_detector.data.layout import discover_split
    from photo_detector.data.store import load_store, store_size_for
    from photo_detector.export import export_model_folder
    from photo_detector.model import build_model
    from photo_detector.preprocess import Preprocess

    cfg = tiny_config()
    data = smoke_data
    size = store_size_for(discover_split(data, "train").paths, cfg.data.resize_size)
    train, store = (load_store(discover_split(data, split), size) for split in ("train", "val"))
    pp = Preprocess(size, cfg.data.resize_size, cfg.data.image_size, tuple(cfg.data.mean), tuple(cfg.data.std))

    def model_input(images):
        return eval_transform(uint8_nchw(torch.from_numpy(images)), pp)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, load_pretrained=False)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a plain average over what it sees
    with torch.no_grad():
        model.train()(model_input(train.images))
    with torch.inference_mode():
        features = model.eval().head[:4](model.backbone(model_input(store.images)))
        labels = torch.from_numpy(store.labels)
        mean_real, mean_ai = features[labels == 0].mean(0), features[labels == 1].mean(0)
        w = mean_ai - mean_real
        scale = 8.0 / float(w @ w)  # class-mean logits at +-4: clear of the threshold, far from saturation
        model.head[4].weight.copy_(scale * w.unsqueeze(0))
        model.head[4].bias.fill_(-scale * float(w @ (mean_ai + mean_real)) / 2)
    out = tmp_path_factory.mktemp("runs") / "smoke-model"
    meta = export_model_folder(model, out, cfg, pp, store.images, store.labels, data_digest="constructed")
    torch.save({"model_state_dict": model.state_dict()}, out / "best.pt")  # for the export-from-checkpoint tests
    assert set(meta.smoke_images) == {"real", "ai_generated"}, meta.smoke_images
    return out


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI's own `main`, in this process, with `env` on top of os.environ: what a subprocess call shows
    (exit status, stdout, stderr with the log lines) without paying ~2 s of interpreter and Google-client
    imports per call. tests/test_cli.py keeps the real console script covered."""
    import contextlib
    import io
    import logging
    from unittest import mock

    from photo_detector.cli import main

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    try:
        with mock.patch.dict(os.environ, env or {}), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse: usage errors
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def texture_onnx(path: Path, size: int, bias: float, scale: float) -> None:
    """An ONNX "detector" that knows one thing: P(ai_generated) = sigmoid(scale * (bias - E)), E the mean
    absolute difference of horizontally neighbouring input values. The sample data's real photos carry sensor
    noise (high E) and its ai_generated images are smooth renders (low E), so it separates them as stored; any
    shrink or blur erases the noise and every real photo then looks ai_generated. A model that collapses
    under `downscale_0.5` by construction, whatever the CPU (no training involved)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: list[int] | list[float], dtype: type = np.int64) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(value, dtype=dtype), name)

    nodes = [
        helper.make_node("Slice", ["image", "one", "end", "axis3"], ["right"]),
        helper.make_node("Slice", ["image", "zero", "last", "axis3"], ["left"]),
        helper.make_node("Sub", ["right", "left"], ["diff"]),
        helper.make_node("Abs", ["diff"], ["adiff"]),
        helper.make_node("ReduceMean", ["adiff", "axes"], ["energy"], keepdims=0),
        helper.make_node("Sub", ["bias", "energy"], ["margin"]),
        helper.make_node("Mul", ["margin", "scale"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
    ]
    inits = [const("one", [1]), const("zero", [0]), const("end", [size]), const("last", [size - 1]),
             const("axis3", [3]), const("axes", [1, 2, 3]), const("bias", [bias], np.float32),
             const("scale", [scale], np.float32)]
    graph = helper.make_graph(
        nodes, "texture", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch"]),
         helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="session")
def texture_model(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    """A model folder around `texture_onnx`, its bias halfway between the class means of E on the validation
    split (from the data, as smoke_model's last layer is)."""
    from photo_detector.artifacts import ONNX, ModelRecord, Preprocess, write_record
    from photo_detector.data.layout import discover_split
    from photo_detector.preprocess import preprocess_files

    pp = Preprocess(40, 40, 32)
    val = discover_split(sample_dir, "val")
    x = preprocess_files(list(val.paths), pp)
    energy = np.abs(x[:, :, :, 1:] - x[:, :, :, :-1]).mean(axis=(1, 2, 3))
    labels = np.asarray(val.labels)
    real, ai = float(energy[labels == 0].mean()), float(energy[labels == 1].mean())
    assert real > ai, (real, ai)  # what the sample data is made to be
    out = tmp_path_factory.mktemp("runs") / "texture-model"
    out.mkdir()
    texture_onnx(out / ONNX, pp.crop_size, bias=(real + ai) / 2, scale=8.0 / (real - ai))
    write_record(out, ModelRecord(model_file=ONNX, framework="onnx", image_size=pp.crop_size, preprocess=pp,
                                  thresholds={"classification": 0.5, "high_confidence": 0.8, "low_confidence": 0.3},
                                  model_name="texture"))
    return out
