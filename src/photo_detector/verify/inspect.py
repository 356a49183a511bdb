"""Per-file inspection, run in worker processes: every file is read once, hashed, fully decoded under a pixel
limit, fingerprinted (decoded pixels, perceptual hash, thumbnail) and turned into the packed square."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from photo_detector.preprocess import sniff_format

THUMB = 16  # side of the grey thumbnail that confirms a near-duplicate candidate

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


@dataclass(frozen=True)
class Job:
    path: str
    size: int               # side of the packed square
    max_pixels: int
    align_quality: int = 0  # > 0: re-encode as JPEG at this quality before packing (verify.shortcut_policy=align)


def realign(rgb: Any, quality: int) -> bytes:
    """One codec and quality for every image, whatever it came as: the cure for format shortcuts."""
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def inspect(job: Job) -> dict[str, Any]:
    """Everything verify needs from one file. Never raises: failures come back as `problem`."""
    import warnings

    from PIL import Image

    from photo_detector.preprocess import decode_square

    out: dict[str, Any] = {"path": job.path}
    try:
        data = Path(job.path).read_bytes()
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
            if w * h > job.max_pixels:
                return {**out, "problem": "too-large",
                        "detail": f"{w}x{h} = {w * h} pixels > verify.max_image_pixels {job.max_pixels}"}
            img.load()  # the full decode: truncated data fails here, not in training
            rgb = img.convert("RGB")
        out["pixels"] = hashlib.sha1(rgb.tobytes() + f"{w}x{h}".encode()).digest()
        out["phash"] = perceptual_hash(rgb)
        out["thumb"] = np.asarray(rgb.convert("L").resize((THUMB, THUMB), Image.Resampling.BILINEAR),
                                  np.uint8).tobytes()
        # The packed square is made exactly as training and serving make it (JPEG draft decoding included);
        # aligned, it is made from the re-encoded bytes, as if the file had come as that JPEG.
        source = realign(rgb, job.align_quality) if job.align_quality else data
        out["square"] = decode_square(source, job.size).tobytes()
    except Exception as exc:  # Pillow raises many types on broken files; every one is a finding
        kind = "truncated" if "truncated" in str(exc).lower() or isinstance(exc, EOFError) else "unreadable"
        if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
            kind = "too-large"
        return {**out, "problem": kind, "detail": f"{type(exc).__name__}: {exc}"}
    return out


def inspect_many(jobs: list[Job]) -> list[dict[str, Any]]:
    """One round trip to a worker for a batch of files (pickling per file costs more than 32 px decodes)."""
    return [inspect(job) for job in jobs]
