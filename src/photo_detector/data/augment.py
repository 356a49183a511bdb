"""Batched augmentation and eval preprocessing on the training device.

Why batched: per-image PIL transforms in DataLoader workers cost milliseconds per image on the CPU; here a
whole batch goes through one resampling (crop + flip + rotation + resize as a single affine map: a nearest
uint8 gather at 1:1 scale, bilinear when upscaling) and one per-sample affine colour map (brightness,
contrast, saturation, hue and normalisation folded together), on the GPU when there is one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from photo_detector.config import AugmentationConfig
from photo_detector.preprocess import Preprocess, center_offset

# Rec. 601 luma, as torchvision's grayscale, and the YIQ basis used for hue rotation.
_GRAY = (0.299, 0.587, 0.114)
_RGB2YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def uint8_nchw(images_nhwc: torch.Tensor) -> torch.Tensor:
    """View a (N, H, W, 3) uint8 store batch as NCHW without copying (channels_last strides)."""
    return images_nhwc.permute(0, 3, 1, 2)


def _normalize(x: torch.Tensor, pp: Preprocess) -> torch.Tensor:
    mean = torch.tensor(pp.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(pp.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def eval_transform(x: torch.Tensor, pp: Preprocess, channels_last: bool = False) -> torch.Tensor:
    """Torch twin of `preprocess.to_model_input`: uint8 NCHW squares -> normalised float crops."""
    xf = x.float()
    if xf.shape[-1] != pp.resize_size:
        xf = F.interpolate(xf, size=(pp.resize_size, pp.resize_size), mode="bilinear",
                           align_corners=False, antialias=True)
        xf = xf.round_().clamp_(0, 255)  # Pillow resizes to uint8: mirror its rounding
    o = center_offset(pp.resize_size, pp.crop_size)
    xf = xf[:, :, o:o + pp.crop_size, o:o + pp.crop_size] / 255.0
    out = _normalize(xf, pp)
    return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@dataclass(frozen=True)
class AugmentDraw:
    """The random parameters of one batch: geometry (n, 2, 3), colour maps (n, 3, 3), contrast weights (n,)."""

    theta: torch.Tensor
    colour: torch.Tensor
    contrast_w: torch.Tensor

    def __getitem__(self, rows: slice) -> AugmentDraw:
        """Some samples' parameters: a training process's part of the global batch's draw."""
        return AugmentDraw(self.theta[rows], self.colour[rows], self.contrast_w[rows])


