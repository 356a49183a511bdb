"""`photo-detector run-local`: the whole DAG under kfp local, its summary, and how a failing stage reads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_config

from photo_detector.demo import new_run_dir
from photo_detector.pipelines.local_run import pipeline_arguments, run_local


def test_arguments_name_the_config_and_carry_other_keys_as_overrides() -> None:
    cfg = tiny_config(**{"gate.min_f1": 0.7, "deploy.region": "europe-west4"})
    args = pipeline_arguments(cfg, "/data")
    assert args["data_uri"] == "/data" and args["deploy_dry_run"] is True
    assert (args["image_size"], args["epochs"], args["min_f1"], args["region"]) == (32, 2, 0.7, "europe-west4")
    assert args["batch_size"] == 16
    # Named parameters are not repeated; every other key that differs from the defaults is.
    assert args["config_overrides"] == {"data.crop_pct": 0.8, "data.num_workers": 2, "model.pretrained": False,
                                        "model.hidden_dim": 32, "train.warmup_epochs": 0,
                                        "verify.min_images_per_class": 2}


@pytest.mark.slow
def test_whole_dag_runs_locally_and_summarises(sample_dir: Path, tmp_path: Path) -> None:
    # Every threshold at 0 (the robustness checks still run, so the evaluate stage must produce their metrics).
    cfg = tiny_config(**{"gate.min_accuracy": 0.0, "gate.min_f1": 0.0,
                         "gate.robustness": {"jpeg_q75": 0.0, "webp_q80": 0.0}})
    res = run_local(cfg, out=tmp_path / "runs", data=sample_dir)
    assert res.succeeded, res.error
    assert [s["stage"] for s in res.stages] == ["fingerprint", "verify-data", "train", "evaluate", "quality-gate",
                                                "deploy"]
    gate = res.stage("quality-gate")["summary"]
    assert gate["passed"] is True and gate["rule"].startswith("no champion")
    plan = json.loads(Path(res.stage("deploy")["summary"]["plan"]).read_text())
    assert plan["dry_run"] is True and plan["service"]["template"]["containers"][0]["image"].endswith("serve:0.1.0")
    assert set(res.task_logs) >= {"fingerprint", "verify-data", "train", "evaluate", "quality-gate", "deploy"}
    assert "epoch 2/2" in res.task_logs["train"].read_text()
    assert res.kfp_overhead_per_task < 5  # the closing note reports the measured figure on the sample data


def test_each_run_gets_its_own_folder(tmp_path: Path) -> None:
    first, second = new_run_dir(tmp_path), new_run_dir(tmp_path)  # same second: a suffix, never a reuse
    assert first != second and first.is_dir() and second.is_dir()


def test_failing_stage_names_itself_its_error_and_its_log(sample_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(sample_dir, broken)
    for f in (broken / "val" / "real").iterdir():
        f.unlink()
    out = subprocess.run([sys.executable, "-m", "photo_detector", "run-local", "--data", str(broken), "--out",
                          str(tmp_path / "runs")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "task verify-data FAILED" in out.stderr
    assert f"{broken} failed verification" in out.stderr and "val/real has 0" in out.stderr
    log_line = next(line for line in out.stderr.splitlines() if line.startswith("its log: "))
    log = Path(log_line.removeprefix("its log: "))
    assert log.name == "verify-data.log" and "val/real has 0" in log.read_text()
    assert "Traceback" not in log.read_text(), "the stage's own error, not a wall of kfp internals"


def gate_decision(res) -> bool:
    """The gate's decision of a run that reached it: passed, or rejected (which fails the run by default)."""
    gate = res.stage("quality-gate")
    assert gate is not None, f"the run never reached the gate: {res.failed_task}: {res.error}"
    if gate["status"] == "succeeded":
        return bool(gate["summary"]["passed"])
    assert res.failed_task == "quality-gate" and "the quality gate rejected the model" in gate["error"], res.error
    return False


