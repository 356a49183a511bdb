"""The verify-data stage: decide whether a dataset deserves training, then pack it for the trainer.

Every file is read once, in worker processes (both cores): its bytes feed the content digest, its format is
detected from the bytes, it is fully decoded (a valid header is not enough) under a pixel limit, and it
yields the packed square the trainer reads, a hash of its decoded pixels (exact duplicates) and a perceptual
hash (near duplicates, e.g. a re-encoded copy). Findings name every file involved; each has a severity:
`error` stops the pipeline (after the reports are written), `warning` is reported.

| check | severity |
|---|---|
| layout: a split or class folder missing | error |
| files with other extensions, unexpected folders | warning |
| zero-byte, truncated, unreadable, too-large files | error |
| format (from content) differs from the extension | warning |
| fewer than verify.min_images_per_class in a class of a split | error |
| minority/majority < verify.min_class_balance in a split | error |
| exact or near duplicates within one split | warning |
| exact or near duplicates across splits (leakage) | error |
| metadata (format, size, JPEG quality) alone separates the classes | error |
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from photo_detector import CLASS_NAMES, SPLITS
from photo_detector.config import Config
from photo_detector.data.layout import IMAGE_EXTENSIONS
from photo_detector.data.packed import MANIFEST, combine_digest
from photo_detector.data.store import store_size_for, worker_count
from photo_detector.errors import DataError
from photo_detector.io import write_json_atomic, write_text_atomic
from photo_detector.preprocess import sniff_format
from photo_detector.progress import progress

log = logging.getLogger(__name__)

REPORT_JSON, REPORT_MD = "verify_report.json", "verify_report.md"
PACKED_SPLITS = ("train", "val")  # what training reads; test stays raw files for the evaluate stage
EXT_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}
CHUNK = 64


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
    formats: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def n_images(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    @property
    def images_per_second(self) -> float:
        return self.n_images / self.seconds if self.seconds else 0.0

    def metrics(self) -> dict[str, float]:
        """Flat numbers for a KFP Metrics artifact: counts per split and class, findings, throughput."""
        out: dict[str, float] = {f"{s}_{c}": float(n) for s, cs in self.counts.items() for c, n in cs.items()}
        out.update(images=float(self.n_images), errors=float(len(self.errors)),
                   warnings=float(len(self.warnings)), images_per_second=self.images_per_second)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"root": str(self.root), "digest": self.digest, "passed": not self.errors, "counts": self.counts,
                "formats": self.formats, "errors": len(self.errors), "warnings": len(self.warnings),
                "findings": [asdict(f) for f in self.findings], "seconds": round(self.seconds, 3)}

    def markdown(self) -> str:
        lines = [f"# Data verification: {'PASSED' if not self.errors else 'FAILED'}", "",
                 f"- dataset: `{self.root}`", f"- digest: `{self.digest}`",
                 f"- images: {self.n_images} in {self.seconds:.1f}s ({self.images_per_second:.0f} img/s)", "",
                 "| split | " + " | ".join(CLASS_NAMES) + " |", "|---|" + "---:|" * len(CLASS_NAMES)]
        lines += [f"| {s} | " + " | ".join(str(c.get(n, 0)) for n in CLASS_NAMES) + " |"
                  for s, c in self.counts.items()]
        lines += ["", "Formats per class: " + "; ".join(
            f"{c}: " + ", ".join(f"{k} {v}" for k, v in sorted(f.items())) for c, f in self.formats.items()), ""]
        lines += [f"## Findings ({len(self.errors)} errors, {len(self.warnings)} warnings)", ""]
        if not self.findings:
            lines.append("None.")
        for f in self.findings:
            lines.append(f"- **{f.severity}** `{f.check}`: {f.message}")
            lines += [f"  - `{p}`" for p in f.paths[:20]]
            if len(f.paths) > 20:
                lines.append(f"  - ... and {len(f.paths) - 20} more (see the JSON report)")
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Per-file inspection (runs in worker processes)


_STD_LUMA = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69,
                      56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104,
                      113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.float64)


def jpeg_quality(img: Any) -> int:
    """IJG quality (1-100) estimated from the luminance quantisation table; -1 when not a JPEG."""
    tables = getattr(img, "quantization", None)
    if not tables or 0 not in tables:
        return -1
    scale = float(np.mean(np.asarray(tables[0], np.float64) * 100.0 / _STD_LUMA))
    quality = (200.0 - scale) / 2.0 if scale <= 100 else 5000.0 / scale
    return round(min(100.0, max(1.0, quality)))


def _dct_matrix(n: int = 32) -> np.ndarray:
    k = np.arange(n)
    m = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix()


def perceptual_hash(img: Any) -> int:
    """64-bit pHash: 32x32 grey, 2-D DCT, the 8x8 lowest frequencies (DC excluded) above their median."""
    from PIL import Image

    grey = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.BILINEAR), np.float64)
    coeffs = (_DCT @ grey @ _DCT.T)[:8, :8].reshape(-1)
    bits = coeffs > np.median(coeffs[1:])
    bits[0] = False
    return int(np.packbits(bits).view(">u8")[0])


def _inspect(job: tuple[str, int, int]) -> dict[str, Any]:
    """Everything verify needs from one file. Never raises: failures come back as `problem`."""
    import warnings

    from PIL import Image

    from photo_detector.preprocess import decode_square

    path, size, max_pixels = job
    out: dict[str, Any] = {"path": path}
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return {**out, "problem": "unreadable", "detail": f"{type(exc).__name__}: {exc}"}
    out["sha256"] = hashlib.sha256(data).hexdigest()
    out["bytes"] = len(data)
    if not data:
        return {**out, "problem": "zero-byte", "detail": "the file is empty"}
    fmt = sniff_format(data[:16])
    out["format"] = fmt or "unknown"
    if fmt not in ("JPEG", "PNG", "WEBP"):
        return {**out, "problem": "unreadable", "detail": f"not a JPEG, PNG or WebP file (content: {fmt or 'unknown'})"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[fmt])
            w, h = img.size
            out.update(width=w, height=h, quality=jpeg_quality(img))
            if w * h > max_pixels:
                return {**out, "problem": "too-large",
                        "detail": f"{w}x{h} = {w * h} pixels > verify.max_image_pixels {max_pixels}"}
            img.load()  # the full decode: truncated data fails here, not in training
            rgb = img.convert("RGB")
        out["pixels"] = hashlib.sha1(rgb.tobytes() + f"{w}x{h}".encode()).hexdigest()
        out["phash"] = perceptual_hash(rgb)
        out["thumb"] = np.asarray(rgb.convert("L").resize((16, 16), Image.Resampling.BILINEAR), np.uint8).tobytes()
        # The packed square is made exactly as training and serving make it (JPEG draft decoding included).
        out["square"] = decode_square(data, size).tobytes()
    except Exception as exc:  # Pillow raises many types on broken files; every one is a finding
        kind = "truncated" if "truncated" in str(exc).lower() or isinstance(exc, EOFError) else "unreadable"
        if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
            kind = "too-large"
        return {**out, "problem": kind, "detail": f"{type(exc).__name__}: {exc}"}
    return out


# ---------------------------------------------------------------------------------------------------------
# The stage


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
            for p in sorted(class_dir.rglob("*")):
                if p.is_dir():
                    continue
                rel = p.relative_to(root).as_posix()
                if p.suffix.lower() in IMAGE_EXTENSIONS and p.parent == class_dir:
                    files.append(_File(split, label, p, rel))
                else:
                    stray.append(rel)
    if stray:
        findings.append(Finding("other-files", "warning",
                                f"{len(stray)} file(s) or folder(s) are not images of a class folder and are "
                                f"ignored (images must be {', '.join(sorted(IMAGE_EXTENSIONS))}, any case)", stray))
    return files


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], np.uint8)
    return table[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1)


def _near_pairs(hashes: np.ndarray, max_distance: int, max_bucket: int = 4096) -> list[tuple[int, int]]:
    """Index pairs i < j whose 64-bit hashes differ in at most `max_distance` bits, without comparing all
    pairs: split the hash into max_distance + 1 bands; two hashes that close agree exactly on at least one
    band (pigeonhole), so only hashes sharing a band value are compared. Memory stays proportional to n."""
    n = len(hashes)
    bands = max_distance + 1
    width = -(-64 // bands)
    candidates: set[tuple[int, int]] = set()
    for b in range(bands):
        shift = min(64, b * width)
        if shift >= 64:
            break
        keys = (hashes >> np.uint64(shift)) & np.uint64((1 << min(width, 64 - shift)) - 1)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], n]
        for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
            if hi - lo < 2:
                continue
            members = np.sort(order[lo:hi])
            for k in range(0, len(members), max_bucket):  # bounded blocks for very large buckets
                block = members[k:k + max_bucket]
                dist = _popcount(hashes[block][:, None] ^ hashes[members][None, :])
                i, j = np.nonzero(dist <= max_distance)
                a, c = block[i], members[j]
                keep = a < c
                candidates.update(zip(a[keep].tolist(), c[keep].tolist(), strict=True))
    return sorted(candidates)


def _groups(n: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in pairs:
        parent[find(a)] = find(b)
    out: dict[int, list[int]] = defaultdict(list)
    for i in {x for p in pairs for x in p}:
        out[find(i)].append(i)
    return [sorted(g) for g in out.values()]


def _duplicates(good: list[_File], cfg: Config, findings: list[Finding]) -> None:
    """Exact: identical decoded pixels. Near: perceptual hashes within `near_duplicate_distance` bits *and*
    16x16 grey thumbnails within `near_duplicate_max_mad` grey levels on average (the hash alone confuses flat
    textures). Leakage is judged on direct pairs across splits, never through chains of look-alikes."""
    v = cfg.verify
    by_pixels: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(good):
        by_pixels[f.info["pixels"]].append(i)
    exact_pairs = [(g[0], j) for g in by_pixels.values() if len(g) > 1 for j in g[1:]]
    same_pixels = {i: g[0] for g in by_pixels.values() for i in g}
    near_pairs: list[tuple[int, int]] = []
    if v.near_duplicate_distance >= 0 and len(good) > 1:
        hashes = np.array([f.info["phash"] for f in good], dtype=np.uint64)
        thumbs = np.stack([np.frombuffer(f.info["thumb"], np.uint8) for f in good]).astype(np.int16)
        for a, b in _near_pairs(hashes, v.near_duplicate_distance):
            if same_pixels[a] != same_pixels[b] and \
                    float(np.abs(thumbs[a] - thumbs[b]).mean()) <= v.near_duplicate_max_mad:
                near_pairs.append((a, b))
    what = {"exact-duplicates": "identical pixels",
            "near-duplicates": f"near-identical content (hash within {v.near_duplicate_distance} bits)"}
    for kind, pairs in (("exact-duplicates", exact_pairs), ("near-duplicates", near_pairs)):
        across = [(a, b) for a, b in pairs if good[a].split != good[b].split]
        within = [(a, b) for a, b in pairs if good[a].split == good[b].split]
        if across:
            findings.append(Finding(f"leakage-{kind}", "error",
                                    f"{len(across)} pair(s) of images with {what[kind]} in different splits "
                                    "(leakage inflates every metric): " + "; ".join(
                                        f"{good[a].rel} = {good[b].rel}" for a, b in across[:5]),
                                    sorted({good[i].rel for p in across for i in p})))
        if within:
            groups = _groups(len(good), within)
            findings.append(Finding(kind, "warning", f"{len(groups)} group(s) of images with {what[kind]} within a "
                                    "split: " + "; ".join(" = ".join(good[i].rel for i in g) for g in groups[:5]),
                                    [good[i].rel for g in groups for i in g]))


def _metadata_key(info: dict[str, Any]) -> tuple[Any, ...]:
    return info.get("format"), info.get("width"), info.get("height"), info.get("quality")


def _shortcut_score(good: list[_File]) -> float:
    """Balanced accuracy, on held-out files, of a lookup-table classifier that sees only metadata (format,
    width x height, JPEG quality): 0.5 = metadata says nothing about the class."""
    train = [f for f in good if int(f.info["sha256"][:8], 16) % 10 < 7]
    test = [f for f in good if int(f.info["sha256"][:8], 16) % 10 >= 7]
    if not train or not test or len({f.label for f in test}) < 2:
        return 0.5
    votes: dict[tuple[Any, ...], Counter[int]] = defaultdict(Counter)
    for f in train:
        votes[_metadata_key(f.info)][f.label] += 1
    prior = Counter(f.label for f in train)
    rates = []
    for label in (0, 1):
        members = [f for f in test if f.label == label]
        hits = 0.0
        for f in members:
            v = votes.get(_metadata_key(f.info)) or prior
            # Normalised by class size, so predicting the larger class wins nothing; a tie is a coin flip.
            s0, s1 = (v[c] / max(prior[c], 1) for c in (0, 1))
            hits += 0.5 if s0 == s1 else float((1 if s1 > s0 else 0) == label)
        rates.append(hits / len(members))
    return float(np.mean(rates))


def run_verify(data_dir: str | Path, out_dir: str | Path, cfg: Config) -> VerifyResult:
    """Check `data_dir`, write the reports and (when clean of errors) the packed train/val splits to `out_dir`.

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
    packed = _open_packed(out, files, size)
    position = {s: 0 for s in PACKED_SPLITS}
    jobs = [(str(f.path), size, cfg.verify.max_image_pixels) for f in files]
    with ProcessPoolExecutor(workers) as pool, progress(total=len(jobs), desc="verify", unit="img") as bar:
        for f, info in zip(files, pool.map(_inspect, jobs, chunksize=CHUNK), strict=True):
            square = info.pop("square", None)
            f.info = info
            if square is not None and f.split in packed:
                handle, labels, paths = packed[f.split]
                k = position[f.split]
                handle.write(square)
                labels[k] = f.label
                paths.append(f.rel)
                position[f.split] += 1
            bar.update(1)

    _file_findings(files, findings)
    good = [f for f in files if "problem" not in f.info]
    counts = {s: {n: sum(1 for f in good if f.split == s and f.label == c) for c, n in enumerate(CLASS_NAMES)}
              for s in SPLITS if (root / s).is_dir()}
    _count_findings(counts, cfg, findings)
    _duplicates(good, cfg, findings)
    score = _shortcut_score(good)
    formats = {n: dict(Counter(f"{f.info['format']} {f.info['width']}x{f.info['height']}"
                               + (f" q{f.info['quality']}" if f.info["quality"] >= 0 else "")
                               for f in good if f.label == c)) for c, n in enumerate(CLASS_NAMES)}
    if score >= cfg.verify.shortcut_max_score:
        findings.append(Finding("shortcut", "error",
                                f"metadata alone (format, size, JPEG quality) tells the classes apart: a lookup "
                                f"classifier scores {score:.2f} balanced accuracy on held-out files (limit "
                                f"{cfg.verify.shortcut_max_score}); the model would learn the file type, not the "
                                f"image. Per class: {formats}", []))
    digest = combine_digest([(f.rel, f.info["sha256"]) for f in files if "sha256" in f.info])
    result = VerifyResult(root, out, digest, counts, findings, time.perf_counter() - start, formats)
    write_json_atomic(out / REPORT_JSON, result.to_dict())
    write_text_atomic(out / REPORT_MD, result.markdown())
    log.info("verified %d images in %.1fs (%.0f img/s, %d workers): %d errors, %d warnings; digest %s",
             result.n_images, result.seconds, result.images_per_second, workers, len(result.errors),
             len(result.warnings), digest)
    if result.errors:
        _discard_packed(out, packed)  # no half-usable packed data next to a failed report
        for split in PACKED_SPLITS:
            for suffix in (".images.npy", ".labels.npy"):
                (out / f"{split}{suffix}").unlink(missing_ok=True)
        raise DataError(f"{root} failed verification: " + " | ".join(f.message for f in result.errors),
                        f"fix the files named in {out / REPORT_JSON}")
    _close_packed(out, packed, position, root, digest, resize, size, cfg)
    return result


