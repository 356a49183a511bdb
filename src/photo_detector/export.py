"""ONNX export with a parity check: what evaluate gates and serve runs is exactly what training produced."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from photo_detector.errors import PhotoDetectorError
from photo_detector.inference import INPUT_NAME, OUTPUT_NAMES, onnx_probabilities, onnx_session
from photo_detector.io import atomic_path

log = logging.getLogger(__name__)



class _WithProbability(nn.Module):
    """Exported graph: logits and sigmoid probabilities, so consumers need no post-processing math."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit = self.model(x)
        return logit, torch.sigmoid(logit)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    max_abs_diff: float
    n_checked: int


def export_onnx(model: nn.Module, inputs: np.ndarray, path: str | Path, *, opset: int,
                tolerance: float) -> ExportResult:
    """Export `model` (eval mode, fp32, CPU) to `path` and check it against torch on `inputs` (real images)."""
    path = Path(path)
    model = model.to("cpu", memory_format=torch.contiguous_format).float().eval()
    wrapper = _WithProbability(model).eval()
    example = torch.from_numpy(inputs[:2].copy())
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_file = tmp.with_suffix(".onnx")
        torch.onnx.export(
            wrapper, (example,), str(onnx_file), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAMES[0]: {0: "batch"}, OUTPUT_NAMES[1]: {0: "batch"}},
        )
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
