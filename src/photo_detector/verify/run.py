"""The verify-data stage: decide whether a dataset deserves training, then pack it for the trainer.

Every file is read once, in worker processes (both cores), by `inspect.inspect`. Findings name every file
involved; each has a severity: `error` stops the pipeline (after the reports are written), `warning` is
reported. Leakage across splits is quarantined by default: the held-out twin is left out of the packed data
and of evaluation, and listed. Format shortcuts stop the stage unless `verify.shortcut_policy=align`.

| check | severity |
|---|---|
| layout: a split or class folder missing | error |
| files with other extensions, unexpected folders | warning |
| zero-byte, truncated, unreadable, too-large files | error |
| format (from content) differs from the extension | warning |
| fewer than verify.min_images_per_class in a class of a split | error |
| minority/majority < verify.min_class_balance in a split | error |
| exact or near duplicates within one split | warning |
| exact or near duplicates across splits (leakage) | quarantined (warning); error past the limit, or always |
| metadata (format, size, JPEG quality) alone separates the classes | error (align: only if size still does) |

Leakage errors past `verify.max_quarantine_fraction` of a split, or always with `verify.leakage=error`.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from photo_detector import CLASS_NAMES, SPLITS
from photo_detector.config import Config
from photo_detector.data.layout import IMAGE_EXTENSIONS
from photo_detector.data.packed import combine_digest
from photo_detector.data.store import store_size_for, worker_count
from photo_detector.errors import DataError
from photo_detector.io import write_json_atomic, write_text_atomic
from photo_detector.procs import die_with_parent
from photo_detector.progress import progress
from photo_detector.verify.duplicates import Pairs, find_duplicates, groups
from photo_detector.verify.inspect import THUMB, Job, inspect_many
from photo_detector.verify.pack import PACKED_SPLITS, PackedWriter
from photo_detector.verify.report import REPORT_JSON, REPORT_MD, Finding, Quarantined, VerifyResult
from photo_detector.verify.shortcut import aligned_key, metadata_key, shortcut_score

log = logging.getLogger(__name__)

EXT_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}
CHUNK = 64  # files per worker round trip
IN_FLIGHT = 4  # batches queued per worker: enough to keep both cores busy, few enough to keep memory flat
SPLIT_RANK = {split: rank for rank, split in enumerate(SPLITS)}  # the later split's twin is the one left out
METADATA_LISTED = 100  # quarantined files recorded in the verified Dataset's metadata (all are in the report)


@dataclass
class _File:
    split: str
    label: int
    path: Path
    rel: str
    info: dict[str, Any] = field(default_factory=dict)


def _walk(root: Path, findings: list[Finding]) -> list[_File]:
    files: list[_File] = []
    stray: list[str] = []
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            findings.append(Finding("layout", "error", f"split folder {split_dir} is missing",
                                    [str(split_dir)]))
            continue
        for entry in sorted(split_dir.iterdir()):
            if entry.name not in CLASS_NAMES:
                stray.append(entry.relative_to(root).as_posix())
        for label, name in enumerate(CLASS_NAMES):
            class_dir = split_dir / name
            if not class_dir.is_dir():
                findings.append(Finding("layout", "error", f"class folder {class_dir} is missing",
                                        [str(class_dir)]))
                continue
            # Subfolders of a class folder are its sources (layout.source_of); any depth is kept.
            for p in sorted(class_dir.rglob("*")):
                if p.is_dir():
                    continue
                rel = p.relative_to(root).as_posix()
                if p.suffix.lower() in IMAGE_EXTENSIONS and not any(
                        part.startswith(".") for part in p.relative_to(class_dir).parts):
                    files.append(_File(split, label, p, rel))
                else:
                    stray.append(rel)
    if stray:
        findings.append(Finding("other-files", "warning",
                                f"{len(stray)} file(s) or folder(s) are not images of a class folder and are "
                                f"ignored (images must be {', '.join(sorted(IMAGE_EXTENSIONS))}, any case)", stray))
    return files


def run_verify(data_dir: str | Path, out_dir: str | Path, cfg: Config) -> VerifyResult:
    """Check `data_dir`, write the reports and (when clean of errors) the packed train/val splits, the
    held-out file lists and the quarantine to `out_dir`.

    Raises DataError naming the error findings, after writing the reports, when the data must not train.
    """
    start = time.perf_counter()
    root, out = Path(data_dir), Path(out_dir)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist",
                        "pass a folder with train|val|test/{real,ai_generated}")
    findings: list[Finding] = []
    files = _walk(root, findings)
    out.mkdir(parents=True, exist_ok=True)
    resize = cfg.data.resize_size
    size = store_size_for((f.path for f in files if f.split == "train"), resize, skip_unreadable=True)
    workers = worker_count(cfg.verify.workers)
    align = cfg.verify.align_jpeg_quality if cfg.verify.shortcut_policy == "align" else 0
    writer = PackedWriter(out, size, round(cfg.verify.shard_mb * 2**20))
    # Fingerprints in flat arrays (8 + 256 + 20 bytes a file), not per-file objects: memory stays small at
    # CIFAKE's 120,000 files.
    hashes = np.zeros(len(files), np.uint64)
    thumbs = np.zeros((len(files), THUMB * THUMB), np.uint8)
    pixels: list[bytes] = [b""] * len(files)
    order = _pack_order(files)
    jobs = (Job(str(files[i].path), size, cfg.verify.max_image_pixels, align) for i in order)
    with ProcessPoolExecutor(workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool, \
            progress(total=len(files), desc="verify", unit="img") as bar:
        for i, info in zip(order, _bounded_map(pool, jobs, workers), strict=True):
            f = files[i]
            square = info.pop("square", None)
            if "phash" in info:
                hashes[i] = info.pop("phash")
                thumbs[i] = np.frombuffer(info.pop("thumb"), np.uint8)
                pixels[i] = info.pop("pixels")
            info.pop("path", None)
            f.info = info
            if square is not None and f.split in PACKED_SPLITS:
                writer.append(f.split, square, f.label, f.rel)
            bar.update(1)

    _file_findings(files, findings)
    good_idx = [i for i, f in enumerate(files) if "problem" not in f.info]
    good = [files[i] for i in good_idx]
    counts = {s: {n: sum(1 for f in good if f.split == s and f.label == c) for c, n in enumerate(CLASS_NAMES)}
              for s in SPLITS if (root / s).is_dir()}
    _count_findings(counts, cfg, findings)
    v = cfg.verify
    pairs = find_duplicates([pixels[i] for i in good_idx], hashes[good_idx], thumbs[good_idx],
                            v.near_duplicate_distance, v.near_duplicate_max_mad)
    del hashes, thumbs, pixels
    quarantined = _leakage(good, pairs, counts, cfg, findings)
    _within_split(good, pairs, findings)
    formats = {n: dict(Counter(f"{f.info['format']} {f.info['width']}x{f.info['height']}"
                               + (f" q{f.info['quality']}" if f.info["quality"] >= 0 else "")
                               for f in good if f.label == c)) for c, n in enumerate(CLASS_NAMES)}
    shortcut = _shortcut(good, formats, cfg, findings)
    digest = combine_digest([(f.rel, f.info["sha256"]) for f in files if "sha256" in f.info])
    result = VerifyResult(root, out, digest, counts, findings, time.perf_counter() - start, formats, quarantined,
                          shortcut)
    write_json_atomic(out / REPORT_JSON, result.to_dict())
    write_text_atomic(out / REPORT_MD, result.markdown())
    log.info("verified %d images in %.1fs (%.0f img/s, %d workers): %d errors, %d warnings, %d quarantined; "
             "digest %s", result.n_images, result.seconds, result.images_per_second, workers, len(result.errors),
             len(result.warnings), len(quarantined), digest)
    if result.errors:
        writer.discard()
        raise DataError(f"{root} failed verification: " + " | ".join(f.message for f in result.errors),
                        f"fix the files named in {out / REPORT_JSON}")
    drop = {q.path for q in quarantined}
    held_out = {s: {"paths": [f.rel for f in good if f.split == s and f.rel not in drop],
                    "labels": [f.label for f in good if f.split == s and f.rel not in drop]}
                for s in SPLITS if s not in PACKED_SPLITS}
    writer.close(drop, {"digest": digest, "source": str(root), "resize_size": resize,
                        "image_size": cfg.data.image_size, "crop_pct": cfg.data.crop_pct, "files": held_out,
                        "quarantined": [asdict(q) for q in quarantined], "shortcut": shortcut})
    return result


def _pack_order(files: list[_File]) -> list[int]:
    """The order files are inspected and packed in: by split, then by a hash of the path. Why: the folder
    order puts every real image before every fake, so shards written in it would each hold one class, and a
    loader that shuffles within a window of shards would see one-class stretches. Hashed, every shard is a
    random mix, and the order is the same on every run of the same files."""
    return sorted(range(len(files)), key=lambda i: (SPLIT_RANK[files[i].split],
                                                    hashlib.sha1(files[i].rel.encode()).digest()))


def _bounded_map(pool: ProcessPoolExecutor, jobs: Iterator[Job], workers: int) -> Iterator[dict[str, Any]]:
    """Results in order, with at most IN_FLIGHT batches per worker submitted: `Executor.map` submits every
    job at once, and when this process falls behind the workers their results (a packed square each) pile
    up; bounded, memory stays flat at any dataset size."""
    pending: deque[Any] = deque()
    while True:
        while len(pending) < IN_FLIGHT * workers:
            batch = list(itertools.islice(jobs, CHUNK))
            if not batch:
                break
            pending.append(pool.submit(inspect_many, batch))
        if not pending:
            return
        yield from pending.popleft().result()


def quarantine_metadata(result: VerifyResult) -> dict[str, Any]:
    """What the verified Dataset's metadata records of the quarantine, so lineage shows what was set aside."""
    return {"quarantined": len(result.quarantined),
            **{f"quarantined_{s}": result.quarantined_in(s) for s in ("val", "test")},
            "quarantined_files": [f"{q.path} = {q.twin}" for q in result.quarantined[:METADATA_LISTED]]}