@pytest.mark.slow
def test_cifake_shaped_data_with_leakage_reaches_a_gate_decision(tmp_path: Path) -> None:
    """32 px JPEGs with 3.3% of test/real near-duplicating train/real, default verify settings: the twins
    are quarantined and listed, and evaluate scores the test split minus them."""
    from photo_detector.data.sample import generate_sample

    data = generate_sample(tmp_path / "cifake", per_class=240, size=32, fmt="jpeg", leak=0.033).root
    res = run_local(tiny_config(), out=tmp_path / "runs", data=data)
    gate_decision(res)
    verified = res.stage("verify-data")["summary"]
    report = json.loads((Path(verified["verified"]) / "verify_report.json").read_text())
    pairs = {(q["path"], q["twin"]) for q in report["quarantined"]}
    assert ("test/real/img_00000.jpg", "train/real/img_00000.jpg") in pairs
    in_test = sum(1 for q in report["quarantined"] if q["split"] == "test")
    evaluated = res.stage("evaluate")["summary"]
    assert evaluated["n_images"] == 72 - in_test and evaluated["left_out"] == {"quarantined": in_test}


@pytest.mark.slow
def test_differing_jpeg_qualities_stop_with_the_remedy_and_align_reaches_the_gate(tmp_path: Path) -> None:
    from photo_detector.data.sample import generate_sample

    data = generate_sample(tmp_path / "q", per_class=120, size=32, fmt="jpeg", quality=(95, 75)).root
    stopped = run_local(tiny_config(), out=tmp_path / "runs", data=data)
    assert stopped.failed_task == "verify-data" and "verify.shortcut_policy=align" in stopped.error
    aligned = run_local(tiny_config(**{"verify.shortcut_policy": "align"}), out=tmp_path / "runs", data=data)
    gate_decision(aligned)
    assert aligned.stage("verify-data")["status"] == "succeeded"


@pytest.mark.slow
def test_the_sample_run_prints_a_screenful_and_ends_with_the_summary(tmp_path: Path) -> None:
    """A newcomer's first command (the README's): one line per stage start and end, a few per progress bar,
    the summary last; everything else is in logs/<task>.log."""
    out = subprocess.run([sys.executable, "-m", "photo_detector", "run-local", "--out", str(tmp_path / "runs")],
                         capture_output=True, text=True, timeout=1200)
    lines = (out.stdout + out.stderr).splitlines()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert len(lines) <= 60, f"{len(lines)} lines:\n" + "\n".join(lines)
    assert out.stdout.rstrip().splitlines()[-1].startswith("deploy (dry run): plan in ")
    assert "gate PASSED" in out.stdout or "gate FAILED" in out.stdout
    for stage in ("fingerprint", "verify-data", "train", "evaluate", "quality-gate", "deploy"):
        assert f"  {stage:<13} started" in out.stdout and f"  {stage:<13} success in " in out.stdout, stage
    run_dir = next((tmp_path / "runs").iterdir())
    assert "executorInput" in (run_dir / "logs" / "train.log").read_text() or \
        (run_dir / "logs" / "train.log").stat().st_size > 1000  # the full output went to the log


def test_quiet_output_is_a_line_per_stage_and_a_few_per_loop(tmp_path: Path) -> None:
    """What kfp prints for a task (its executor input, every tqdm redraw of twenty epochs) becomes a start line,
    one finished bar and an end line with the stage's numbers; the task's log keeps every line."""
    import io

    from photo_detector.pipelines.local_run import _TaskLogSplitter

    stage_log = tmp_path / "stages.jsonl"
    stage_log.write_text(json.dumps({"stage": "train", "status": "succeeded", "seconds": 12.5,
                                     "summary": {"best_epoch": 7, "val_accuracy": 0.9123, "model": "/x"}}) + "\n")
    kfp = ["Executing task 'train'", '    {"executorInput": {"inputs": {}}}']
    for e in range(1, 21):
        kfp += [f"    epoch {e}/20: {p}%|#   | {p * 35 // 100}/35 [00:0{e % 10}<00:01, 6.1batch/s]"
                for p in (0, 50, 100)]
    kfp += ["INFO photo_detector.train: epoch 20/20 ...", "Task 'train' finished with status SUCCESS"]
    out = io.StringIO()
    splitter = _TaskLogSplitter(out, tmp_path / "logs", verbose=False, stage_log=stage_log)
    splitter.write("\n".join(kfp) + "\n")
    splitter.close_files()
    shown = out.getvalue().splitlines()
    assert shown[0] == "  train         started" and len(shown) == 3, shown
    assert shown[1].startswith("    epoch 1/20: 100% 35/35 at 6.1batch/s")
    assert shown[2] == "  train         success in 12.5s  best_epoch 7, val_accuracy 0.9123"
    assert len((tmp_path / "logs" / "train.log").read_text().splitlines()) == len(kfp)
