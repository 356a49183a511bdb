"""The torch eval path (training-time validation) and the torch-free path (evaluate, serve) must agree."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from photo_detector.config import AugmentationConfig, ColorJitterConfig
from photo_detector.data.augment import AugmentDraw, BatchAugment, eval_transform, uint8_nchw
from photo_detector.preprocess import Preprocess, decode_square, preprocess_files, to_model_input

# Stated tolerance, in normalised units: when the store is already at resize size both paths do identical
# uint8 work and differ only by float rounding; when they upsample (Pillow vs torch bilinear), at most one
# uint8 level per pixel (1/255/std ~ 0.018).
EXACT_TOL = 1e-5
RESAMPLE_TOL = 1.01 / 255 / 0.224


def _images(tmp_path: Path, size: tuple[int, int], n: int = 6, fmt: str = "PNG") -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        p = tmp_path / f"im{i}.{fmt.lower()}"
        Image.fromarray(arr).save(p, fmt)
        paths.append(p)
    return paths


def _torch_path(paths: list[Path], pp: Preprocess) -> np.ndarray:
    store = np.stack([decode_square(p, pp.store_size) for p in paths])
    return eval_transform(uint8_nchw(torch.from_numpy(store)), pp).numpy()


@pytest.mark.parametrize(("size", "pp", "tol"), [
    ((72, 72), Preprocess(72, 72, 64), EXACT_TOL),          # sample profile: no resampling at all
    ((300, 200), Preprocess(256, 256, 224), EXACT_TOL),     # large photos: Pillow downscales once, shared
    ((32, 32), Preprocess(32, 256, 224), RESAMPLE_TOL),     # CIFAKE: small store, upscaled per batch
])
def test_torch_and_numpy_eval_preprocessing_agree(tmp_path: Path, size, pp: Preprocess, tol: float) -> None:
    paths = _images(tmp_path, size)
    ours = preprocess_files(paths, pp)
    theirs = _torch_path(paths, pp)
    assert ours.shape == theirs.shape == (len(paths), 3, pp.crop_size, pp.crop_size)
    assert ours.dtype == np.float32
    assert np.max(np.abs(ours - theirs)) <= tol


def test_normalisation_uses_mean_and_std() -> None:
    gray = np.full((1, 8, 8, 3), 128, np.uint8)
    pp = Preprocess(8, 8, 8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    out = to_model_input(gray, pp)
    np.testing.assert_allclose(out[0, :, 0, 0], (128 / 255 - 0.5) / np.array([0.25, 0.5, 1.0]), atol=1e-6)


def test_decode_square_takes_bytes_and_center_crops() -> None:
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, 10:30] = 255  # the centre square of a 40x20 image is all white
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    sq = decode_square(buf.getvalue(), 20)
    assert sq.shape == (20, 20, 3) and sq.min() == 255


def _batch(n: int = 4, size: int = 40) -> torch.Tensor:
    rng = np.random.default_rng(1)
    return uint8_nchw(torch.from_numpy(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)))


def _aug(cfg: AugmentationConfig, pp: Preprocess, seed: int = 0) -> BatchAugment:
    return BatchAugment(cfg, pp, torch.Generator().manual_seed(seed))


NO_AUG = AugmentationConfig(horizontal_flip=0.0, rotation_degrees=0.0, random_crop=False,
                            color_jitter=ColorJitterConfig(0.0, 0.0, 0.0, 0.0))


def test_augment_with_everything_off_is_the_eval_transform() -> None:
    pp = Preprocess(40, 40, 32)
    x = _batch()
    np.testing.assert_allclose(_aug(NO_AUG, pp)(x).numpy(), eval_transform(x, pp).numpy(), atol=1e-4)


def test_flip_probability_one_mirrors_the_center_crop() -> None:
    pp = Preprocess(40, 40, 32)
    x = _batch()
    cfg = AugmentationConfig(**{**NO_AUG.__dict__, "horizontal_flip": 1.0})
    np.testing.assert_allclose(_aug(cfg, pp)(x).numpy(), eval_transform(x, pp).flip(-1).numpy(), atol=1e-4)


def test_brightness_scales_pixels_within_range() -> None:
    pp = Preprocess(40, 40, 32, mean=(0, 0, 0), std=(1, 1, 1))
    x = torch.full((64, 40, 40, 3), 100, dtype=torch.uint8).permute(0, 3, 1, 2)
    cfg = AugmentationConfig(**{**NO_AUG.__dict__, "color_jitter": ColorJitterConfig(0.2, 0.0, 0.0, 0.0)})
    out = _aug(cfg, pp)(x)
    factors = out[:, 0, 0, 0] / (100 / 255)
    assert factors.min() >= 0.8 - 1e-5 and factors.max() <= 1.2 + 1e-5 and factors.std() > 0.05
    assert torch.allclose(out, out[:, :1, :1, :1].expand_as(out), atol=1e-5)  # gray stays gray and flat


@pytest.mark.parametrize("field", ["contrast", "saturation", "hue"])
def test_each_colour_op_changes_colour_images(field: str) -> None:
    pp = Preprocess(40, 40, 32)
    x = _batch()
    jitter = ColorJitterConfig(**{**dict.fromkeys(["brightness", "contrast", "saturation", "hue"], 0.0),
                                  field: 0.3 if field != "hue" else 0.1})
    cfg = AugmentationConfig(**{**NO_AUG.__dict__, "color_jitter": jitter})
    assert not torch.allclose(_aug(cfg, pp)(x), eval_transform(x, pp), atol=1e-3)


def test_rotation_and_random_crop_vary_per_sample_and_are_seeded() -> None:
    pp = Preprocess(40, 40, 32)
    x = _batch(1).expand(8, -1, -1, -1)
    cfg = AugmentationConfig(**{**NO_AUG.__dict__, "rotation_degrees": 15.0, "random_crop": True})
    out = _aug(cfg, pp, seed=5)(x)
    assert out.shape == (8, 3, 32, 32)
    assert not torch.allclose(out[0], out[1])
    assert torch.equal(out, _aug(cfg, pp, seed=5)(x))
    assert not torch.equal(out, _aug(cfg, pp, seed=6)(x))


def test_channels_last_output() -> None:
    out = _aug(AugmentationConfig(), Preprocess(40, 40, 32))(_batch(), channels_last=True)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_upscaling_store_uses_bilinear_like_the_eval_path() -> None:
    """Small stores (CIFAKE) are upscaled bilinearly in training too, so train and eval see alike pixels."""
    pp = Preprocess(20, 40, 32)
    x = _batch(size=20)
    got = _aug(NO_AUG, pp)(x).numpy()
    want = eval_transform(x, pp).numpy()
    assert np.max(np.abs(got - want)) <= RESAMPLE_TOL


@pytest.mark.parametrize("crop", [32, 30, 31])  # pixel counts divisible by 8, by 4 only, by nothing
def test_blocked_colour_map_equals_the_per_pixel_affine_map(crop: int) -> None:
    """The block-diagonal fast path computes exactly the per-pixel colour + normalisation map."""
    pp = Preprocess(40, 40, crop)
    cfg = AugmentationConfig(color_jitter=ColorJitterConfig(0.3, 0.3, 0.3, 0.1))
    x = torch.randint(0, 256, (5, crop * crop, 3), generator=torch.Generator().manual_seed(3)).float()
    aug = _aug(cfg, pp, seed=9)
    got = aug._colour_normalise(x, AugmentDraw(torch.zeros(5, 2, 3), *aug._colour_maps(5)))

    m, contrast_w = _aug(cfg, pp, seed=9)._colour_maps(5)  # the same draws
    mean, std = torch.tensor(pp.mean), torch.tensor(pp.std)
    gray = torch.tensor([0.299, 0.587, 0.114])
    rgb = torch.einsum("noi,npi->npo", m, x / 255.0) + (contrast_w * (x.mean(1) @ gray / 255.0)).view(5, 1, 1)
    want = torch.minimum(torch.maximum((rgb - mean) / std, -mean / std), (1 - mean) / std)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("store_size", [40, 20])  # gather at 1:1 scale, bilinear upscaling
def test_a_slice_of_the_global_draw_augments_like_the_whole_batch(store_size: int) -> None:
    """What lets N training processes match one: each augments its rows with its slice of one global draw."""
    pp = Preprocess(store_size, 40, 32)
    store = _batch(10, store_size)
    idx = torch.tensor([7, 2, 5, 9, 0, 3])
    whole = _aug(AugmentationConfig(), pp, seed=4)(store, index=idx)
    aug = _aug(AugmentationConfig(), pp, seed=4)
    draw = aug.draw(6)
    halves = [aug(store, index=idx[rows], draw=draw[rows]) for rows in (slice(0, 3), slice(3, 6))]
    torch.testing.assert_close(torch.cat(halves), whole, atol=0, rtol=0)


@pytest.mark.parametrize("store_size", [40, 20])  # gather at 1:1 scale, bilinear upscaling
def test_reading_the_batch_in_place_equals_copying_it_out(store_size: int) -> None:
    pp = Preprocess(store_size, 40, 32)
    store = _batch(10, store_size)
    idx = torch.tensor([7, 2, 2, 9])
    torch.testing.assert_close(_aug(AugmentationConfig(), pp, seed=4)(store, index=idx),
                               _aug(AugmentationConfig(), pp, seed=4)(store[idx]), atol=0, rtol=0)