def _leakage(good: list[_File], pairs: Pairs, counts: dict[str, dict[str, int]], cfg: Config,
             findings: list[Finding]) -> list[Quarantined]:
    """Pairs across splits: with verify.leakage=quarantine, the member of the later split (val, then test) is
    left out; training images are never dropped. With `error`, every pair is an error."""
    what = {"exact-duplicates": "identical pixels",
            "near-duplicates": f"near-identical content (hash within {cfg.verify.near_duplicate_distance} bits)"}
    split_of = np.array([SPLIT_RANK[f.split] for f in good], np.int8)
    across = [(kind, a, b) for kind, found in (("exact-duplicates", pairs.exact), ("near-duplicates", pairs.near))
              for a, b in found[split_of[found[:, 0]] != split_of[found[:, 1]]].tolist()]
    if cfg.verify.leakage == "error":
        for kind in what:
            these = [(a, b) for k, a, b in across if k == kind]
            if these:
                findings.append(Finding(
                    f"leakage-{kind}", "error", f"{len(these)} pair(s) of images with {what[kind]} in different "
                    "splits (leakage inflates every metric; verify.leakage=quarantine would leave the held-out "
                    "twins out): " + "; ".join(f"{good[a].rel} = {good[b].rel}" for a, b in these[:5]),
                    sorted({good[i].rel for p in these for i in p})))
        return []
    chosen: dict[str, Quarantined] = {}
    for kind, a, b in across:
        keep, drop = sorted((a, b), key=lambda i: SPLIT_RANK[good[i].split])
        chosen.setdefault(good[drop].rel, Quarantined(good[drop].rel, good[drop].split, good[keep].rel, kind))
    quarantined = sorted(chosen.values(), key=lambda q: (SPLIT_RANK[q.split], q.path))
    if not quarantined:
        return []
    findings.append(Finding("leakage-quarantined", "warning",
                            f"{len(quarantined)} held-out file(s) show the same picture as a file of an earlier split "
                            "and are left out of the packed data and of evaluation (verify.leakage=quarantine): "
                            + "; ".join(f"{q.path} = {q.twin}" for q in quarantined[:5]),
                            [q.path for q in quarantined]))
    limit = cfg.verify.max_quarantine_fraction
    for split in ("val", "test"):
        n, total = sum(1 for q in quarantined if q.split == split), sum(counts.get(split, {}).values())
        if total and n / total > limit:
            findings.append(Finding(
                "quarantine-too-large", "error", f"quarantine would remove {n} of {total} {split} images "
                f"({n / total:.1%} > verify.max_quarantine_fraction {limit:.0%}): the split shares too much with "
                "the others to measure anything; re-split the data so each picture lives in one split, or raise "
                "verify.max_quarantine_fraction", [q.path for q in quarantined if q.split == split]))
    return quarantined


