"""data upload / download against fake-gcs-server, and CIFAKE layout from a published-style folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli

from photo_detector.data.cifake import prepare_cifake, val_bucket
from photo_detector.errors import DataError


@pytest.fixture
def bucket() -> Iterator[str]:
    from fakes import fake_gcs
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    with fake_gcs():
        storage.Client(project="p", credentials=AnonymousCredentials()).create_bucket("data")
        yield os.environ["STORAGE_EMULATOR_HOST"]


def data_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("data", *args)


def test_upload_download_round_trip_skips_unchanged_and_verifies(bucket: str, sample_dir: Path,
                                                                 tmp_path: Path) -> None:
    up = data_cli("upload", str(sample_dir), "gs://data/sets/sample")
    assert up.returncode == 0, up.stderr
    n = sum(1 for p in sample_dir.rglob("*") if p.is_file())
    assert f"uploaded {n} files" in up.stdout
    again = data_cli("upload", str(sample_dir), "gs://data/sets/sample")
    assert f"uploaded 0 files (0.0 MB), {n} unchanged" in again.stdout

    local = tmp_path / "copy"
    down = data_cli("download", "gs://data/sets/sample", str(local))
    assert down.returncode == 0 and f"downloaded {n} files" in down.stdout
    for p in sample_dir.rglob("*.png"):
        assert (local / p.relative_to(sample_dir)).read_bytes() == p.read_bytes()

    # An interrupted download: one file missing, one corrupted locally. Only those two are fetched again.
    victims = sorted(local.rglob("*.png"))[:2]
    victims[0].unlink()
    victims[1].write_bytes(b"garbage")
    resumed = data_cli("download", "gs://data/sets/sample", str(local))
    assert "downloaded 2 files" in resumed.stdout and f"{n - 2} unchanged" in resumed.stdout
    assert victims[1].read_bytes() == (sample_dir / victims[1].relative_to(local)).read_bytes()
    assert not [p for p in local.rglob("*") if p.name.endswith(".tmp")], "no half-written files"


def test_worker_processes_mirror_and_report_failures_in_one_line(bucket: str, sample_dir: Path,
                                                                 tmp_path: Path) -> None:
    """Large copies run in worker processes (the client is GIL-bound per file); same mirror, same errors."""
    env = {**os.environ, "PHOTO_DETECTOR_GCS_PROCESSES": "2"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "photo_detector", "data", *a],  # noqa: E731
                                    capture_output=True, text=True, env=env, timeout=120)
    n = sum(1 for p in sample_dir.rglob("*") if p.is_file())
    up = run("upload", str(sample_dir), "gs://data/procs")
    assert up.returncode == 0 and f"uploaded {n} files" in up.stdout, up.stderr
    down = run("download", "gs://data/procs", str(tmp_path / "back"))
    assert down.returncode == 0 and f"downloaded {n} files" in down.stdout, down.stderr
    assert all((tmp_path / "back" / p.relative_to(sample_dir)).read_bytes() == p.read_bytes()
               for p in sample_dir.rglob("*") if p.is_file())

    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "train").write_text("a file where a folder must go")
    failed = run("download", "gs://data/procs", str(blocked))
    assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr
    last = failed.stderr.strip().splitlines()[-1]  # the lines before are the progress bar
    assert re.match(r"error: downloading gs://data/procs/train/\S+ failed: \w+Error: .*blocked/train", last)
    assert "writable folder" in last


def test_bad_uris_and_missing_data_are_clear(bucket: str, tmp_path: Path) -> None:
    assert "is not a gs:// URI" in data_cli("download", "s3://x/y", str(tmp_path)).stderr
    out = data_cli("download", "gs://data/nothing-here", str(tmp_path / "x"))
    assert out.returncode == 2 and "nothing found under gs://data/nothing-here" in out.stderr
    out = data_cli("upload", str(tmp_path / "missing"), "gs://data/x")
    assert out.returncode == 2 and "is not a folder" in out.stderr


def published_cifake(root: Path, sample_dir: Path) -> Path:
    """The Kaggle/HF layout (train|test/{REAL,FAKE}), built from sample images."""
    for split in ("train", "test"):
        for ours, theirs in (("real", "REAL"), ("ai_generated", "FAKE")):
            dest = root / "cifake" / split / theirs
            dest.mkdir(parents=True)
            srcs = sorted((sample_dir / split / ours).iterdir())
            for i, f in enumerate(srcs * (5 if split == "train" else 1)):
                shutil.copy(f, dest / f"{i:04d} ({ours}).png")
    return root


def test_cifake_layout_with_a_deterministic_val_split(sample_dir: Path, tmp_path: Path) -> None:
    src = published_cifake(tmp_path / "download", sample_dir)
    res = prepare_cifake(tmp_path / "cifake", source=src, val_fraction=0.2)
    c = res.counts
    assert c["test"] == {"real": 4, "ai_generated": 4}
    assert c["train"]["real"] + c["val"]["real"] == 110 and 10 <= c["val"]["real"] <= 35
    for f in (tmp_path / "cifake" / "val" / "real").iterdir():
        assert val_bucket(f.name) < 0.2
    again = prepare_cifake(tmp_path / "cifake2", source=src, val_fraction=0.2)
    assert again.counts == res.counts
    with pytest.raises(Exception, match="--force"):
        prepare_cifake(tmp_path / "cifake", source=src)


def test_cifake_offline_fails_with_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="cannot download CIFAKE from Hugging Face.*--source DIR"):
        prepare_cifake(tmp_path / "out")
    out = data_cli("cifake", str(tmp_path / "out2"))
    assert out.returncode == 2 and "kaggle" in out.stderr.lower()


def test_cifake_copies_in_zip_and_unsplit_forms(sample_dir: Path, tmp_path: Path) -> None:
    """yanbax/CIFAKE_autotrain_compatible's form: {REAL,FAKE} folders, no split, inside a zip archive."""
    import zipfile

    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    with zipfile.ZipFile(snapshot / "train.zip", "w") as z:
        for ours, theirs in (("real", "REAL"), ("ai_generated", "FAKE")):
            for i, f in enumerate(sorted((sample_dir / "train" / ours).iterdir()) * 5):
                z.write(f, f"train/{theirs}/{i:04d}.png")
    res = prepare_cifake(tmp_path / "out", source=snapshot, val_fraction=0.1)
    total = {s: sum(c.values()) for s, c in res.counts.items()}
    assert sum(total.values()) == 220 and all(n > 0 for n in total.values())
    assert all(val_bucket(f.name) < 1 / 6 for f in (tmp_path / "out" / "test" / "real").iterdir())
    assert sorted(p.name for p in snapshot.iterdir()) == ["train.zip"], "the snapshot itself is left as it was"


