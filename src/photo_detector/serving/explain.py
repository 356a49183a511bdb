"""Where the model looks: occlusion sensitivity for one image, torch-free (`POST /v1/explain`).

The crop the model sees is cut into a grid x grid of cells; for each cell a copy of the image has that cell
painted with the normalisation's mean colour (a neutral grey, exactly 0 after normalisation, so the model
sees "nothing" there rather than a colour). The unchanged image and every occluded copy are one batch for
ONNX Runtime, and a cell's value is how much the ai_generated probability drops when it is hidden:
    delta[row][col] = p(image) - p(image with that cell grey)
Positive: that region pushed the score towards ai_generated; negative: towards real. It needs nothing but
the exported model and `/predict`'s preprocessing (no gradients, so no torch); benchmarks/serve.py reports
its cost against /predict's.

The batch runs in chunks of at most `serve.max_batch_files` images, the largest batch /predict/batch runs:
ONNX Runtime keeps its memory arena at the largest batch it has seen, and the 50 images of a 7 x 7 map in
one call took the service from 130 MiB to 1.5 GiB (over Cloud Run's 1 GiB), against 0.5 GiB in chunks of 16.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from photo_detector.inference import LoadedModel, onnx_probabilities
from photo_detector.preprocess import normalise
from photo_detector.serving.timing import Timing


def cell_edges(size: int, grid: int) -> list[int]:
    """Pixel boundaries of `grid` cells over `size` pixels: they tile it exactly, sizes differ by at most 1."""
    return [round(i * size / grid) for i in range(grid + 1)]


def occluded_batch(x: np.ndarray, grid: int, fill: np.ndarray) -> np.ndarray:
    """(1, C, H, W) normalised input -> (grid² + 1, C, H, W): the image, then one copy per cell (row-major)
    with that cell set to `fill` (one value per channel)."""
    _, channels, height, width = x.shape
    ys, xs = cell_edges(height, grid), cell_edges(width, grid)
    batch = np.repeat(x, grid * grid + 1, axis=0)
    patch = np.asarray(fill, np.float32).reshape(channels, 1, 1)
    for r in range(grid):
        for c in range(grid):
            batch[1 + r * grid + c, :, ys[r]:ys[r + 1], xs[c]:xs[c + 1]] = patch
    return batch


def crop_region(width: int, height: int, resize_size: int, crop_size: int) -> dict[str, float]:
    """Where the model's crop lies in the decoded image, as fractions of its width and height: the centre
    square of the shorter side, of which the centre crop_size / resize_size (preprocess steps 1-3). The page
    places the map there, so it covers the pixels it is about."""
    side = min(width, height)
    inner = side * crop_size / resize_size
    left, top = (width - inner) / 2, (height - inner) / 2
    return {"left": left / width, "top": top / height, "width": inner / width, "height": inner / height}


def occlusion_map(model: LoadedModel, crop: np.ndarray, grid: int, timing: Timing,
                  chunk: int) -> dict[str, Any]:
    """The sensitivity map of one uint8 HWC crop (what `/predict` feeds the model) and its probability; the
    batch runs `chunk` images per ONNX Runtime call."""
    pp = model.preprocess
    with timing.phase("occlude"):
        x = normalise([crop], pp)
        batch = occluded_batch(x, grid, np.zeros(3, np.float32))  # the mean colour, normalised, is 0
    with timing.phase("occluded_model"):  # not "model": /metrics' model-time histogram is about /predict calls
        probs = onnx_probabilities(model.session, batch, batch_size=chunk)
    base = float(probs[0])
    delta = (base - probs[1:]).reshape(grid, grid)
    rounded = np.round(delta, 6) + 0.0  # + 0.0: no "-0.0" in the JSON
    return {"probability": base, "grid": grid, "delta": rounded.tolist(),
            "max_abs_delta": round(float(np.abs(delta).max()), 6),
            "fill_rgb": [round(m * 255) for m in pp.mean]}