def _open_packed(out: Path, files: list[_File], size: int) -> dict[str, tuple[Any, np.ndarray, list[str]]]:
    """One .npy file per packed split, its header written up front and each decoded square appended as it
    arrives (in order): memory stays flat however large the data (no array, no mapped pages)."""
    packed = {}
    for split in PACKED_SPLITS:
        n = sum(1 for f in files if f.split == split)
        handle = open(out / f".{split}.images.npy.partial", "wb")  # noqa: SIM115 - closed in _close_packed
        np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                                                      "fortran_order": False, "shape": (n, size, size, 3)})
        packed[split] = (handle, np.zeros(n, np.int64), [])
    return packed


def _discard_packed(out: Path, packed: dict[str, tuple[Any, np.ndarray, list[str]]]) -> None:
    for split, (handle, _, _) in packed.items():
        handle.close()
        (out / f".{split}.images.npy.partial").unlink(missing_ok=True)


def _close_packed(out: Path, packed: dict[str, tuple[Any, np.ndarray, list[str]]], position: dict[str, int],
                  root: Path, digest: str, resize: int, size: int, cfg: Config) -> None:
    """Close and rename the arrays into place, then write the manifest last: a folder with a manifest is
    complete."""
    from photo_detector.data.packed import FORMAT_VERSION, save_npy

    splits: dict[str, Any] = {}
    for split, (handle, labels, paths) in packed.items():
        n = position[split]
        handle.close()
        if n != len(labels):  # defensive: undecodable files are errors and raise before packing
            raise DataError(f"internal: {split} packed {n} of {len(labels)} images", "re-run verify-data")
        os.replace(out / f".{split}.images.npy.partial", out / f"{split}.images.npy")
        save_npy(out / f"{split}.labels.npy", labels)
        splits[split] = {"count": n, "real": int((labels == 0).sum()), "ai_generated": int((labels == 1).sum()),
                         "paths": paths}
    write_json_atomic(out / MANIFEST, {"format_version": FORMAT_VERSION, "digest": digest, "source": str(root),
                                       "store_size": size, "resize_size": resize, "splits": splits,
                                       "image_size": cfg.data.image_size, "crop_pct": cfg.data.crop_pct})


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
