"""Training on data of any size: verify-data's shards, the streaming loader's order and bounds, resume from
inside an epoch, and the multi-machine rendezvous (two "machines" as two processes on loopback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

from photo_detector.artifacts import BEST, LAST
from photo_detector.data.loader import Prefetcher, Rows, epoch_order
from photo_detector.data.packed import read_manifest, read_packed
from photo_detector.errors import DataError, PhotoDetectorError
from photo_detector.parallel import Node, Shard, launch, rendezvous
from photo_detector.train import TIMING_KEYS, _Trainer, run_train
from photo_detector.verify import run_verify

SHARDS = {"verify.min_images_per_class": 2, "verify.shard_mb": 0.02}  # 40 px squares: 4 rows a shard


@pytest.fixture(scope="module")
def packed(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("packed")
    run_verify(sample_dir, out, tiny_config(**SHARDS))
    return out


def test_shards_are_listed_with_counts_and_checksums_and_read_back_exactly(packed: Path,
                                                                           sample_dir: Path) -> None:
    import hashlib

    from photo_detector.data.layout import discover_split
    from photo_detector.preprocess import decode_square

    manifest = read_manifest(packed)
    train = manifest["splits"]["train"]
    assert manifest["content"] == "squares" and train["count"] == 44 and len(train["shards"]) == 11
    # Per-row lists live in index/ files, not in the manifest every process parses: a byte a label.
    assert not {"paths", "labels"} & set(train) and (packed / train["labels_file"]).stat().st_size == 44
    labels = list((packed / train["labels_file"]).read_bytes())
    for s in train["shards"]:
        data = (packed / s["file"]).read_bytes()
        assert len(data) == s["bytes"] == s["count"] * 40 * 40 * 3
        assert hashlib.sha256(data).hexdigest() == s["sha256"]
    split = read_packed(packed, "train")
    whole = split.read_all()
    idx = np.array([43, 0, 5, 6, 7, 20, 5])  # any order, repeats, across shard boundaries
    assert np.array_equal(split.read(idx), whole[idx])
    # Bit-exact with decode_square on the source file, labels from the stored list.
    files = discover_split(sample_dir, "train")
    by_path = dict(zip([p.relative_to(sample_dir).as_posix() for p in files.paths], files.paths, strict=True))
    for i in (0, 17, 43):
        assert np.array_equal(whole[i], decode_square(by_path[split.paths[i]], 40))
        assert split.labels[i] == labels[i] == (1 if "/ai_generated/" in split.paths[i] else 0)
    # Shards mix the classes (hashed order), rather than all reals then all fakes.
    per_shard = [set(labels[k * 4:(k + 1) * 4]) for k in range(11)]
    assert sum(len(c) == 2 for c in per_shard) >= 3


def test_an_old_or_damaged_packed_folder_says_re_run_verify_data(packed: Path, tmp_path: Path) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(packed, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format_version": 2}))
    with pytest.raises(DataError, match=r"format_version 2.*older packed format: an unsharded.*re-run verify-data"):
        read_manifest(old)
    (old / "manifest.json").write_text(json.dumps({**manifest, "format_version": 3}))
    with pytest.raises(DataError, match=r"format_version 3, this version reads 4.*per-row lists inside the manifest"):
        read_manifest(old)
    (old / "manifest.json").write_text(json.dumps(manifest))
    shard = old / manifest["splits"]["train"]["shards"][3]["file"]
    shard.write_bytes(shard.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"train-00003.u8 is 19199 bytes, its manifest says 19200.*re-run verify-data"):
        read_packed(old, "train")
    shard.write_bytes(b"\0" * 19200)
    with pytest.raises(DataError, match="does not match its manifest"):
        read_packed(old, "train").read_all()
    (old / manifest["splits"]["train"]["labels_file"]).write_bytes(b"\0" * 43)
    with pytest.raises(DataError, match=r"holds 44 rows in its shards and 43 labels.*re-run verify-data"):
        read_packed(old, "train")


def test_the_epoch_order_is_a_permutation_from_seed_and_epoch_only() -> None:
    counts = [7, 7, 7, 3]
    a = epoch_order(counts, 42, 1, window=2)
    assert sorted(a.tolist()) == list(range(24))
    assert np.array_equal(a, epoch_order(counts, 42, 1, window=2))
    assert not np.array_equal(a, epoch_order(counts, 42, 2, window=2))
    assert not np.array_equal(a, epoch_order(counts, 43, 1, window=2))
    # A window holds whole shards: the first 14 (two 7-row shards, or 7 + 3 rows) come from two shards.
    first = {int(np.searchsorted(np.cumsum(counts), i, side="right")) for i in a[:10]}
    assert len(first) <= 2


def test_the_prefetcher_reads_ahead_a_bounded_number_of_batches() -> None:
    lock, state = threading.Lock(), {"read": 0, "most_ahead": 0, "used": 0}

    def read(idx: np.ndarray) -> np.ndarray:
        with lock:
            state["read"] += 1
            state["most_ahead"] = max(state["most_ahead"], state["read"] - state["used"])
        return idx * 2

    batches = [np.arange(i, i + 3) for i in range(0, 60, 3)]
    got = []
    for b in Prefetcher(read, batches, depth=3, threads=2):
        got.append(b)
        state["used"] += 1
    assert [g.tolist() for g in got] == [(b * 2).tolist() for b in batches]
    assert state["most_ahead"] <= 4  # the depth, plus the one being handed over


def _epoch_indices(data_dir: Path, cfg, shard: Shard) -> list[list[int]]:
    """Every process's rows of each step of epoch 1, gathered (module level: spawned processes import it)."""
    import torch.distributed as dist

    trainer = _Trainer(cfg, data_dir, shard)
    mine = [idx.tolist() for idx, _ in trainer.epoch_batches(1)]
    if not shard.distributed:
        return [mine]
    everyone: list = [None] * shard.world
    dist.all_gather_object(everyone, mine)
    return everyone


