"""verify-data: each bad case built in a fixture, with the exact findings and exit code it must produce."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from photo_detector.data.packed import read_packed
from photo_detector.errors import DataError
from photo_detector.verify import jpeg_quality, perceptual_hash, run_verify

CFG = {"verify.min_images_per_class": 2}


@pytest.fixture
def data(sample_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the session's clean sample data (22/4/4 images per class)."""
    root = tmp_path / "data"
    shutil.copytree(sample_dir, root)
    return root


def verify(root: Path, out: Path, **overrides: object):
    try:
        return run_verify(root, out, tiny_config(**{**CFG, **overrides})), None
    except DataError as exc:
        return json.loads((out / "verify_report.json").read_text()), exc


def checks(report) -> dict[str, tuple[str, list[str]]]:
    """Findings by check; within-split near duplicates are left out: the sample data has some by design
    (its crops come from a few source tiles), they are warnings, and no test here is about them."""
    findings = report["findings"] if isinstance(report, dict) else [f.__dict__ for f in report.findings]
    return {f["check"]: (f["severity"], sorted(f["paths"])) for f in findings if f["check"] != "near-duplicates"}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "photo_detector", "verify-data", *args], capture_output=True,
                          text=True, timeout=120)


def test_clean_data_passes_packs_and_reports(data: Path, tmp_path: Path) -> None:
    res, err = verify(data, tmp_path / "out")
    assert err is None and res.errors == []
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["digest"] == res.digest and manifest["splits"]["train"]["count"] == 44
    images = read_packed(tmp_path / "out", "train").read_all()
    assert images.shape == (44, 40, 40, 3) and images.dtype == np.uint8
    assert res.metrics()["train_real"] == 22.0 and res.metrics()["errors"] == 0.0
    assert "PASSED" in (tmp_path / "out" / "verify_report.md").read_text()


