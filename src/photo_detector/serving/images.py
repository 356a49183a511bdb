"""Untrusted image bytes -> a decoded Pillow image, or a precise client error (never a crash).

The format is decided by the bytes (magic numbers), not by a file name or a Content-Type; the declared
pixel count is checked before decoding (decompression bombs); the image is fully decoded here, so a truncated
file fails now, with a 4xx, not later.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

from photo_detector.preprocess import sniff_format

ALLOWED = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


class ImageRejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def open_image(data: bytes, *, max_pixels: int, draft_size: int) -> Image.Image:
    if not data:
        raise ImageRejected(400, "the file is empty")
    fmt = sniff_format(data[:16])
    if fmt not in ALLOWED:
        raise ImageRejected(415, "unsupported image format: send JPEG, PNG or WebP bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[fmt])
            w, h = img.size
            if w <= 0 or h <= 0:
                raise ImageRejected(422, f"the {fmt} image declares an invalid size {w}x{h}")
            if w * h > max_pixels:
                raise ImageRejected(413, f"the image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
            img.draft("RGB", (draft_size, draft_size))
            img.load()
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(413, f"the image is too large to decode safely: {exc}") from None
    except Exception as exc:  # Pillow raises many types on hostile input; each is the client's error
        raise ImageRejected(422, f"the {fmt} image cannot be decoded: {type(exc).__name__}: {exc}") from None
    return img