@pytest.mark.slow
def test_two_processes_read_disjoint_rows_that_cover_the_epoch_once_in_one_process_order(packed: Path) -> None:
    cfg = tiny_config(**SHARDS, **{"data.batch_size": 8})
    (one,) = _epoch_indices(packed, cfg, Shard())
    r0, r1 = launch(_epoch_indices, (packed, cfg), 2, "gloo")
    assert len(one) == 5  # 44 rows // 8
    for step, rows in enumerate(one):
        assert r0[step] + r1[step] == rows and not set(r0[step]) & set(r1[step])
    flat = [i for rows in one for i in rows]
    assert len(flat) == len(set(flat)) == 40  # 4 of 44 left over by the last partial batch


def test_export_reads_validation_rows_through_an_array_view_not_the_whole_split(packed: Path) -> None:
    split = read_packed(packed, "val")
    rows, whole = Rows(split), split.read_all()
    assert len(rows) == 8 and rows.shape == whole.shape
    assert np.array_equal(rows[:3], whole[:3]) and np.array_equal(rows[2:7], whole[2:7])
    assert np.array_equal(rows[np.array([7, 1])], whole[[7, 1]]) and np.array_equal(rows[5], whole[5])
    assert np.array_equal(np.asarray(rows), whole)


class Killed(Exception):
    """Raised by `kill_mid_epoch_2`; module level so that a spawned process could pickle it."""


def kill_mid_epoch_2(info: dict) -> None:
    if (info["epoch"], info["step"]) == (2, 2):
        raise Killed


MID = {**SHARDS, "data.batch_size": 8, "train.epochs": 2, "train.warmup_epochs": 1,
       "train.early_stopping_patience": 0, "augmentation.jpeg_probability": 0.5}