def _within_split(good: list[_File], pairs: Pairs, findings: list[Finding]) -> None:
    split_of = np.array([SPLIT_RANK[f.split] for f in good], np.int8)
    for kind, found in (("exact-duplicates", pairs.exact), ("near-duplicates", pairs.near)):
        within = found[split_of[found[:, 0]] == split_of[found[:, 1]]]
        if len(within):
            gs = groups(len(good), within)
            findings.append(Finding(kind, "warning", f"{len(gs)} group(s) of images showing the same picture "
                                    f"within a split ({kind}): " + "; ".join(" = ".join(good[i].rel for i in g)
                                                                              for g in gs[:5]),
                                    [good[i].rel for g in gs for i in g]))


def _shortcut(good: list[_File], formats: dict[str, dict[str, int]], cfg: Config,
              findings: list[Finding]) -> dict[str, Any]:
    v = cfg.verify
    held_out = [int(f.info["sha256"][:8], 16) % 10 >= 7 for f in good]  # a fixed 30%, by content
    labels = [f.label for f in good]
    score = shortcut_score([metadata_key(f.info) for f in good], labels, held_out)
    record: dict[str, Any] = {"policy": v.shortcut_policy, "score": round(score, 4), "limit": v.shortcut_max_score}
    if v.shortcut_policy == "align":
        q = v.align_jpeg_quality
        aligned = shortcut_score([aligned_key(f.info, q) for f in good], labels, held_out)
        record.update(aligned_quality=q, aligned_score=round(aligned, 4))
        if aligned >= v.shortcut_max_score:
            findings.append(Finding("shortcut", "error", f"even with every image re-encoded as JPEG quality {q} "
                                    f"(verify.shortcut_policy=align), image size alone tells the classes apart: "
                                    f"{aligned:.2f} balanced accuracy (limit {v.shortcut_max_score}); give both "
                                    f"classes the same sizes. Per class: {formats}", []))
        elif score >= v.shortcut_max_score:
            findings.append(Finding("shortcut-aligned", "warning", f"metadata alone scored {score:.2f} balanced "
                                    f"accuracy; every image was re-encoded as JPEG quality {q} for training "
                                    f"(verify.shortcut_policy=align), after which it scores {aligned:.2f}", []))
    elif score >= v.shortcut_max_score:
        findings.append(Finding("shortcut", "error",
                                f"metadata alone (format, size, JPEG quality) tells the classes apart: a lookup "
                                f"classifier scores {score:.2f} balanced accuracy on held-out files (limit "
                                f"{v.shortcut_max_score}); the model would learn the file type, not the image. Set "
                                "verify.shortcut_policy=align to re-encode every image with one codec and "
                                f"quality, or fix the data. Per class: {formats}", []))
    return record


