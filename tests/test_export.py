"""The ONNX graph pass that keeps squeeze-excite in ONNX Runtime's fast CPU layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from photo_detector.export import spatial_means_as_pooling
from photo_detector.inference import onnx_session


def _graph(path: Path) -> Path:
    """x (1,4,5,6) -> four ReduceMeans; only the first is a global spatial mean with keepdims."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 6])
    axes = {name: helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64,
                                                                                        [len(v)], v))
            for name, v in {"hw": [2, 3], "neg": [-1, -2], "c": [1]}.items()}
    nodes = [*axes.values(),
             helper.make_node("ReduceMean", ["x", "hw"], ["spatial"], keepdims=1),
             helper.make_node("ReduceMean", ["x", "neg"], ["spatial_neg"], keepdims=1),
             helper.make_node("ReduceMean", ["x", "hw"], ["flat"], keepdims=0),
             helper.make_node("ReduceMean", ["x", "c"], ["channels"], keepdims=1)]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in
            {"spatial": [1, 4, 1, 1], "spatial_neg": [1, 4, 1, 1], "flat": [1, 4], "channels": [1, 1, 5, 6]}.items()]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outs), opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, path)
    return path


def test_only_keepdims_spatial_means_become_pooling_and_outputs_are_unchanged(tmp_path: Path) -> None:
    path = _graph(tmp_path / "g.onnx")
    x = np.random.default_rng(0).standard_normal((1, 4, 5, 6)).astype(np.float32)
    before = onnx_session(path).run(None, {"x": x})

    assert spatial_means_as_pooling(path) == 2
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert ops.count("GlobalAveragePool") == 2 and ops.count("ReduceMean") == 2
    assert ops.count("Constant") == 2  # the hw axes are still read by the keepdims=0 mean; neg is gone
    for want, got in zip(before, onnx_session(path).run(None, {"x": x}), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_the_exported_detector_has_no_spatial_reduce_mean(trained_dir: Path) -> None:
    """Every squeeze-excite block of the trained model's export runs as GlobalAveragePool."""
    ops = [n.op_type for n in onnx.load(trained_dir / "model.onnx").graph.node]
    assert "ReduceMean" not in ops
    assert ops.count("GlobalAveragePool") == 17  # 16 squeeze-excite blocks + the backbone's head pool


def test_smoke_model_classifies_its_known_images_on_this_cpu(smoke_model: Path) -> None:
    """The construction in conftest.py holds on whatever CPU runs the suite: both known images exist, each
    on its own side of the threshold, and the ONNX model reproduces the recorded probabilities."""
    import json

    from PIL import Image

    from photo_detector.inference import LoadedModel
    from photo_detector.preprocess import to_model_input

    meta = json.loads((smoke_model / "model.json").read_text())
    model = LoadedModel.load(smoke_model)
    for name, expected_side in (("real", False), ("ai_generated", True)):
        entry = meta["smoke_images"][name]
        square = np.asarray(Image.open(smoke_model / entry["file"]).convert("RGB"))[None]
        p = float(model.probabilities(to_model_input(square, model.preprocess))[0])
        assert (p >= meta["thresholds"]["classification"]) is expected_side
        assert abs(p - entry["probability"]) < 1e-4