def test_cifake_copies_as_parquet_shards(sample_dir: Path, tmp_path: Path) -> None:
    """The `datasets` export: image {bytes, path} and a class label with names, one shard per split."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    features = {"info": {"features": {"image": {"_type": "Image"},
                                      "label": {"names": ["FAKE", "REAL"], "_type": "ClassLabel"}}}}
    for split in ("train", "test"):
        images, labels = [], []
        for label, ours in ((1, "real"), (0, "ai_generated")):
            for f in sorted((sample_dir / split / ours).iterdir()):
                images.append({"bytes": f.read_bytes(), "path": f"{ours}-{f.name}"})
                labels.append(label)
        table = pa.table({"image": images, "label": labels})
        table = table.replace_schema_metadata({"huggingface": json.dumps(features)})
        (tmp_path / "snap" / "data").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp_path / "snap" / "data" / f"{split}-00000-of-00001.parquet")
    res = prepare_cifake(tmp_path / "out", source=tmp_path / "snap", val_fraction=0.2)
    assert res.counts["test"] == {"real": 4, "ai_generated": 4}
    assert res.counts["train"]["real"] + res.counts["val"]["real"] == 22
    assert (tmp_path / "out" / "test" / "real" / "real-img_00000.png").read_bytes() == \
        (sample_dir / "test" / "real" / "img_00000.png").read_bytes()


@pytest.mark.slow
def test_1600_files_upload_resume_after_a_kill_and_mirror_back(bucket: str, tmp_path: Path) -> None:
    """The full-size sample (1,600 files): eight threads sharing one client hung here at 0%. An upload
    killed partway resumes and copies only the rest; a download mirrors the tree byte for byte."""
    import signal
    import time

    from photo_detector.data.sample import generate_sample

    src = generate_sample(tmp_path / "src", per_class=800, size=32).root
    files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    assert len(files) == 1600
    proc = subprocess.Popen([sys.executable, "-m", "photo_detector", "data", "upload", str(src), "gs://data/big"],
                            env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    gcs = storage.Client(project="p", credentials=AnonymousCredentials())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and \
            sum(1 for _ in gcs.list_blobs("data", prefix="big/")) < 200:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = sum(1 for _ in gcs.list_blobs("data", prefix="big/"))
    start = time.perf_counter()
    resumed = data_cli("upload", str(src), "gs://data/big")
    assert resumed.returncode == 0, resumed.stderr
    assert time.perf_counter() - start < 60
    copied, unchanged = (int(x) for x in re.search(r"uploaded (\d+) files .* (\d+) unchanged",
                                                    resumed.stdout).groups())
    assert copied + unchanged == 1600 and unchanged >= before - 8, "only the rest is copied"  # 8 in flight
    down = data_cli("download", "gs://data/big", str(tmp_path / "back"))
    assert down.returncode == 0, down.stderr
    back = sorted(p.relative_to(tmp_path / "back").as_posix() for p in (tmp_path / "back").rglob("*")
                  if p.is_file())
    assert back == files and all((tmp_path / "back" / f).read_bytes() == (src / f).read_bytes() for f in files)


def test_an_unreachable_store_is_one_line_within_seconds(tmp_path: Path, sample_dir: Path) -> None:
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}", "PHOTO_DETECTOR_GCS_DEADLINE": "2"}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "photo_detector", "data", "upload", str(sample_dir), "gs://d/x"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and time.perf_counter() - start < 30
    assert out.stderr.startswith("error: listing gs://d/x failed: ") and "re-run the same command" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_killing_an_upload_leaves_no_worker_and_the_next_run_resumes(bucket: str, tmp_path: Path) -> None:
    """SIGKILL of `data upload` mid-copy: its forked workers die with it (PR_SET_PDEATHSIG), within seconds;
    the upload run again copies only what is missing and the bucket then mirrors the folder."""
    import signal
    import time

    import psutil
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    src = tmp_path / "many"
    for i in range(1500):
        (src / f"d{i % 10}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 10}" / f"{i}.bin").write_bytes(os.urandom(4096))
    env = {**os.environ, "PHOTO_DETECTOR_GCS_PROCESSES": "2"}
    cmd = [sys.executable, "-m", "photo_detector", "data", "upload", str(src), "gs://data/kill", "--workers", "1"]
    gcs = storage.Client(project="p", credentials=AnonymousCredentials())
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    children: list[psutil.Process] = []
    while time.monotonic() < deadline:
        children = parent.children(recursive=True)
        if len(children) >= 2 and sum(1 for _ in gcs.list_blobs("data", prefix="kill/")) >= 20:
            break
        assert proc.poll() is None, "the upload ended before it could be killed: make it bigger"
        time.sleep(0.05)
    assert len(children) >= 2, "the upload never forked its workers"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)

    def alive(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    gone_by = time.monotonic() + 5
    while any(alive(c) for c in children) and time.monotonic() < gone_by:
        time.sleep(0.05)
    assert not [c.pid for c in children if alive(c)], "workers outlived the killed upload"
    partial = sum(1 for _ in gcs.list_blobs("data", prefix="kill/"))
    assert partial < 1500, "killed mid-upload"

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    copied, unchanged = map(int, re.search(r"uploaded (\d+) files .*, (\d+) unchanged", again.stdout).groups())
    assert copied + unchanged == 1500 and unchanged >= 20, again.stdout
    assert {b.name: b.size for b in gcs.list_blobs("data", prefix="kill/")} == {
        f"kill/{p.relative_to(src).as_posix()}": 4096 for p in src.rglob("*.bin")}
