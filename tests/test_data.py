from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from photo_detector.data.layout import discover, discover_split
from photo_detector.data.sample import generate_sample
from photo_detector.data.store import load_store, store_size_for
from photo_detector.errors import DataError, OutputExistsError


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_sample_is_deterministic_and_complete(tmp_path: Path) -> None:
    a = generate_sample(tmp_path / "a", per_class=10, size=32, seed=3)
    b = generate_sample(tmp_path / "b", per_class=10, size=32, seed=3)
    c = generate_sample(tmp_path / "c", per_class=10, size=32, seed=4)
    assert _tree_digest(a.root) == _tree_digest(b.root)
    assert _tree_digest(a.root) != _tree_digest(c.root)
    assert a.counts == {"train": {"real": 6, "ai_generated": 6}, "val": {"real": 2, "ai_generated": 2},
                        "test": {"real": 2, "ai_generated": 2}}
    splits = discover(a.root)
    assert [len(s) for s in splits.values()] == [12, 4, 4]


def test_more_images_keep_the_earlier_ones(tmp_path: Path) -> None:
    small = generate_sample(tmp_path / "s", per_class=10, size=32, seed=3).root
    big = generate_sample(tmp_path / "b", per_class=20, size=32, seed=3).root
    name = "train/ai_generated/img_00003.png"
    assert (small / name).read_bytes() == (big / name).read_bytes()


def test_classes_share_format_size_and_mode(sample_dir: Path) -> None:
    seen = {}
    for label in ("real", "ai_generated"):
        props = set()
        for p in (sample_dir / "train" / label).iterdir():
            with Image.open(p) as im:
                props.add((p.suffix, im.format, im.size, im.mode))
        seen[label] = props
    assert seen["real"] == seen["ai_generated"] == {(".png", "PNG", (40, 40), "RGB")}


def test_classes_differ_in_pixels(sample_dir: Path) -> None:
    """The generator's artifact must be there: AI images carry a transposed-convolution checkerboard. A
    matched filter (best over period and phase) responds several grey levels on them and ~0 on real ones."""
    def checkerboard_response(path: Path) -> float:
        im = np.asarray(Image.open(path), np.float32).mean(2)
        yy, xx = np.mgrid[0:im.shape[0], 0:im.shape[1]]
        return max(abs(float((im * ((((xx + ox) // h + (yy + oy) // h) % 2) * 2.0 - 1.0)).mean()))
                   for h in (1, 2, 4) for oy in range(2 * h) for ox in range(2 * h))

    real = np.median([checkerboard_response(p) for p in (sample_dir / "train" / "real").iterdir()])
    fake = np.median([checkerboard_response(p) for p in (sample_dir / "train" / "ai_generated").iterdir()])
    assert fake > 3 * real and fake > 2.0


def test_sample_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--force"):
        generate_sample(out, per_class=3, size=16)
    assert (out / "keep.txt").read_text() == "mine"
    generate_sample(out, per_class=3, size=16, force=True)
    assert not (out / "keep.txt").exists() and (out / "test" / "real" / "img_00000.png").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temp folders left behind


def _make_layout(root: Path, files: dict[str, bytes | None]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            p.write_bytes(data)


def _png(color: tuple[int, int, int] = (1, 2, 3), size: tuple[int, int] = (8, 8), fmt: str = "PNG") -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def test_layout_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset folder .*nope does not exist"):
        discover_split(tmp_path / "nope", "train")
    with pytest.raises(DataError, match=r"split folder .*train is missing"):
        discover_split(tmp_path, "train")
    _make_layout(tmp_path, {"train/real/a.png": _png()})
    with pytest.raises(DataError, match=r"class folder .*train/ai_generated is missing"):
        discover_split(tmp_path, "train")
    (tmp_path / "train" / "ai_generated").mkdir()
    (tmp_path / "train" / "ai_generated" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"train/ai_generated has no images"):
        discover_split(tmp_path, "train")


def test_layout_accepts_every_extension_in_any_case(tmp_path: Path) -> None:
    _make_layout(tmp_path, {
        "train/real/a.JPG": _png(fmt="JPEG"), "train/real/b.jpeg": _png(fmt="JPEG"),
        "train/real/c.Png": _png(), "train/ai_generated/d.webp": _png(fmt="WEBP"),
        "train/ai_generated/.hidden.png": _png(), "train/ai_generated/readme.md": b"x",
    })
    files = discover_split(tmp_path, "train")
    assert [p.name for p in files.paths] == ["a.JPG", "b.jpeg", "c.Png", "d.webp"]
    assert files.labels == (0, 0, 0, 1)
    store = load_store(files, 8)
    assert store.images.shape == (4, 8, 8, 3) and store.images.dtype == np.uint8


def test_store_size_follows_the_data(tmp_path: Path) -> None:
    _make_layout(tmp_path, {"train/real/a.png": _png(size=(32, 48)), "train/ai_generated/b.png": _png(size=(30, 30))})
    files = discover_split(tmp_path, "train")
    assert store_size_for(files.paths, 256) == 32  # never upscale into the store
    assert store_size_for(files.paths, 24) == 24


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    _make_layout(tmp_path, {"train/real/ok.png": _png(), "train/ai_generated/broken.png": _png()[:40]})
    files = discover_split(tmp_path, "train")
    with pytest.raises(DataError, match=r"cannot decode image .*broken.png"):
        load_store(files, 8)


def test_class_subfolders_are_sources(tmp_path: Path) -> None:
    """`ai_generated/<generator>/...` and `real/<source>/...` are listed, at any depth, with the first subfolder
    as the source; images straight in a class folder have the class name as theirs; hidden folders are skipped."""
    for rel in ("test/real/a.png", "test/real/phone/b.png", "test/real/phone/2024/c.png",
                "test/ai_generated/sdxl/d.png", "test/ai_generated/midjourney/e.png",
                "test/ai_generated/.cache/f.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / rel)
    split = discover_split(tmp_path, "test")
    got = {p.relative_to(tmp_path).as_posix(): (y, s) for p, y, s in zip(split.paths, split.labels, split.sources,
                                                                      strict=True)}
    assert got == {"test/real/a.png": (0, "real"), "test/real/phone/b.png": (0, "phone"),
                   "test/real/phone/2024/c.png": (0, "phone"), "test/ai_generated/midjourney/e.png": (1, "midjourney"),
                   "test/ai_generated/sdxl/d.png": (1, "sdxl")}