def _file_findings(files: list[_File], findings: list[Finding]) -> None:
    problems: dict[str, list[_File]] = defaultdict(list)
    for f in files:
        if "problem" in f.info:
            problems[f.info["problem"]].append(f)
    for kind, bad in sorted(problems.items()):
        findings.append(Finding(kind, "error", f"{len(bad)} {kind} file(s): " + "; ".join(
            f"{f.rel} ({f.info['detail']})" for f in bad[:5]), [f.rel for f in bad]))
    mismatched = [f for f in files if f.info.get("format") in ("JPEG", "PNG", "WEBP")
                  and EXT_FORMAT.get(f.path.suffix.lower()) != f.info["format"]]
    if mismatched:
        findings.append(Finding("extension-mismatch", "warning", f"{len(mismatched)} file(s) hold another format "
                                "than their extension says: " + "; ".join(
                                    f"{f.rel} is {f.info['format']}" for f in mismatched[:5]),
                                [f.rel for f in mismatched]))


def _count_findings(counts: dict[str, dict[str, int]], cfg: Config, findings: list[Finding]) -> None:
    v = cfg.verify
    short = [(f"{split}/{name}", n) for split, by_class in counts.items() for name, n in by_class.items()
             if n < v.min_images_per_class]
    if short:
        findings.append(Finding("min-images", "error", "too few usable images (verify.min_images_per_class = "
                                f"{v.min_images_per_class}): " + ", ".join(f"{k} has {n}" for k, n in short),
                                [k for k, _ in short]))
    skewed = [(split, by_class, min(by_class.values()) / max(by_class.values()))
              for split, by_class in counts.items() if max(by_class.values())
              and min(by_class.values()) / max(by_class.values()) < v.min_class_balance]
    if skewed:
        findings.append(Finding("class-balance", "error", "imbalanced classes: " + "; ".join(
            f"{split} {by_class} (minority/majority {ratio:.2f} < verify.min_class_balance {v.min_class_balance})"
            for split, by_class, ratio in skewed), [split for split, _, _ in skewed]))