def test_cli_exit_codes_and_json(data: Path, tmp_path: Path) -> None:
    ok = cli(str(data), "--set", "verify.min_images_per_class=2", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["passed"] is True
    (data / "train" / "real" / "notes.txt").write_text("hi")
    warned = cli(str(data), "--set", "verify.min_images_per_class=2")
    assert warned.returncode == 0 and "other-files" in warned.stdout
    strict = cli(str(data), "--set", "verify.min_images_per_class=2", "--strict")
    assert strict.returncode == 1
    (data / "test" / "real" / "zero.png").write_bytes(b"")
    failed = cli(str(data), "--set", "verify.min_images_per_class=2", "--json")
    assert failed.returncode == 2 and json.loads(failed.stdout)["passed"] is False


def test_broken_files_are_each_named(data: Path, tmp_path: Path) -> None:
    good = (data / "train" / "real" / "img_00000.png").read_bytes()
    buf = io.BytesIO()
    Image.open(io.BytesIO(good)).convert("RGB").save(buf, format="JPEG", quality=90)
    (data / "train" / "real" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (data / "val" / "ai_generated" / "zero.png").write_bytes(b"")
    (data / "test" / "real" / "random.jpg").write_bytes(bytes(range(256)) * 4)
    report, err = verify(data, tmp_path / "out")
    assert err is not None and "failed verification" in str(err)
    found = checks(report)
    assert found["truncated"] == ("error", ["train/real/truncated.jpg"])
    assert found["zero-byte"] == ("error", ["val/ai_generated/zero.png"])
    assert found["unreadable"] == ("error", ["test/real/random.jpg"])
    assert not (tmp_path / "out" / "manifest.json").exists(), "no packed data for failed verification"


def test_content_decides_the_format_and_upper_case_is_fine(data: Path, tmp_path: Path) -> None:
    src = data / "train" / "ai_generated" / "img_00001.png"
    src.rename(src.with_name("png_bytes.webp"))
    buf = io.BytesIO()
    Image.open(data / "train" / "real" / "img_00001.png").convert("RGB").save(buf, format="JPEG", quality=92)
    (data / "train" / "real" / "img_00001.png").unlink()
    (data / "train" / "real" / "UPPER.JPG").write_bytes(buf.getvalue())
    res, err = verify(data, tmp_path / "out")
    assert err is None
    assert checks(res) == {"extension-mismatch": ("warning", ["train/ai_generated/png_bytes.webp"])}


def test_huge_declared_size_is_too_large_without_decoding(data: Path, tmp_path: Path) -> None:
    raw = bytearray((data / "train" / "real" / "img_00002.png").read_bytes())
    ihdr = struct.pack(">II", 60000, 60000) + bytes(raw[24:29])
    raw[16:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    (data / "train" / "real" / "img_00002.png").write_bytes(bytes(raw))
    report, err = verify(data, tmp_path / "out")
    assert err is not None
    assert checks(report)["too-large"] == ("error", ["train/real/img_00002.png"])


def _leak(data: Path) -> None:
    """A re-encoded copy of a train image in test, a val image copied into val, and a train image's copy
    in val: two held-out twins of training images, one within-split duplicate."""
    buf = io.BytesIO()
    Image.open(data / "train" / "real" / "img_00003.png").convert("RGB").save(buf, format="JPEG", quality=85)
    (data / "test" / "real" / "copy.jpg").write_bytes(buf.getvalue())
    shutil.copy(data / "val" / "ai_generated" / "img_00000.png", data / "val" / "ai_generated" / "same.png")
    shutil.copy(data / "train" / "ai_generated" / "img_00001.png", data / "val" / "ai_generated" / "leak.png")


def test_leakage_is_an_error_with_the_error_policy(data: Path, tmp_path: Path) -> None:
    _leak(data)
    report, err = verify(data, tmp_path / "out", **{"verify.leakage": "error"})
    assert err is not None and "verify.leakage=quarantine" in str(err)
    found = checks(report)
    assert found["leakage-near-duplicates"] == ("error", ["test/real/copy.jpg", "train/real/img_00003.png"])
    assert found["leakage-exact-duplicates"] == ("error", ["train/ai_generated/img_00001.png",
                                                           "val/ai_generated/leak.png"])
    assert found["exact-duplicates"] == ("warning", ["val/ai_generated/img_00000.png", "val/ai_generated/same.png"])
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_leakage_quarantines_the_held_out_twin_and_evaluation_skips_it(data: Path, tmp_path: Path,
                                                                      trained_dir: Path) -> None:
    from photo_detector.evaluate import run_evaluate

    _leak(data)
    res, err = verify(data, tmp_path / "out", **{"verify.max_quarantine_fraction": 0.25})
    assert err is None, err
    assert [(q.path, q.split, q.twin, q.kind) for q in res.quarantined] == [
        ("val/ai_generated/leak.png", "val", "train/ai_generated/img_00001.png", "exact-duplicates"),
        ("test/real/copy.jpg", "test", "train/real/img_00003.png", "near-duplicates")]
    assert checks(res)["leakage-quarantined"] == ("warning", ["test/real/copy.jpg", "val/ai_generated/leak.png"])
    assert (res.metrics()["quarantined_val"], res.metrics()["quarantined_test"]) == (1.0, 1.0)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert "val/ai_generated/leak.png" not in read_packed(tmp_path / "out", "val").paths
    assert manifest["splits"]["val"]["count"] == 9 == len(read_packed(tmp_path / "out", "val").read_all())
    assert manifest["splits"]["train"]["count"] == 44, "training images are never dropped"
    assert "test/real/copy.jpg" not in manifest["files"]["test"]["paths"]
    md = (tmp_path / "out" / "verify_report.md").read_text()
    assert "| `test/real/copy.jpg` | test | `train/real/img_00003.png` | near-duplicates |" in md
    # The evaluate stage reads the verified dataset: the quarantined file is not scored, and says so.
    on_raw = run_evaluate(trained_dir, data, split="test")
    on_verified = run_evaluate(trained_dir, tmp_path / "out", split="test")
    assert on_raw.n_images == 9 and on_verified.n_images == 8 and on_verified.left_out == {"quarantined": 1}


def test_quarantining_too_much_of_a_split_is_an_error(data: Path, tmp_path: Path) -> None:
    _leak(data)
    report, err = verify(data, tmp_path / "out")  # 1 of 9 test images is 11% > 5%
    assert err is not None and "verify.max_quarantine_fraction" in str(err)
    assert checks(report)["quarantine-too-large"][0] == "error"


def _reals_as_jpeg(data: Path, quality: int = 90) -> None:
    for path in list(data.glob("*/real/*.png")):
        Image.open(path).convert("RGB").save(path.with_suffix(".jpg"), format="JPEG", quality=quality)
        path.unlink()


def test_all_png_fakes_vs_all_jpeg_reals_is_a_shortcut_that_names_align(data: Path, tmp_path: Path) -> None:
    _reals_as_jpeg(data)
    report, err = verify(data, tmp_path / "out")
    assert err is not None and "verify.shortcut_policy=align" in str(err)
    severity, _ = checks(report)["shortcut"]
    assert severity == "error" and "lookup classifier scores 1.00" in str(err)


def test_align_reencodes_every_image_then_the_check_passes(data: Path, tmp_path: Path) -> None:
    _reals_as_jpeg(data)
    res, err = verify(data, tmp_path / "out", **{"verify.shortcut_policy": "align",
                                                  "verify.align_jpeg_quality": 80})
    assert err is None, err
    assert res.shortcut == {"policy": "align", "score": 1.0, "limit": 0.7, "aligned_quality": 80,
                            "aligned_score": 0.5}
    assert checks(res)["shortcut-aligned"][0] == "warning"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["shortcut"]["policy"] == "align"
    # The packed fake (a PNG) is what its JPEG re-encoding at quality 80 decodes to, not its own pixels.
    packed = read_packed(tmp_path / "out", "train").read_all()
    first_fake = read_packed(tmp_path / "out", "train").paths.index("train/ai_generated/img_00000.png")
    original = np.asarray(Image.open(data / "train" / "ai_generated" / "img_00000.png").convert("RGB"))
    buf = io.BytesIO()
    Image.fromarray(original).save(buf, format="JPEG", quality=80)
    assert np.array_equal(packed[first_fake], np.asarray(Image.open(buf).convert("RGB")))
    assert not np.array_equal(packed[first_fake], original)


def test_align_still_fails_when_size_alone_separates_the_classes(data: Path, tmp_path: Path) -> None:
    for path in list(data.glob("*/real/*.png")):
        Image.open(path).resize((48, 48)).save(path)
    report, err = verify(data, tmp_path / "out", **{"verify.shortcut_policy": "align"})
    assert err is not None and "image size alone tells the classes apart" in str(err)
    assert checks(report)["shortcut"][0] == "error"


def test_empty_class_and_missing_split(data: Path, tmp_path: Path) -> None:
    for f in (data / "val" / "real").iterdir():
        f.unlink()
    shutil.rmtree(data / "test")
    report, err = verify(data, tmp_path / "out")
    assert err is not None
    found = checks(report)
    assert found["layout"] == ("error", [str(data / "test")])
    assert found["min-images"] == ("error", ["val/real"])
    assert found["class-balance"] == ("error", ["val"])


def test_class_imbalance_is_an_error(data: Path, tmp_path: Path) -> None:
    for f in sorted((data / "val" / "real").iterdir())[1:]:
        f.unlink()
    report, err = verify(data, tmp_path / "out", **{"verify.min_images_per_class": 1})
    assert err is not None and "minority/majority 0.25 < verify.min_class_balance 0.3" in str(err)
    assert set(checks(report)) == {"class-balance"}


def test_counts_below_the_configured_minimum(data: Path, tmp_path: Path) -> None:
    report, err = verify(data, tmp_path / "out", **{"verify.min_images_per_class": 10})
    assert err is not None
    assert checks(report)["min-images"] == ("error", ["test/ai_generated", "test/real", "val/ai_generated",
                                                      "val/real"])


def test_helpers_measure_what_they_claim() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    for q in (50, 75, 95):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=q)
        assert abs(jpeg_quality(Image.open(io.BytesIO(buf.getvalue()))) - q) <= 1
    assert jpeg_quality(img) == -1
    other = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert perceptual_hash(img) == perceptual_hash(img.copy())
    assert bin(perceptual_hash(img) ^ perceptual_hash(other)).count("1") > 10


@pytest.mark.parametrize("max_distance", [0, 2, 4, 7])
def test_banded_near_pair_search_equals_brute_force(max_distance: int) -> None:
    from photo_detector.verify.duplicates import near_pairs, popcount

    rng = np.random.default_rng(max_distance)
    h = rng.integers(0, 2**64, 2000, dtype=np.uint64, endpoint=False)
    for k in range(60):  # plant pairs at every distance up to max_distance + 2
        bits = rng.choice(64, size=k % (max_distance + 3), replace=False)
        h[1000 + k] = h[k] ^ np.uint64(sum(1 << int(b) for b in bits))
    d = popcount(h[:, None] ^ h[None, :])
    i, j = np.nonzero(np.triu(d <= max_distance, 1))
    assert set(map(tuple, near_pairs(h, max_distance).tolist())) == set(zip(i.tolist(), j.tolist(), strict=True))
