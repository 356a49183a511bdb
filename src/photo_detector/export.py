"""ONNX export with a parity check: what evaluate gates and serve runs is exactly what training produced."""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from photo_detector import CLASS_NAMES, __version__
from photo_detector.artifacts import ONNX, ModelRecord, write_record
from photo_detector.config import Config
from photo_detector.errors import PhotoDetectorError
from photo_detector.inference import INPUT_NAME, OUTPUT_NAMES, onnx_probabilities, onnx_session
from photo_detector.io import atomic_path
from photo_detector.preprocess import Preprocess

log = logging.getLogger(__name__)


def spatial_means_as_pooling(onnx_file: str | Path) -> int:
    """Rewrite ReduceMean over (H, W) with keepdims on a 4-D tensor (timm's squeeze-excite) as
    GlobalAveragePool, the same operation; returns how many were rewritten.

    Why: ONNX Runtime's CPU layout optimiser runs GlobalAveragePool in its blocked NCHWc format but leaves the
    format for ReduceMean, so each of EfficientNet-B0's 16 squeeze-excite blocks paid two reorders.
    """
    import onnx
    from onnx import helper, numpy_helper, shape_inference

    model = onnx.load(str(onnx_file))
    graph = model.graph
    # Tensors an axes input may name, converted only when read (the initializers hold all the weights).
    known = {i.name: i for i in graph.initializer}
    known.update({n.output[0]: n.attribute[0].t for n in graph.node
                  if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    inferred = shape_inference.infer_shapes(model).graph
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in [*inferred.value_info, *inferred.input]}
    rewritten = 0
    for i, node in enumerate(list(graph.node)):
        if node.op_type != "ReduceMean" or rank.get(node.input[0]) != 4:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axes_tensor = known.get(node.input[1]) if len(node.input) > 1 else None
        axes = attrs.get("axes", None if axes_tensor is None else numpy_helper.to_array(axes_tensor))
        if attrs.get("keepdims", 1) != 1 or axes is None or sorted(int(a) % 4 for a in np.ravel(axes)) != [2, 3]:
            continue
        graph.node.remove(node)
        graph.node.insert(i, helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output),
                                              name=f"{node.name or node.output[0]}/as_pool"))
        rewritten += 1
    used = {name for n in graph.node for name in n.input}
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        graph.node.remove(node)  # the axes constants nothing reads any more
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_file))
    return rewritten


class _WithProbability(nn.Module):
    """Exported graph: calibrated logits (the network's divided by the fitted temperature) and their sigmoid
    probabilities, so every consumer (evaluate, serve, score, batch prediction) gets the calibrated
    probability from the graph itself and needs no post-processing math."""

    def __init__(self, model: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.inv_temperature = float(1.0 / temperature)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit = self.model(x)
        if self.inv_temperature != 1.0:
            logit = logit * self.inv_temperature
        return logit, torch.sigmoid(logit)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    max_abs_diff: float
    n_checked: int


def export_onnx(model: nn.Module, inputs: np.ndarray, path: str | Path, *, opset: int,
                tolerance: float, temperature: float = 1.0) -> ExportResult:
    """Export `model` (eval mode, fp32, CPU), its logits divided by `temperature`, to `path` and check it
    against torch on `inputs` (real images)."""
    path = Path(path)
    model = model.to("cpu", memory_format=torch.contiguous_format).float().eval()
    wrapper = _WithProbability(model, temperature).eval()
    example = torch.from_numpy(inputs[:2].copy())
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_file = tmp.with_suffix(".onnx")
        torch.onnx.export(
            wrapper, (example,), str(onnx_file), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAMES[0]: {0: "batch"}, OUTPUT_NAMES[1]: {0: "batch"}},
        )
        spatial_means_as_pooling(onnx_file)
        onnx_file.replace(tmp)
        with torch.inference_mode():
            expected = torch.cat([wrapper(torch.from_numpy(inputs[i:i + 64].copy()))[1]
                                  for i in range(0, len(inputs), 64)]).numpy()
        got = onnx_probabilities(onnx_session(tmp), inputs)
        diff = float(np.max(np.abs(expected - got))) if len(inputs) else 0.0
        if not diff <= tolerance:
            raise PhotoDetectorError(
                f"ONNX export of {path.name} disagrees with torch: max probability difference {diff:.2e} "
                f"> export.parity_tolerance {tolerance:.0e}", "report this; the export was not written")
    log.info("exported %s (parity on %d real images: max |dp| = %.2e)", path, len(inputs), diff)
    return ExportResult(path, diff, len(inputs))


