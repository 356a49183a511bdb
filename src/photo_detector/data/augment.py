"""Batched augmentation and eval preprocessing on the training device.

Why batched: per-image PIL transforms in DataLoader workers cost milliseconds per image on the CPU; here a
whole batch goes through one resampling (crop + flip + rotation + resize as a single affine map: a nearest
uint8 gather at 1:1 scale, bilinear when upscaling) and one per-sample affine colour map (brightness,
contrast, saturation, hue and normalisation folded together), on the GPU when there is one.
"""

from __future__ import annotations

import math

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

    def _nearest(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Gather uint8 pixels at the rounded coordinates (edges replicated): (n, S*S, 3) uint8."""
        n, src = x.shape[0], x.shape[-1]
        px, py = self._coords(theta, src)
        ix = px.add_(0.4999).floor_().clamp_(0, src - 1).to(torch.int64)
        iy = py.add_(0.4999).floor_().clamp_(0, src - 1).to(torch.int64)
        base = torch.arange(n, device=x.device).view(n, 1, 1) * (src * src)
        flat = (iy.mul_(src).add_(ix).add_(base)).view(-1)
        pixels = x.permute(0, 2, 3, 1).reshape(n * src * src, 3)
        return pixels.index_select(0, flat).view(n, -1, 3)

    def _bilinear(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Bilinear resampling for stores smaller than the resize size (upscaling): (n, S*S, 3) float 0-255."""
        n, s = x.shape[0], self.pp.crop_size
        grid = F.affine_grid(theta, [n, 3, s, s], align_corners=False)
        out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out.permute(0, 2, 3, 1).reshape(n, s * s, 3)

    def _colour_normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast, saturation, hue (in that order), the 1/255 scale and mean/std normalisation,
        folded into one per-sample affine map on (n, P, 3) pixels in 0-255, then clamped to the valid range."""
        cj = self.cfg.color_jitter
        n, dev = x.shape[0], x.device
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
        hue = self._yiq_inv @ rot @ self._yiq
        mean, std = self._mean, self._std
        # colour in [0, 1]: y = c*b*(hue@sat) x/255 + (1-c)*b*gray_mean; the grey vector is fixed by hue@sat.
        k = (c * b / 255.0).view(n, 1, 1) * (hue @ sat)
        gray_mean = x.mean(dim=1) @ self._gray / 255.0
        bias = ((1 - c) * b * gray_mean).view(n, 1, 1)
        k = k / std.view(1, 3, 1)
        bias = (bias - mean) / std  # (n, 1, 3)
        out = torch.baddbmm(bias, x, k.transpose(1, 2))
        return out.clamp_(min=(-mean / std), max=((1 - mean) / std))

    def __call__(self, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """uint8 NCHW (N, 3, T, T) -> augmented, normalised float (N, 3, crop, crop).

        At 1:1 scale (store already at resize size) the crop/flip/rotation gather uses nearest pixels, as
        torchvision's RandomRotation does by default, straight from uint8; when the store must be upscaled
        (small images such as CIFAKE's) it resamples bilinearly, as the eval path does.
        """
        n, s = x.shape[0], self.pp.crop_size
        theta = self._geometry(n)
        at_scale = x.shape[-1] == self.pp.resize_size
        pixels = self._nearest(x, theta).float() if at_scale else self._bilinear(x, theta)
        out = self._colour_normalise(pixels).view(n, s, s, 3).permute(0, 3, 1, 2)
        return out if channels_last else out.contiguous()