class BatchAugment:
    """Random crop, horizontal flip, rotation and colour jitter for a uint8 NCHW batch, on its device."""

    def __init__(self, cfg: AugmentationConfig, pp: Preprocess, generator: torch.Generator) -> None:
        self.cfg = cfg
        self.pp = pp
        self.gen = generator
        dev = generator.device
        self._gray = torch.tensor(_GRAY, device=dev)
        self._yiq = torch.tensor(_RGB2YIQ, device=dev)
        self._yiq_inv = torch.linalg.inv(self._yiq)
        self._mean = torch.tensor(pp.mean, device=dev)
        self._std = torch.tensor(pp.std, device=dev)

    def _uniform(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=self.gen, device=self.gen.device) * (hi - lo) + lo

    def _geometry(self, n: int) -> torch.Tensor:
        """(n, 2, 3) affine maps from output crop coords to source coords, in affine_grid's [-1, 1] units."""
        cfg, pp = self.cfg, self.pp
        scale = pp.crop_size / pp.resize_size
        angle = self._uniform(n, -cfg.rotation_degrees, cfg.rotation_degrees) * (math.pi / 180.0)
        flip = torch.where(self._uniform(n, 0.0, 1.0) < cfg.horizontal_flip, -1.0, 1.0)
        slack = 1.0 - scale  # how far the crop centre may move from the image centre
        if cfg.random_crop:
            tx, ty = self._uniform(n, -slack, slack), self._uniform(n, -slack, slack)
        else:
            tx = ty = torch.zeros(n, device=self.gen.device)
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        return torch.stack([torch.stack([cos * flip, -sin, tx], 1),
                            torch.stack([sin * flip, cos, ty], 1)], 1)

    def _coords(self, theta: torch.Tensor, src: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Source pixel coordinates (n, S, S) of each output pixel centre (affine_grid semantics, cheaper)."""
        s = self.pp.crop_size
        u = (torch.arange(s, device=theta.device, dtype=torch.float32) * 2 + 1) / s - 1
        half = src / 2
        a = theta * half  # normalised [-1, 1] -> pixel units
        shift = (a[:, :, 2] + half - 0.5)[:, :, None, None]  # (n, 2, 1, 1)
        px = a[:, 0, 0, None, None] * u + (a[:, 0, 1, None, None] * u[:, None] + shift[:, 0])
        py = a[:, 1, 0, None, None] * u + (a[:, 1, 1, None, None] * u[:, None] + shift[:, 1])
        return px, py

    def _nearest(self, x: torch.Tensor, theta: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """Gather uint8 pixels at the rounded coordinates (edges replicated): (n, S*S, 3) uint8.

        Reads straight from the whole store when `index` names the batch's rows, so no batch copy is made;
        int32 indices when they fit halve the index traffic.
        """
        n, src = theta.shape[0], x.shape[-1]
        px, py = self._coords(theta, src)
        itype = torch.int32 if x.shape[0] * src * src < 2**31 else torch.int64
        # After the clamp the coordinates are >= 0, so truncation is floor (one pass fewer).
        ix = px.add_(0.4999).clamp_(0, src - 1).to(itype)
        iy = py.add_(0.4999).clamp_(0, src - 1).to(itype)
        rows = torch.arange(n, device=x.device) if index is None else index.to(x.device)
        base = rows.to(itype).view(n, 1, 1) * (src * src)
        flat = (iy.mul_(src).add_(ix).add_(base)).view(-1)
        pixels = x.permute(0, 2, 3, 1).reshape(-1, 3)  # a view for NHWC-backed stores
        return pixels.index_select(0, flat).view(n, -1, 3)

    def _bilinear(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Bilinear resampling for stores smaller than the resize size (upscaling): (n, S*S, 3) float 0-255."""
        n, s = x.shape[0], self.pp.crop_size
        grid = F.affine_grid(theta, [n, 3, s, s], align_corners=False)
        out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out.permute(0, 2, 3, 1).reshape(n, s * s, 3)

    def _colour_maps(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample colour jitter as (n, 3, 3) matrices on 0-1 RGB and the contrast weight (n,): brightness,
        contrast, saturation, hue in that order. Contrast mixes in the mean grey, so it is left as a weight."""
        cj = self.cfg.color_jitter
        dev = self.gen.device
        b = self._uniform(n, 1 - cj.brightness, 1 + cj.brightness)
        c = self._uniform(n, 1 - cj.contrast, 1 + cj.contrast)
        s = self._uniform(n, 1 - cj.saturation, 1 + cj.saturation)
        h = self._uniform(n, -cj.hue, cj.hue) * (2 * math.pi)
        eye = torch.eye(3, device=dev)
        sat = s.view(n, 1, 1) * eye + (1 - s).view(n, 1, 1) * torch.ones(3, 1, device=dev) * self._gray
        rot = torch.zeros(n, 3, 3, device=dev)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2] = torch.cos(h), -torch.sin(h)
        rot[:, 2, 1], rot[:, 2, 2] = torch.sin(h), torch.cos(h)
        return (c * b).view(n, 1, 1) * (self._yiq_inv @ rot @ self._yiq @ sat), (1 - c) * b

    def draw(self, n: int) -> AugmentDraw:
        """Parameters for `n` samples (geometry first, then colour: the generator's order). Drawn for the whole
        global batch and sliced per process, so a sample gets the same augmentation however many processes
        train (see photo_detector.parallel)."""
        theta = self._geometry(n)
        return AugmentDraw(theta, *self._colour_maps(n))

    def _colour_normalise(self, x: torch.Tensor, draw: AugmentDraw) -> torch.Tensor:
        """Colour jitter, the 1/255 scale and mean/std normalisation folded into one per-sample affine map on
        (n, P, 3) float pixels in 0-255, then clamped to the valid range.

        Why blocks: a (P, 3) @ (3, 3) product is a shape BLAS runs slowly, and per-channel bounds on a last
        dimension of 3 make the clamp slow too. Viewing `g` pixels as one row of 3g values and the map as a
        block-diagonal (3g, 3g) matrix gives the same numbers at about 4x the speed on CPU.
        """
        n, p = x.shape[0], x.shape[1]
        g = next(k for k in (8, 4, 2, 1) if p % k == 0)
        rows = x.contiguous().view(n, p // g, 3 * g)
        m, contrast_w = draw.colour, draw.contrast_w
        # colour in [0, 1]: y = m @ x/255 + (1-c)*b*gray_mean; hue and saturation keep grey fixed.
        gray_mean = (rows.sum(1).view(n, g, 3).sum(1) / p) @ self._gray / 255.0
        mean, std = self._mean, self._std
        k = m / (255.0 * std.view(1, 3, 1))  # (n, out, in)
        bias = ((contrast_w * gray_mean).view(n, 1) - mean) / std  # (n, 3)
        blocks = torch.einsum("ij,nab->niajb", torch.eye(g, device=x.device), k.transpose(1, 2))
        out = torch.baddbmm(bias.repeat(1, g).unsqueeze(1), rows, blocks.reshape(n, 3 * g, 3 * g))
        lo, hi = (-mean / std).repeat(g), ((1 - mean) / std).repeat(g)
        return out.clamp_(min=lo, max=hi).view(n, p, 3)

    def __call__(self, x: torch.Tensor, channels_last: bool = False,
                 index: torch.Tensor | None = None, draw: AugmentDraw | None = None) -> torch.Tensor:
        """uint8 NCHW (N, 3, T, T) -> augmented, normalised float (N, 3, crop, crop); with `index`, `x` is
        the whole store and the batch is `x[index]` (read in place, never copied at 1:1 scale). `draw`: the
        batch's parameters when drawn beforehand (one process's slice of a global batch); else drawn here.

        At 1:1 scale (store already at resize size) the crop/flip/rotation gather uses nearest pixels, as
        torchvision's RandomRotation does by default, straight from uint8; when the store must be upscaled
        (small images such as CIFAKE's) it resamples bilinearly, as the eval path does.
        """
        n, s = (x.shape[0] if index is None else index.shape[0]), self.pp.crop_size
        draw = draw if draw is not None else self.draw(n)
        if x.shape[-1] == self.pp.resize_size:
            pixels = self._nearest(x, draw.theta, index).float()
        else:
            pixels = self._bilinear(x if index is None else x[index.to(x.device)], draw.theta)
        out = self._colour_normalise(pixels, draw).view(n, s, s, 3).permute(0, 3, 1, 2)
        return out if channels_last else out.contiguous()


def jpeg_recompress(x: torch.Tensor, probability: float, quality: tuple[int, int],
                    generator: torch.Generator, part: slice | None = None, total: int | None = None) -> torch.Tensor:
    """Re-compress a random share of a uint8 NCHW batch as JPEG, each at a quality drawn from `quality`
    (inclusive). Why: when one class arrived as JPEG and the other did not, a detector can learn compression
    traces instead of content ("Fake or JPEG?"); re-compressing training images at random qualities makes
    those traces useless. Works on the given tensor (pass a copy of the store's rows); Pillow's codec, the
    one verify-data and serving decode with (torchvision's own is deprecated since 0.29). With `part` and
    `total`, `x` is those rows of a global batch of `total`: the draw covers the whole batch, as in one process."""
    import io

    import numpy as np
    from PIL import Image

    n = total or x.shape[0]
    pick = torch.rand(n, generator=generator) < probability
    qualities = torch.randint(quality[0], quality[1] + 1, (n,), generator=generator)
    if part is not None:
        pick, qualities = pick[part], qualities[part]
    rows = pick.nonzero().flatten()
    if len(rows) == 0:
        return x
    batch = x[rows.to(x.device)].permute(0, 2, 3, 1).cpu().numpy()  # NHWC uint8 for the codec
    for k, i in enumerate(rows.tolist()):
        buf = io.BytesIO()
        Image.fromarray(batch[k]).save(buf, format="JPEG", quality=int(qualities[i]))
        batch[k] = np.asarray(Image.open(buf).convert("RGB"))
    x[rows.to(x.device)] = torch.from_numpy(batch).permute(0, 3, 1, 2).to(x.device)
    return x


def _gaussian_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    k = torch.exp(-(t * t) / (2 * sigma * sigma))
    return k / k.sum()


def degrade(x: torch.Tensor, cfg: AugmentationConfig, generator: torch.Generator, part: slice | None = None,
            total: int | None = None) -> torch.Tensor:
    """Shrink-and-restore and Gaussian blur for a random share of a uint8 NCHW batch: what the evaluate
    stage's `downscale_*` and `blur_*` perturbations test. Why: a detector trained on full-resolution images
    only learns fine high-frequency traces that a marketplace's resize or a soft focus erases (on the sample
    data such a model called every half-size real photo ai_generated). A picked image is shrunk by a factor
    from `downscale_range` (antialiased) and resized back, and/or blurred with a sigma from `blur_sigma`.
    Works on the given tensor (pass a copy of the store's rows); `part`/`total` as in `jpeg_recompress`."""
    n = total or x.shape[0]
    lo, hi = cfg.downscale_range
    shrink = torch.rand(n, generator=generator) < cfg.downscale_probability
    factor = torch.rand(n, generator=generator) * (hi - lo) + lo
    lo, hi = cfg.blur_sigma
    blur = torch.rand(n, generator=generator) < cfg.blur_probability
    sigma = torch.rand(n, generator=generator) * (hi - lo) + lo
    if part is not None:
        shrink, factor, blur, sigma = shrink[part], factor[part], blur[part], sigma[part]
    size = x.shape[-1]
    for i in (shrink | blur).nonzero().flatten().tolist():
        img = x[i:i + 1].float()
        if shrink[i]:
            small = max(1, round(size * float(factor[i])))
            img = F.interpolate(img, size=(small, small), mode="bilinear", align_corners=False, antialias=True)
            img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)
        if blur[i] and float(sigma[i]) > 0:
            k = _gaussian_kernel(float(sigma[i]), x.device)
            pad = len(k) // 2
            img = F.pad(img, (pad, pad, pad, pad), mode="replicate")
            img = F.conv2d(img, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
            img = F.conv2d(img, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
        x[i] = img.round_().clamp_(0, 255).to(torch.uint8)[0]
    return x