def export_model_folder(model: nn.Module, out: str | Path, cfg: Config, pp: Preprocess, images: np.ndarray,
                        labels: np.ndarray, **extra: Any) -> ModelRecord:
    """Everything a deployable model folder holds besides checkpoints: `model.onnx` (parity-checked on real
    validation images), `model.json` and the smoke-test images the exported model itself chose. Training
    calls it with the best checkpoint's model; `images`/`labels` are validation squares (N, S, S, 3) uint8;
    `extra` sets what the caller knows (best epoch, metrics, data): ModelRecord fields, so a misspelt one
    fails here instead of being read as missing later."""
    from photo_detector.data.augment import eval_transform, uint8_nchw
    from photo_detector.smoke import write_smoke_images

    out = Path(out)
    model = model.to("cpu", memory_format=torch.contiguous_format).float().eval()
    calibration = calibrate(model, images, labels, pp, cfg)
    inputs = eval_transform(uint8_nchw(torch.from_numpy(np.array(images[:128]))), pp)
    exported = export_onnx(model, inputs.numpy().astype(np.float32), out / ONNX, opset=cfg.export.opset,
                           tolerance=cfg.export.parity_tolerance, temperature=calibration["temperature"])
    thresholds = {k: v for k, v in cfg.thresholds.__dict__.items() if v is not None}
    thresholds["classification"] = calibration["threshold"]
    record = ModelRecord(
        model_file=ONNX, framework="onnx", image_size=cfg.data.image_size, preprocess=pp, calibration=calibration,
        thresholds=thresholds, model_name=cfg.model.name, class_names=tuple(CLASS_NAMES),
        config=cfg.to_dict(), onnx_parity_max_abs_diff=exported.max_abs_diff, photo_detector_version=__version__,
        torch_version=torch.__version__, created_at=datetime.now(UTC).isoformat(timespec="seconds"), **extra)
    write_record(out, record)
    # Known images for the deploy smoke test, chosen by the exported model itself (needs model.json on disk).
    record = record.replace(smoke_images=write_smoke_images(out, images, labels))
    write_record(out, record)
    return record


@torch.inference_mode()
def _logits(model: nn.Module, images: np.ndarray, pp: Preprocess, batch: int = 64) -> np.ndarray:
    """The network's raw logits on uint8 squares (N, S, S, 3), read a batch at a time (memory-mapped
    stores stay on disk)."""
    from photo_detector.data.augment import eval_transform, uint8_nchw

    out = [np.zeros(0, np.float64)]
    for i in range(0, len(images), batch):
        x = eval_transform(uint8_nchw(torch.from_numpy(np.array(images[i:i + batch]))), pp)
        out.append(model(x).double().reshape(-1).numpy())
    return np.concatenate(out)


def calibrate(model: nn.Module, images: np.ndarray, labels: np.ndarray, pp: Preprocess,
              cfg: Config) -> dict[str, Any]:
    """Temperature and operating threshold, both from the validation split: the temperature (when
    export.calibrate) minimises the log loss; with thresholds.target_fpr the threshold is the lowest whose
    false-positive rate on validation is within the target, else thresholds.classification. Returns what
    model.json records (the numbers before and after, so the report can show what calibration did)."""
    from photo_detector.evalstats import fit_temperature, reliability, sigmoid, threshold_for_fpr

    labels = np.asarray(labels).astype(int)
    raw = _logits(model, images, pp)
    temperature = fit_temperature(raw, labels) if cfg.export.calibrate else 1.0
    before, after = sigmoid(raw), sigmoid(raw / temperature)
    bins = cfg.evaluate.calibration_bins
    out: dict[str, Any] = {"temperature": temperature, "val_images": len(labels),
                           "val_ece_before": reliability(before, labels, bins)["ece"],
                           "val_ece_after": reliability(after, labels, bins)["ece"],
                           "target_fpr": cfg.thresholds.target_fpr}
    target = cfg.thresholds.target_fpr
    if target is not None and (labels == 0).any():
        threshold = threshold_for_fpr(after, labels, target)
        out["threshold_rule"] = f"lowest threshold with validation FPR <= {target:g}"
    else:
        threshold = cfg.thresholds.classification
        out["threshold_rule"] = "thresholds.classification"
    real, ai = after[labels == 0], after[labels == 1]
    out.update(threshold=float(threshold),
               val_fpr=float(np.mean(real >= threshold)) if len(real) else float("nan"),
               val_tpr=float(np.mean(ai >= threshold)) if len(ai) else float("nan"))
    log.info("calibration on %d validation images: temperature %.3f (ECE %.4f -> %.4f); threshold %.4f (%s): "
             "validation FPR %.4f, TPR %.4f", len(labels), temperature, out["val_ece_before"], out["val_ece_after"],
             threshold, out["threshold_rule"], out["val_fpr"], out["val_tpr"])
    return out


