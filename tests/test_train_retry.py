"""A train task killed mid-run and retried, as Vertex retries it: the compiled spec's own command, run again
with the same executor input, resumes from the last saved epoch and ends where an uninterrupted task ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from rehearse_images import PARAMETERS, executor_input, flat_tasks, load_spec  # noqa: E402

from photo_detector.train import TIMING_KEYS  # noqa: E402


def command(spec: dict[str, Any], info: dict[str, Any], payload: dict[str, Any]) -> list[str]:
    container = spec["deploymentSpec"]["executors"][info["componentRef"]["name"].replace("comp-", "exec-")
                                                    ]["container"]
    return [*container["command"], *(json.dumps(payload) if a == "{{$}}" else a for a in container["args"])]


def environ() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}


def stage(spec, tasks, task, params, produced, out_dir: Path) -> tuple[list[str], dict[str, Any]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = executor_input(task, tasks[task], params, produced, out_dir)
    return command(spec, tasks[task], payload), payload


def record(task: str, payload: dict[str, Any], produced: dict[str, Any]) -> None:
    executor_output = json.loads(Path(payload["outputs"]["outputFile"]).read_text())
    for name, declared in payload["outputs"]["artifacts"].items():
        produced["artifacts"][f"{task}-{name}"] = declared["artifacts"][0]
    for name, value in executor_output.get("parameterValues", {}).items():
        produced["parameters"][f"{task}-{name}"] = value


@pytest.fixture(scope="module")
def verified(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """fingerprint and verify-data through the compiled commands, once: what the train tasks below consume."""
    spec, tasks = load_spec(), flat_tasks(load_spec())
    params = {**{k: v.get("defaultValue") for k, v in spec["root"]["inputDefinitions"]["parameters"].items()},
              **PARAMETERS, "data_uri": str(sample_dir)}
    produced: dict[str, Any] = {"artifacts": {"importer-artifact": {
        "name": "dataset", "type": {"schemaTitle": "system.Dataset", "schemaVersion": "0.0.1"},
        "uri": str(sample_dir), "metadata": {}}}, "parameters": {}}
    root = tmp_path_factory.mktemp("verified")
    for task in ("fingerprint", "verify-data"):
        cmd, payload = stage(spec, tasks, task, params, produced, root / task)
        done = subprocess.run(cmd, env=environ(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        record(task, payload, produced)
    return {"spec": spec, "tasks": tasks, "params": params, "produced": produced}


@pytest.mark.slow
def test_a_killed_train_task_resumes_on_retry_to_the_uninterrupted_result(tmp_path: Path,
                                                                           verified: dict[str, Any]) -> None:
    spec, tasks, produced = verified["spec"], verified["tasks"], verified["produced"]
    params = {**verified["params"], "epochs": 2,
              "config_overrides": {**PARAMETERS["config_overrides"], "train.early_stopping_patience": 0}}

    cmd, _ = stage(spec, tasks, "train", params, produced, tmp_path / "uninterrupted")
    whole = subprocess.run(cmd, env=environ(), capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]

    cmd, payload = stage(spec, tasks, "train", params, produced, tmp_path / "retried")
    model = Path(payload["outputs"]["artifacts"]["model"]["artifacts"][0]["uri"])
    # Its own session, so that the kill reaches the whole task (the shell and its python), as a preempted VM's.
    first = subprocess.Popen(cmd, env=environ(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 300
    while not (model / "last.pt").is_file():  # epoch 1 is saved: kill the attempt, as a preempted VM would
        assert first.poll() is None and time.monotonic() < deadline, "the first attempt ended before epoch 1"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(30)
    assert not (model / "model.onnx").exists()
    retry = subprocess.run(cmd, env=environ(), capture_output=True, text=True, timeout=600)  # same executor input
    assert retry.returncode == 0, retry.stderr[-2000:]
    assert "resuming from" in retry.stdout + retry.stderr

    a = torch.load(tmp_path / "uninterrupted" / "model" / "best.pt", weights_only=False)
    b = torch.load(model / "best.pt", weights_only=False)
    assert a["epoch"] == b["epoch"]
    for key, value in a["model_state_dict"].items():
        torch.testing.assert_close(b["model_state_dict"][key], value, rtol=0, atol=0)
    assert {k: v for k, v in a["metrics"].items() if k not in TIMING_KEYS} == \
        {k: v for k, v in b["metrics"].items() if k not in TIMING_KEYS}


def _children(pid: int) -> set[int]:
    """Live processes whose parent is `pid` (from /proc, Linux)."""
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.add(int(stat.parent.name))
    return kids


@pytest.mark.slow
def test_training_processes_die_with_their_task_and_the_retry_resumes(tmp_path: Path,
                                                                       verified: dict[str, Any]) -> None:
    """The compiled command with gpus=2 (gloo on the CPU). When the process that launched the training
    processes is killed alone (the OOM killer picks one process), they die with it instead of going on
    writing checkpoints into the folder the retry resumes from; the retry then finishes the run."""
    spec, tasks, produced = verified["spec"], verified["tasks"], verified["produced"]
    params = {**verified["params"], "epochs": 4, "gpus": 2,
              "config_overrides": {**PARAMETERS["config_overrides"], "train.early_stopping_patience": 0,
                                   "train.device": "cpu"}}

    cmd, payload = stage(spec, tasks, "train", params, produced, tmp_path / "train")
    model = Path(payload["outputs"]["artifacts"]["model"]["artifacts"][0]["uri"])
    first = subprocess.Popen(cmd, env=environ(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 300
    while not (model / "last.pt").is_file():
        assert first.poll() is None and time.monotonic() < deadline, "the task ended before epoch 1"
        time.sleep(0.05)
    (launcher,) = _children(first.pid)  # the shell's python: the executor that launched the two processes
    workers = _children(launcher)
    assert len(workers) >= 2, "two training processes (and multiprocessing's resource tracker)"
    os.kill(launcher, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers):
        assert time.monotonic() < deadline, "training processes outlived the process that launched them"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(30)
    # Nothing went on training: epoch 1 is the last checkpoint, and there is no export.
    assert torch.load(model / "last.pt", weights_only=False)["epoch"] == 1
    assert not (model / "model.onnx").exists()

    retry = subprocess.run(cmd, env=environ(), capture_output=True, text=True, timeout=600)
    assert retry.returncode == 0, retry.stderr[-2000:]
    assert "resuming from" in retry.stdout + retry.stderr
    ckpt = torch.load(model / "last.pt", weights_only=False)
    assert [r["epoch"] for r in ckpt["history"]] == [1, 2, 3, 4] and ckpt["config"]["train"]["gpus"] == 2
    assert (model / "model.onnx").is_file()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
