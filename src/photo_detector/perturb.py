"""Named image perturbations: what marketplaces do to uploads (re-encode, shrink, crop, soften), torch-free.

The evaluate stage scores the test split once as stored and once per perturbation; each one changes the
decoded image and then hands it to the one preprocessing definition (`preprocess.decode_crop`), so a
perturbed score differs from the clean one by the perturbation alone. A name carries its parameter, so a
config can ask for any strength without code: `jpeg_q50`, `webp_q80`, `downscale_0.5` (antialiased),
`crop_0.8` (centre crop of that share of each side), `blur_1.0` (Gaussian, sigma in pixels).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageFilter

from photo_detector.errors import ConfigError

CLEAN = "clean"
DEFAULT_PERTURBATIONS = ("jpeg_q90", "jpeg_q75", "jpeg_q50", "webp_q80", "downscale_0.5", "downscale_0.25",
                         "crop_0.8", "blur_1.0")
_NAME = re.compile(r"^(jpeg_q|webp_q|downscale_|crop_|blur_)(\d+(?:\.\d+)?)$")


def _encode(fmt: str, quality: int) -> Callable[[Image.Image], Image.Image]:
    def apply(img: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        img.save(buf, format=fmt, quality=quality)
        out = Image.open(io.BytesIO(buf.getvalue()))
        out.load()
        return out.convert("RGB")
    return apply


def _downscale(factor: float) -> Callable[[Image.Image], Image.Image]:
    def apply(img: Image.Image) -> Image.Image:
        w, h = img.size
        # Pillow widens the filter's support by the shrink factor: antialiased, as image services resize
        return img.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.LANCZOS)
    return apply


def _crop(share: float) -> Callable[[Image.Image], Image.Image]:
    def apply(img: Image.Image) -> Image.Image:
        w, h = img.size
        cw, ch = max(1, round(w * share)), max(1, round(h * share))
        left, top = (w - cw) // 2, (h - ch) // 2
        return img.crop((left, top, left + cw, top + ch))
    return apply


def _blur(sigma: float) -> Callable[[Image.Image], Image.Image]:
    def apply(img: Image.Image) -> Image.Image:
        return img.filter(ImageFilter.GaussianBlur(radius=sigma))  # Pillow's radius is the standard deviation
    return apply


@dataclass(frozen=True)
class Perturbation:
    """One named transform of a decoded RGB image."""

    name: str
    apply: Callable[[Image.Image], Image.Image]

    def __call__(self, img: Image.Image) -> Image.Image:
        return self.apply(img.convert("RGB") if img.mode != "RGB" else img)


def parse(name: str, key: str = "evaluate.perturbations") -> Perturbation:
    """The perturbation a name describes; a name that is not one of the forms is a ConfigError naming `key`."""
    m = _NAME.match(name.strip())
    if not m:
        raise ConfigError(f"config key '{key}' has an unknown perturbation '{name}'",
                          "use jpeg_q<1-100>, webp_q<1-100>, downscale_<0-1>, crop_<0-1> or blur_<sigma>, "
                          f"e.g. {', '.join(DEFAULT_PERTURBATIONS)}")
    kind, value = m.group(1), float(m.group(2))
    if kind in ("jpeg_q", "webp_q"):
        if not (value.is_integer() and 1 <= value <= 100):
            raise ConfigError(f"config key '{key}': '{name}' needs a quality from 1 to 100", f"got {m.group(2)}")
        return Perturbation(name, _encode("JPEG" if kind == "jpeg_q" else "WEBP", int(value)))
    if kind in ("downscale_", "crop_") and not 0 < value < 1:
        raise ConfigError(f"config key '{key}': '{name}' needs a factor between 0 and 1 (exclusive)",
                          f"got {m.group(2)}")
    if kind == "downscale_":
        return Perturbation(name, _downscale(value))
    if kind == "crop_":
        return Perturbation(name, _crop(value))
    if not 0 < value <= 50:
        raise ConfigError(f"config key '{key}': '{name}' needs a sigma in (0, 50] pixels", f"got {m.group(2)}")
    return Perturbation(name, _blur(value))


def parse_all(names: list[str], key: str = "evaluate.perturbations") -> list[Perturbation]:
    """Every named perturbation, in order; a duplicate or the reserved name `clean` is an error."""
    seen: set[str] = set()
    out = []
    for name in names:
        if name == CLEAN or name in seen:
            raise ConfigError(f"config key '{key}' lists '{name}' "
                              f"{'twice' if name in seen else '(the stored split is always scored)'}",
                              "list each perturbation once")
        seen.add(name)
        out.append(parse(name, key))
    return out