@pytest.mark.slow
def test_a_kill_mid_epoch_resumes_at_the_next_sample_to_the_uninterrupted_result(packed: Path,
                                                                                 tmp_path: Path) -> None:
    """Checkpoints every step (a tiny train.checkpoint_every_minutes); the run is stopped right after
    the one at epoch 2, step 2 of 5 is on disk, like a task killed there, and resumed: every weight, every
    metric, the same as the run that was never stopped (which saves at epoch ends only: saving changes
    nothing). JPEG re-compression is on: its generator too."""
    whole = run_train(packed, tmp_path / "whole", tiny_config(**MID, **{"train.checkpoint_every_minutes": 0}))
    with pytest.raises(Killed):
        run_train(packed, tmp_path / "cut", tiny_config(**MID, **{"train.checkpoint_every_minutes": 1e-9}),
                  on_checkpoint=kill_mid_epoch_2)
    ckpt = torch.load(tmp_path / "cut" / LAST, weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["mid_epoch"]["epoch"] == 2 and ckpt["mid_epoch"]["step"] == 2
    resumed = run_train(packed, tmp_path / "cut", tiny_config(**MID, **{"train.checkpoint_every_minutes": 0}),
                        resume=True)

    def timeless(history: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]

    assert timeless(resumed.history) == timeless(whole.history) and len(whole.history) == 2
    for name in (LAST, BEST):
        a = torch.load(tmp_path / "whole" / name, weights_only=False)["model_state_dict"]
        b = torch.load(tmp_path / "cut" / name, weights_only=False)["model_state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_rendezvous_follows_vertex_cluster_spec_and_master_variables() -> None:
    spec = {"cluster": {"workerpool0": ["cmle-training-workerpool0-ab-0:2222"],
                        "workerpool1": ["cmle-training-workerpool1-ab-0:2222", "cmle-training-workerpool1-ab-1:2222"]},
            "environment": "cloud", "task": {"type": "workerpool1", "index": 1}}
    env = {"CLUSTER_SPEC": json.dumps(spec)}
    assert rendezvous(3, env) == Node(2, 3, "cmle-training-workerpool0-ab-0", 2222)
    spec["task"] = {"type": "workerpool0", "index": 0}
    assert rendezvous(3, {"CLUSTER_SPEC": json.dumps(spec)}).rank == 0
    assert rendezvous(1, env) == Node()  # one machine: a plain task ignores the spec
    assert rendezvous(2, {**env, "MASTER_ADDR": "10.0.0.2", "MASTER_PORT": "23456", "RANK": "1",
                          "WORLD_SIZE": "2"}) == Node(1, 2, "10.0.0.2", 23456)
    with pytest.raises(PhotoDetectorError, match=r"'train.nodes' is 2 but CLUSTER_SPEC describes 3 machine"):
        rendezvous(2, env)
    with pytest.raises(PhotoDetectorError, match="no cluster spec"):
        rendezvous(2, {})
    with pytest.raises(PhotoDetectorError, match="not a Vertex AI cluster spec"):
        rendezvous(2, {"CLUSTER_SPEC": "{}"})


NODE = """
import json, logging, sys
logging.basicConfig(level=logging.INFO)
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from photo_detector.train import run_train
r = run_train({data!r}, {out!r}, tiny_config(**json.loads({cfg!r})))
print("RESULT", json.dumps({{"main": r.main, "epochs": len(r.history)}}))
"""


@pytest.mark.slow
def test_two_machines_from_a_vertex_cluster_spec_train_like_one_process(packed: Path, tmp_path: Path) -> None:
    """Two replicas as Vertex starts them (same command, CLUSTER_SPEC naming each its pool), here two
    processes on loopback over gloo: they join one job, only the primary writes the model folder, and the
    result is one process's (within float tolerance, at a learning rate too small for CPU float noise to grow:
    see test_train_ddp)."""
    from test_train_ddp import WHOLE_RUN, _timeless

    from photo_detector.parallel import _free_port

    overrides = {**SHARDS, **WHOLE_RUN, "data.batch_size": 8, "train.epochs": 2}
    one = run_train(packed, tmp_path / "one", tiny_config(**overrides))
    port = _free_port()
    cluster = {"workerpool0": [f"127.0.0.1:{port}"], "workerpool1": ["127.0.0.1:2222"]}
    procs = []
    for task in ({"type": "workerpool0", "index": 0}, {"type": "workerpool1", "index": 0}):
        code = NODE.format(tests=str(Path(__file__).parent), data=str(packed), out=str(tmp_path / "two"),
                           cfg=json.dumps({**overrides, "train.nodes": 2, "train.device": "cpu"}))
        env = {**os.environ, "CLUSTER_SPEC": json.dumps({"cluster": cluster, "task": task}),
               "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.split("RESULT", 1)[1]) for out, _ in outs]
    assert results == [{"main": True, "epochs": 2}, {"main": False, "epochs": 0}]
    assert "machine 1 of 2; rendezvous at 127.0.0.1" in outs[1][1]
    two = torch.load(tmp_path / "two" / LAST, weights_only=False)
    assert two["config"]["train"]["nodes"] == 2
    for a, b in zip(_timeless(one.history), _timeless(two["history"]), strict=True):
        np.testing.assert_allclose([b[k] for k in a], [a[k] for k in a], atol=1e-5, rtol=1e-5, err_msg=str(a))
    ref = torch.load(tmp_path / "one" / LAST, weights_only=False)["model_state_dict"]
    for key, a in ref.items():
        torch.testing.assert_close(two["model_state_dict"][key], a, atol=1e-4, rtol=1e-4, msg=key)
