"""The fingerprint that keys the pipeline's cache: from listings alone, it changes with any name or byte under
the prefix and with nothing else (fake-gcs-server keeps real CRC32Cs, like Cloud Storage)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from photo_detector.errors import DataError
from photo_detector.fingerprint import fingerprint


def gcs_fingerprint(uri: str):
    """What the fingerprint stage does for gs://: the edge lists, the library digests the listing."""
    from photo_detector.cloud.gcs import listing

    return fingerprint(uri, listing(uri))


@pytest.fixture
def gcs() -> Iterator[object]:
    from fakes import fake_gcs
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    with fake_gcs():
        client = storage.Client(project="p", credentials=AnonymousCredentials())
        client.create_bucket("data")
        yield client.bucket("data")


def put(bucket: object, name: str, data: bytes) -> None:
    bucket.blob(name).upload_from_string(data)


def test_gcs_fingerprint_follows_names_and_bytes_only(gcs) -> None:
    for i in range(5):
        put(gcs, f"set/train/real/{i}.png", bytes([i]) * 100)
    put(gcs, "other/x.png", b"outside the prefix")
    first = gcs_fingerprint("gs://data/set")
    assert first.files == 5 and first.bytes == 500 and first.digest.startswith("fp:")
    put(gcs, "set/train/real/2.png", bytes([2]) * 100)  # re-uploaded, same bytes: a new generation only
    put(gcs, "other/y.png", b"elsewhere")
    assert gcs_fingerprint("gs://data/set").digest == first.digest
    put(gcs, "set/train/real/2.png", bytes([9]) * 100)  # same size, other bytes
    changed = gcs_fingerprint("gs://data/set").digest
    assert changed != first.digest
    gcs.copy_blob(gcs.blob("set/train/real/2.png"), gcs, "set/train/real/2b.png")
    gcs.delete_blob("set/train/real/2.png")  # renamed
    assert gcs_fingerprint("gs://data/set").digest not in (first.digest, changed)
    with pytest.raises(DataError, match="is empty"):
        gcs_fingerprint("gs://data/nothing")


def test_local_fingerprint_follows_content(sample_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(sample_dir, copy)
    first = fingerprint(str(copy))
    assert fingerprint(str(copy)).digest == first.digest
    target = next((copy / "test" / "real").iterdir())
    target.write_bytes(target.read_bytes() + b"\0")
    assert fingerprint(str(copy)).digest != first.digest
    assert first.files == sum(1 for p in sample_dir.rglob("*") if p.is_file())
