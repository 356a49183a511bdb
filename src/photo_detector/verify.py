"""The verify-data stage: decide whether a dataset deserves training, then pack it for the trainer.

Every file is read once: its bytes feed the content digest and a full decode into the packed store, so a
file that only has a valid header still fails here, before any GPU time is spent. Problems are collected as
findings (every bad file named), not raised one at a time; any finding of severity `error` fails the stage
after the report is written.
"""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from photo_detector import CLASS_NAMES, SPLITS
from photo_detector.config import Config
from photo_detector.data.layout import SplitFiles, discover_split
from photo_detector.data.packed import combine_digest, write_packed
from photo_detector.data.store import ImageStore, _workers
from photo_detector.errors import DataError, PhotoDetectorError
from photo_detector.io import write_json_atomic, write_text_atomic
from photo_detector.preprocess import decode_square
from photo_detector.progress import progress

log = logging.getLogger(__name__)

REPORT_JSON, REPORT_MD = "verify_report.json", "verify_report.md"
PACKED_SPLITS = ("train", "val")  # what training reads; test stays raw files for the evaluate stage


@dataclass
class Finding:
    check: str
    severity: str  # "error" stops the pipeline, "warning" is reported
    message: str
    paths: list[str] = field(default_factory=list)


@dataclass
class VerifyResult:
    root: Path
    out_dir: Path
    digest: str
    counts: dict[str, dict[str, int]]
    findings: list[Finding]
    seconds: float

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def n_images(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def metrics(self) -> dict[str, float]:
        """Flat numbers for a KFP Metrics artifact: counts per split and class, findings, throughput."""
        out: dict[str, float] = {f"{s}_{c}": float(n) for s, cs in self.counts.items() for c, n in cs.items()}
        out.update(images=float(self.n_images), errors=float(len(self.errors)),
                   warnings=float(len(self.warnings)))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"root": str(self.root), "digest": self.digest, "passed": not self.errors, "counts": self.counts,
                "findings": [asdict(f) for f in self.findings], "seconds": round(self.seconds, 3)}

    def markdown(self) -> str:
        lines = [f"# Data verification: {'PASSED' if not self.errors else 'FAILED'}", "",
                 f"- dataset: `{self.root}`", f"- digest: `{self.digest}`",
                 f"- images: {self.n_images} in {self.seconds:.1f}s", "",
                 "| split | " + " | ".join(CLASS_NAMES) + " |", "|---|" + "---:|" * len(CLASS_NAMES)]
        lines += [f"| {s} | " + " | ".join(str(c.get(n, 0)) for n in CLASS_NAMES) + " |"
                  for s, c in self.counts.items()]
        lines += ["", f"## Findings ({len(self.errors)} errors, {len(self.warnings)} warnings)", ""]
        if not self.findings:
            lines.append("None.")
        for f in self.findings:
            lines.append(f"- **{f.severity}** `{f.check}`: {f.message}")
            lines += [f"  - `{p}`" for p in f.paths[:20]]
            if len(f.paths) > 20:
                lines.append(f"  - ... and {len(f.paths) - 20} more (see the JSON report)")
        return "\n".join(lines) + "\n"


def _discover(root: Path, findings: list[Finding]) -> dict[str, SplitFiles]:
    splits: dict[str, SplitFiles] = {}
    for split in SPLITS:
        try:
            splits[split] = discover_split(root, split)
        except DataError as exc:
            if not root.is_dir():
                raise
            findings.append(Finding("layout", "error", str(exc)))
    return splits


def _largest_side(files: SplitFiles, resize_size: int) -> int:
    largest = 0
    for path in files.paths:
        try:
            with Image.open(path) as img:
                largest = max(largest, min(img.size))
        except Exception:
            continue
        if largest >= resize_size:
            return resize_size
    return max(1, min(largest, resize_size))


def _read_split(files: SplitFiles, size: int, num_workers: int, root: Path,
                findings: list[Finding]) -> tuple[ImageStore, list[tuple[str, str]]]:
    """Hash and fully decode every file of a split (threads: hashing and Pillow release the GIL)."""
    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    ok = np.ones(len(files), dtype=bool)
    digests: list[tuple[str, str]] = [("", "")] * len(files)
    bad: list[tuple[str, str]] = []

    def read(i: int) -> None:
        path = files.paths[i]
        rel = path.relative_to(root).as_posix()
        try:
            data = path.read_bytes()
            digests[i] = (rel, hashlib.sha256(data).hexdigest())
            if not data:
                raise ValueError("zero-byte file")
            images[i] = decode_square(data, size)
        except Exception as exc:
            ok[i] = False
            bad.append((rel, f"{type(exc).__name__}: {exc}"))

    with ThreadPoolExecutor(_workers(num_workers)) as pool, \
            progress(total=len(files), desc=f"verify {files.split}", unit="img") as bar:
        for _ in pool.map(read, range(len(files))):
            bar.update(1)
    if bad:
        bad.sort()
        findings.append(Finding("decode", "error", f"{len(bad)} file(s) in {files.split} cannot be decoded: "
                                + "; ".join(f"{p} ({why})" for p, why in bad[:5]), [p for p, _ in bad]))
    store = ImageStore(images[ok], np.asarray(files.labels, dtype=np.int64)[ok],
                       tuple(p for p, good in zip(files.paths, ok, strict=True) if good))
    return store, [d for d in digests if d[0]]


def run_verify(data_dir: str | Path, out_dir: str | Path, cfg: Config) -> VerifyResult:
    """Check `data_dir`, write the packed train/val splits and the reports into `out_dir`.

    Raises DataError naming every error finding (after writing the reports) when the data must not train.
    """
    start = time.perf_counter()
    root, out = Path(data_dir), Path(out_dir)
    findings: list[Finding] = []
    splits = _discover(root, findings)
    counts = {s: {name: f.count(label) for label, name in enumerate(CLASS_NAMES)} for s, f in splits.items()}
    stores: dict[str, ImageStore] = {}
    entries: list[tuple[str, str]] = []
    resize = cfg.data.resize_size
    size = _largest_side(splits["train"], resize) if "train" in splits else resize
    for split, files in splits.items():
        store, digests = _read_split(files, size, cfg.data.num_workers, root, findings)
        entries += digests
        if split in PACKED_SPLITS:
            stores[split] = store
    digest = combine_digest(entries)
    result = VerifyResult(root, out, digest, counts, findings, time.perf_counter() - start)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / REPORT_JSON, result.to_dict())
    write_text_atomic(out / REPORT_MD, result.markdown())
    log.info("verified %d images in %.1fs (%.0f img/s): %d errors, %d warnings; digest %s", result.n_images,
             result.seconds, result.n_images / max(result.seconds, 1e-9), len(result.errors),
             len(result.warnings), digest)
    if result.errors:
        raise DataError(f"{root} failed verification: " + " | ".join(f.message for f in result.errors),
                        f"fix the files named in {out / REPORT_JSON}")
    if set(stores) != set(PACKED_SPLITS):  # pragma: no cover - a missing split is a layout error above
        raise PhotoDetectorError(f"{root}: nothing to pack")
    write_packed(out, stores, root=root, digest=digest, resize_size=resize,
                 extra={"image_size": cfg.data.image_size, "crop_pct": cfg.data.crop_pct})
    return result