# ---------------------------------------------------------------------------------------------------------
# A bare checkpoint (ours, the training guide's, Colab's) -> a deployable model folder

# The guide's model names its head `classifier`; some scripts `fc`; DataParallel/DDP prefix `module.`.
HEAD_ALIASES = ("classifier.", "fc.", "head.")


def checkpoint_state(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The model weights of a checkpoint file, keys in this package's names (`backbone.*`, `head.*`), and
    the file's SHA-256 (recorded in model.json as the export's source); the file is read once."""
    import hashlib

    if not path.is_file():
        raise PhotoDetectorError(f"checkpoint {path} does not exist", "pass the path of a best.pt")
    data = path.read_bytes()
    try:
        raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-torch files
        raise PhotoDetectorError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}",
                                 "pass a file written by torch.save (a state dict, or a dict holding one)") from None
    state = raw
    for key in ("model_state_dict", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PhotoDetectorError(f"checkpoint {path} holds no state dict",
                                 "save it with torch.save({'model_state_dict': model.state_dict()}, path)")
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        for alias in HEAD_ALIASES:
            if key.startswith(alias):
                key = "head." + key.removeprefix(alias)
        out[key] = value
    return out, hashlib.sha256(data).hexdigest()


def export_checkpoint(checkpoint: str | Path, out: str | Path, cfg: Config, data_dir: str | Path, *,
                      force: bool = False) -> ModelRecord:
    """Build the configured model, load the checkpoint into it (strictly), and write a deployable model
    folder: model.onnx (parity-checked), model.json, smoke images and best.pt in this package's format.

    `data_dir` holds a `val/{real,ai_generated}` split (an image folder or a verify-data output): its images
    check the ONNX parity, measure the validation metrics recorded in model.json, and give the smoke test its
    known images. They should be the validation images of the data the checkpoint was trained on."""
    from photo_detector.artifacts import BEST
    from photo_detector.data.augment import eval_transform, uint8_nchw
    from photo_detector.data.loader import Rows, batches_of, open_split
    from photo_detector.io import prepare_output_dir
    from photo_detector.metrics import binary_metrics
    from photo_detector.model import build_model

    checkpoint, out, data_dir = Path(checkpoint), Path(out), Path(data_dir)
    state, digest = checkpoint_state(checkpoint)
    model = build_model(cfg.model, load_pretrained=False)
    fits = f"does not fit model.name={cfg.model.name} with model.hidden_dim={cfg.model.hidden_dim}"
    how = "set model.name / model.hidden_dim to what it was trained with"
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc)[:200])
        raise PhotoDetectorError(f"checkpoint {checkpoint} {fits}: {first}", how) from None
    if result.missing_keys or result.unexpected_keys:
        shown = ", ".join([*(f"missing {k}" for k in result.missing_keys[:3]),
                           *(f"unexpected {k}" for k in result.unexpected_keys[:3])])
        raise PhotoDetectorError(f"checkpoint {checkpoint} {fits} ({len(result.missing_keys)} missing, "
                                 f"{len(result.unexpected_keys)} unexpected keys: {shown})", how)
    model.eval()
    store = open_split(data_dir, "val", cfg)  # a verify-data output is read batch by batch, never whole
    size = store.size
    pp = Preprocess(size, cfg.data.resize_size, cfg.data.image_size, tuple(cfg.data.mean),
                    tuple(cfg.data.std))  # type: ignore[arg-type]
    with torch.inference_mode():
        probs = torch.sigmoid(torch.cat([model(eval_transform(uint8_nchw(torch.from_numpy(store.read(b))), pp))
                                         for b in batches_of(len(store), 64)])).numpy()
    val = {f"val_{k}": v for k, v in binary_metrics(probs, store.labels, cfg.thresholds.classification).items()}
    prepare_output_dir(out, force=force)
    with atomic_path(out / BEST) as tmp:
        torch.save({"model_state_dict": model.state_dict(), "source": str(checkpoint)}, tmp)
    images, labels = Rows(store), store.labels  # read a batch at a time by calibration, parity and smoke
    meta = export_model_folder(model, out, cfg, pp, images, labels, checkpoint_file=BEST,
                               val_metrics=val, val_images=len(store), source_checkpoint=str(checkpoint),
                               source_checkpoint_sha256=digest, data_digest="")
    log.info("exported %s to %s: val accuracy %.4f on %d images from %s", checkpoint, out, val["val_accuracy"],
             len(store), data_dir)
    return meta
