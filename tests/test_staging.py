"""Packed data on Cloud Storage: training shards staged whole through the storage client (fake-gcs-server)
to local disk, within a byte limit, instead of row reads through the /gcs/ mount.

The "mount" here is a folder laid out like Vertex AI's /gcs/ ($PHOTO_DETECTOR_GCS_MOUNT) whose training
shards are zero-filled at the right size: a row read through it would be zeros, so equal rows prove the
bytes came through the staging path. Its validation shards are real (validation reads the mount)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config

from photo_detector.data.loader import epoch_order
from photo_detector.data.packed import read_manifest, read_packed
from photo_detector.data.staging import StagedSplit
from photo_detector.errors import ConfigError, DataError, PhotoDetectorError
from photo_detector.verify import run_verify

SHARDS = {"verify.min_images_per_class": 2, "verify.shard_mb": 0.02}  # 40 px squares: 4 rows a shard
ROW = 40 * 40 * 3
SHARD = 4 * ROW


@pytest.fixture(scope="module")
def packed(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("packed")
    run_verify(sample_dir, out, tiny_config(**SHARDS))
    return out


@pytest.fixture
def bucket(packed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[object, Path]]:
    """gs://data/verified holds the packed folder; tmp/gcs/data/verified is its "mount" (see the module doc)."""
    from fakes import fake_gcs
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    mount = tmp_path / "gcs"
    shutil.copytree(packed, mount / "data" / "verified")
    for s in read_manifest(packed)["splits"]["train"]["shards"]:
        (mount / "data" / "verified" / s["file"]).write_bytes(b"\0" * s["bytes"])
    monkeypatch.setenv("PHOTO_DETECTOR_GCS_MOUNT", str(mount))
    with fake_gcs():
        b = storage.Client(project="p", credentials=AnonymousCredentials()).create_bucket("data")
        for f in sorted(packed.rglob("*")):
            if f.is_file():
                b.blob(f"verified/{f.relative_to(packed).as_posix()}").upload_from_filename(str(f))
        yield b, mount / "data" / "verified"


def _staged(mounted: Path, limit: int, root: Path) -> StagedSplit:
    from photo_detector.cloud.gcs import staging_source

    source = staging_source(mounted)
    assert source is not None
    return StagedSplit(read_packed(mounted, "train"), source, limit, root)


def test_a_mounted_folder_is_staged_through_the_client_and_a_local_one_is_read_in_place(
        bucket: tuple[object, Path], packed: Path, tmp_path: Path) -> None:
    from photo_detector.cloud.gcs import FolderObjects, staging_source

    _, mounted = bucket
    assert staging_source(mounted) == FolderObjects("gs://data/verified")
    assert staging_source(packed) is None
    assert staging_source(mounted.parent.parent) is None  # the mount itself names no bucket


def test_an_epoch_of_staged_reads_is_bit_exact_within_the_limit_and_leaves_nothing(
        bucket: tuple[object, Path], packed: Path, tmp_path: Path) -> None:
    _, mounted = bucket
    truth = read_packed(packed, "train")
    assert not read_packed(mounted, "train").read(np.arange(8)).any()  # the mount's training rows are zeros
    order = epoch_order(truth.counts, seed=3, epoch=1, window=2)
    batches = [order[i:i + 6] for i in range(0, len(order), 6)]
    limit = 4 * SHARD
    split = _staged(mounted, limit, tmp_path)
    split.plan(batches)
    on_disk = []
    for b in batches:
        assert np.array_equal(split.read(b), truth.read(b))
        on_disk.append(split.disk_bytes())  # the folder's files, listed while no download moves into place
    split.finish()
    assert max(on_disk) <= limit and on_disk[-1] == 0  # within the limit; every shard deleted after its last use
    assert split.stats["downloaded_bytes"] == truth.nbytes  # each shard downloaded once
    assert split.stats["peak_bytes"] <= limit
    # Reads outside the plan (validation, export) go to the folder itself; the second epoch stages again.
    assert not split.read(np.arange(4)).any()
    split.plan(batches[:2])
    assert np.array_equal(split.read(batches[0]), truth.read(batches[0]))
    assert split.stats["downloaded_bytes"] < truth.nbytes  # counted per plan, as finish() logs it
    split.close()
    assert not split.dir.exists()


def test_a_limit_below_one_window_names_the_key(bucket: tuple[object, Path], tmp_path: Path) -> None:
    _, mounted = bucket
    split = _staged(mounted, SHARD, tmp_path)
    order = epoch_order(split.counts, seed=3, epoch=1, window=2)
    with pytest.raises(ConfigError, match=r"train\.stage_mb allows 0\.0 MiB .* needs 0\.1 MiB at once.*"
                                          r"at least 1 .*set train.stage_mb=0"):
        split.plan([order[i:i + 6] for i in range(0, len(order), 6)])
    split.close()


def test_a_changed_or_missing_object_is_a_clear_error(bucket: tuple[object, Path], packed: Path,
                                                      tmp_path: Path) -> None:
    b, mounted = bucket
    shards = read_manifest(packed)["splits"]["train"]["shards"]
    b.blob(f"verified/{shards[0]['file']}").upload_from_string(b"\1" * shards[0]["bytes"])  # type: ignore[attr-defined]
    b.blob(f"verified/{shards[1]['file']}").delete()  # type: ignore[attr-defined]
    split = _staged(mounted, 16 * SHARD, tmp_path)
    split.plan([np.arange(0, 4)])
    with pytest.raises(DataError, match=r"staged copy of .*train-00000\.u8 does not match the manifest.*re-run "
                                        r"verify-data"):
        split.read(np.arange(0, 4))
    split.close()
    # One download thread, whose shard is missing: its reader gets the error, and so does the reader of the
    # next shard (which nothing will download now), rather than waiting for ever.
    from photo_detector.cloud.gcs import staging_source

    source = staging_source(mounted)
    assert source is not None
    split = StagedSplit(read_packed(mounted, "train"), source, 16 * SHARD, tmp_path, downloads=1)
    split.plan([np.arange(4, 8), np.arange(8, 12)])
    for rows in (np.arange(4, 8), np.arange(8, 12)):
        with pytest.raises(PhotoDetectorError, match=r"staging gs://data/verified/shards/train-00001\.u8 failed: "
                                                     r"NotFound.*check the bucket and path"):
            split.read(rows)
    split.close()
    assert not list(tmp_path.glob("photo-detector-stage-*"))


@pytest.mark.slow
def test_training_from_the_mount_stages_its_shards_and_equals_training_from_a_local_folder(
        bucket: tuple[object, Path], packed: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import torch

    from photo_detector.artifacts import BEST
    from photo_detector.cloud.gcs import staging_source
    from photo_detector.train import run_train

    _, mounted = bucket
    cfg = tiny_config(**SHARDS, **{"train.epochs": 2, "train.device": "cpu", "train.stage_mb": 1})
    local = run_train(packed, tmp_path / "local", cfg)
    with caplog.at_level(logging.INFO, logger="photo_detector"):
        staged = run_train(mounted, tmp_path / "staged", cfg, stage=staging_source(mounted))
    assert "streamed from shards staged to" in caplog.text and "staged 0.2 MiB of shards" in caplog.text
    assert [r["val_loss"] for r in staged.history] == [r["val_loss"] for r in local.history]
    a, b = (torch.load(tmp_path / d / BEST, weights_only=False)["model_state_dict"] for d in ("local", "staged"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
