"""`photo-detector score`: a folder or gs:// prefix of images → scores.csv, in one process.

For sets that do not need a Vertex batch job (thousands, not millions) and need no running service. The
same model, preprocessing and decision rule as the service, without HTTP: images are read and decoded in a
thread pool (Pillow and the GCS client release the GIL) while batches are scored. A file that cannot be
read or decoded gets its error in its row; it never stops the run.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from photo_detector.data.layout import IMAGE_EXTENSIONS
from photo_detector.decision import confidence_for, label_for
from photo_detector.errors import PhotoDetectorError
from photo_detector.inference import LoadedModel
from photo_detector.io import atomic_path, usable_cores
from photo_detector.preprocess import MAX_IMAGE_PIXELS, ImageRejected, Preprocess, decode_crop, normalise, open_image
from photo_detector.progress import progress

log = logging.getLogger(__name__)
COLUMNS = ["path", "prediction", "probability", "confidence", "error"]


@dataclass
class ScoreSummary:
    scored: int
    failed: int
    counts: dict[str, int]
    out: Path


def list_sources(source: str) -> list[str]:
    """The images of a local folder (recursively), sorted. A gs:// prefix is listed at the edge (the CLI,
    through photo_detector.cloud.batch.list_images), which hands `score` the listing and a reader."""
    root = Path(source)
    if not root.is_dir():
        raise PhotoDetectorError(f"{source} is not a folder", "pass a folder of images or a gs://BUCKET/PREFIX")
    found = sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not found:
        raise PhotoDetectorError(f"no images under {source}",
                                 f"the folder must hold {', '.join(sorted(IMAGE_EXTENSIONS))} files")
    return found


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def _load(path: str, pp: Preprocess, read: Callable[[str], bytes]) -> np.ndarray | str:
    """The model's crop of one image, or the one-line reason it has none."""
    try:
        img = open_image(read(path), max_pixels=MAX_IMAGE_PIXELS, draft_size=pp.store_size)
        return decode_crop(img, pp)
    except ImageRejected as exc:
        return exc.message
    except Exception as exc:  # unreadable file or object: reported in its row
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def _batches(paths: list[str], pp: Preprocess, batch: int, workers: int,
             read: Callable[[str], bytes]) -> Iterator[list[tuple[str, object]]]:
    with ThreadPoolExecutor(workers) as pool:
        loaded = pool.map(lambda p: (p, _load(p, pp, read)), paths)
        chunk: list[tuple[str, object]] = []
        for item in loaded:
            chunk.append(item)
            if len(chunk) == batch:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def score(model_dir: str | Path, source: str, out: str | Path, *, batch: int = 16, workers: int | None = None,
          paths: list[str] | None = None, read: Callable[[str], bytes] | None = None) -> ScoreSummary:
    """Score every image under `source` into the CSV `out` (written to a temporary name, then renamed).

    `paths` and `read` score a store other than this disk: the caller lists it and reads one path's bytes
    (the CLI does so for gs://), so the library calls no cloud API. `workers` (reading and decoding threads)
    defaults to one per core, where decoding is the work (the CLI passes 8 for gs://, where waiting on the
    network is). Batching gains little on CPU: decode and model time per image dominate (benchmarks/score.py:
    about 1x a keep-alive /predict loop on 2 cores)."""
    if workers is None:
        workers = usable_cores()
    model = LoadedModel.load(Path(model_dir))
    thresholds = model.thresholds
    paths = list_sources(source) if paths is None else paths
    counts = {"real": 0, "ai_generated": 0}
    failed = 0
    out = Path(out)
    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f, \
            progress(total=len(paths), desc=f"score {source}", unit="img") as bar:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for chunk in _batches(paths, model.preprocess, batch, workers, read or _read):
            good = [(p, sq) for p, sq in chunk if isinstance(sq, np.ndarray)]
            probs = model.probabilities(normalise([sq for _, sq in good], model.preprocess)) if good else []
            scored = {p: float(pr) for (p, _), pr in zip(good, probs, strict=True)}
            for p, sq in chunk:
                if p in scored:
                    label = label_for(scored[p], thresholds)
                    counts[label] += 1
                    writer.writerow([p, label, f"{scored[p]:.6f}", confidence_for(scored[p], thresholds), ""])
                else:
                    failed += 1
                    writer.writerow([p, "", "", "", sq])
            bar.update(len(chunk))
    log.info("scored %d images (%d real, %d ai_generated), %d failed, into %s", sum(counts.values()),
             counts["real"], counts["ai_generated"], failed, out)
    return ScoreSummary(sum(counts.values()), failed, counts, out)
