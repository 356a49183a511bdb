"""The evaluation suite: perturbations, intervals, calibration, the chosen operating point, per-source slices,
the gate's robustness checks, and the evaluation imported onto a Model Registry version."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from photo_detector.artifacts import read_record
from photo_detector.config import load_config
from photo_detector.errors import ConfigError
from photo_detector.evalstats import (
    bootstrap,
    fit_temperature,
    reliability,
    sigmoid,
    threshold_for_fpr,
    tpr_at_fpr,
    wilson,
)
from photo_detector.evaluate import PREDICTIONS_FILE, run_evaluate, stratified_sample
from photo_detector.gate import run_gate
from photo_detector.perturb import DEFAULT_PERTURBATIONS, parse, parse_all


def _image(size: tuple[int, int] = (60, 40)) -> Image.Image:
    arr = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr)


def test_perturbations_do_what_their_names_say() -> None:
    img = _image()
    assert parse("downscale_0.5")(img).size == (30, 20) and parse("downscale_0.25")(img).size == (15, 10)
    assert parse("crop_0.8")(img).size == (48, 32)
    blurred = np.asarray(parse("blur_1.0")(img), np.float64)
    assert blurred.shape == (40, 60, 3) and blurred.std() < np.asarray(img, np.float64).std() / 2
    for name in ("jpeg_q50", "webp_q80"):
        out = parse(name)(img)
        assert out.size == img.size and out.mode == "RGB" and not np.array_equal(np.asarray(out), np.asarray(img))
    assert [p.name for p in parse_all(list(DEFAULT_PERTURBATIONS))] == list(DEFAULT_PERTURBATIONS)


@pytest.mark.parametrize(("names", "match"), [
    (["jpeg_q0"], "quality from 1 to 100"), (["downscale_1.5"], "between 0 and 1"), (["sharpen_2"], "unknown"),
    (["blur_0"], "sigma"), (["jpeg_q90", "jpeg_q90"], "twice"), (["clean"], "always scored"),
])
def test_bad_perturbation_names_are_config_errors(names: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, {"evaluate.perturbations": names, "gate.robustness": {}})


def test_gate_robustness_must_name_a_listed_perturbation() -> None:
    with pytest.raises(ConfigError, match=r"gate.robustness' names downscale_0.5.*add it to evaluate.perturbations"):
        load_config(None, {"evaluate.perturbations": ["jpeg_q75"], "gate.robustness": {"downscale_0.5": 0.8}})
    cfg = load_config(None, ["gate.robustness={downscale_0.5: 0.8}"])  # a mapping is replaced whole
    assert cfg.gate.robustness == {"downscale_0.5": 0.8}


def test_wilson_and_bootstrap_intervals() -> None:
    lo, hi = wilson(234, 240)
    assert lo < 234 / 240 < hi and (lo, hi) == pytest.approx((0.94654, 0.98850), abs=1e-5)  # by hand: z = 1.96
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    probs = np.clip(labels * 0.3 + rng.random(400) * 0.7, 0, 1)
    a = bootstrap(probs, labels, 0.5, samples=200, seed=3)
    assert a == bootstrap(probs, labels, 0.5, samples=200, seed=3), "seeded: the same interval every time"
    assert a["f1"][0] < a["f1"][1] and a["roc_auc"][0] < a["roc_auc"][1]


def test_temperature_recovers_an_overconfident_model_and_ece_drops() -> None:
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 2, 20_000)
    labels = (rng.random(20_000) < sigmoid(true_logit)).astype(int)
    overconfident = 3.0 * true_logit
    t = fit_temperature(overconfident, labels)
    assert t == pytest.approx(3.0, rel=0.05)
    before = reliability(sigmoid(overconfident), labels)["ece"]
    after = reliability(sigmoid(overconfident / t), labels)["ece"]
    assert after < before / 4 and after < 0.02
    assert 0.05 < fit_temperature(np.array([-5.0, -4, 4, 5]), np.array([0, 0, 1, 1])) < 20, "separable: finite"


def test_threshold_for_a_target_fpr_flags_no_more_real_photos() -> None:
    rng = np.random.default_rng(2)
    probs, labels = rng.random(1000), rng.integers(0, 2, 1000)
    for target in (0.01, 0.05, 0.2):
        t = threshold_for_fpr(probs, labels, target)
        fpr = np.mean(probs[labels == 0] >= t)
        assert fpr <= target and fpr > target - 0.01
    assert tpr_at_fpr(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]), 0.0) == 1.0


def test_stratified_sample_keeps_class_shares_and_is_seeded() -> None:
    labels = np.array([0] * 300 + [1] * 100)
    idx = stratified_sample(labels, 40, seed=5)
    assert len(idx) == 40 and np.sum(labels[idx] == 1) == 10 and np.array_equal(idx, np.sort(idx))
    assert np.array_equal(idx, stratified_sample(labels, 40, seed=5))
    assert len(stratified_sample(labels, 0, seed=5)) == 400


def test_a_model_that_collapses_at_half_size_is_rejected_by_name(texture_model: Path, sample_dir: Path,
                                                                 tmp_path: Path) -> None:
    """The texture model separates the stored test split but calls every half-size real photo ai_generated:
    the robustness table shows it, and a gate that judges downscale_0.5 rejects the model naming it."""
    res = run_evaluate(texture_model, sample_dir, out_dir=tmp_path)
    rows = {r["perturbation"]: r for r in res.robustness}
    assert list(rows) == ["clean", *DEFAULT_PERTURBATIONS] and all(r["images"] == 8 for r in rows.values())
    assert res.accuracy >= 0.75 and rows["clean"]["accuracy"] == res.accuracy
    assert rows["downscale_0.5"]["fpr"] == 1.0 and rows["downscale_0.5"]["accuracy"] == 0.5
    lo, hi = res.intervals["accuracy"]
    assert lo < res.accuracy < hi and "f1" in res.intervals and "roc_auc" in res.intervals
    assert set(res.tpr_at_fpr) == {"0.01", "0.05"} and 0 <= res.fpr <= 1

    metrics = res.metrics
    assert metrics["downscale_0.5_accuracy"] == 0.5 and metrics["downscale_0.5_accuracy_low"] < 0.5
    clean = {"gate.min_accuracy": 0.7, "gate.min_f1": 0.7}  # what the texture model reaches as stored
    cfg = load_config(None, {**clean, "gate.robustness": {"jpeg_q75": 0.0, "downscale_0.5": 0.8}})
    decision = run_gate(metrics, cfg.gate)
    failed = [c for c in decision.checks if not c.passed]
    assert not decision.passed and [c.name for c in failed] == ["robustness downscale_0.5"]
    assert failed[0].reason == "downscale_0.5_accuracy 0.5000 < 0.8000"
    assert run_gate(metrics, load_config(None, {**clean, "gate.robustness": {"jpeg_q75": 0.0}}).gate).passed

    for name in ("robustness", "sources"):
        assert (tmp_path / f"{name}.csv").is_file() and (tmp_path / f"{name}.html").read_text().startswith("<table")
    md = (tmp_path / "robustness.md").read_text()
    assert "| downscale_0.5 " in md and "| clean " in md
    summary = (tmp_path / "evaluation.md").read_text()
    assert "## Robustness" in summary and "## Sources" in summary and "ECE" in summary
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["metrics"] == json.loads(json.dumps(metrics)) and saved["robustness"][5]["perturbation"] == \
        "downscale_0.5"


def test_gate_lower_bounds_and_sources() -> None:
    metrics = {"accuracy": 0.9, "accuracy_low": 0.84, "f1": 0.9, "f1_low": 0.85, "jpeg_q75_accuracy": 0.9,
               "jpeg_q75_accuracy_low": 0.79, "source_sdxl_accuracy": 0.95, "source_sdxl_accuracy_low": 0.9,
               "source_phone_accuracy": 0.6, "source_phone_accuracy_low": 0.5}
    cfg = load_config(None, {"gate.robustness": {"jpeg_q75": 0.8}}).gate
    assert run_gate(metrics, cfg).passed
    strict = load_config(None, {"gate.robustness": {"jpeg_q75": 0.8}, "gate.use_lower_bound": True}).gate
    assert [c.name for c in run_gate(metrics, strict).checks if not c.passed] == ["min_accuracy",
                                                                                   "robustness jpeg_q75"]
    slices = load_config(None, {"gate.robustness": {}, "gate.min_source_accuracy": 0.7}).gate
    decision = run_gate(metrics, slices)
    assert [c.name for c in decision.checks if not c.passed] == ["source phone"]
    assert decision.reasons == ["source_phone_accuracy 0.6000 < 0.7000"]
    missing = run_gate({"accuracy": 0.9, "f1": 0.9}, cfg)
    assert not missing.passed and "evaluate.perturbations" in missing.reasons[0]


def _sourced(sample_dir: Path, root: Path) -> Path:
    """The sample data with generator and camera subfolders in every split."""
    shutil.copytree(sample_dir, root)
    for split in ("train", "val", "test"):
        for cls, sources in (("ai_generated", ("sdxl", "midjourney")), ("real", ("phone", "dslr"))):
            folder = root / split / cls
            for i, f in enumerate(sorted(folder.glob("*.png"))):
                (folder / sources[i % 2]).mkdir(exist_ok=True)
                f.rename(folder / sources[i % 2] / f.name)
    return root


def test_generator_subfolders_get_per_source_rows_through_verify_data(texture_model: Path, sample_dir: Path,
                                                                      tmp_path: Path) -> None:
    from photo_detector.verify import run_verify

    data = _sourced(sample_dir, tmp_path / "data")
    cfg = load_config(None, {"verify.min_images_per_class": 2, "data.image_size": 32, "data.crop_pct": 0.8})
    verified = run_verify(data, tmp_path / "verified", cfg)
    assert verified.counts["test"] == {"real": 4, "ai_generated": 4}
    res = run_evaluate(texture_model, tmp_path / "verified", out_dir=tmp_path / "eval")
    by = {r["source"]: r for r in res.sources}
    assert set(by) == {"sdxl", "midjourney", "phone", "dslr"} and all(r["images"] == 2 for r in by.values())
    assert by["phone"]["class"] == "real" and by["sdxl"]["class"] == "ai_generated"
    assert res.worst_source == res.sources[0]["source"] and res.sources[0]["accuracy"] == min(
        r["accuracy"] for r in res.sources)
    assert res.metrics[f"source_{res.worst_source}_accuracy"] == res.sources[0]["accuracy"]
    table = list(csv.DictReader(io.StringIO((tmp_path / "eval" / "sources.csv").read_text())))
    assert [r["source"] for r in table] == [r["source"] for r in res.sources]
    preds = list(csv.DictReader(io.StringIO((tmp_path / "eval" / PREDICTIONS_FILE).read_text())))
    assert {r["source"] for r in preds} == set(by) and len(preds) == 8


def test_target_fpr_sets_the_threshold_every_consumer_reads(smoke_model: Path, smoke_data: Path,
                                                            tmp_path: Path) -> None:
    """Export with thresholds.target_fpr: the threshold chosen on validation is model.json's, evaluate uses it
    and reports the test FPR with its interval, and the service's probabilities are evaluate's (calibrated)."""
    import httpx
    from serving_helpers import running, wait_ready

    from photo_detector.serving.app import create_app
    from photo_detector.serving.auth import KeyChecker, hash_key

    out = tmp_path / "model"
    done = run_cli("export", str(smoke_model / "best.pt"), "--out", str(out), "--data", str(smoke_data),
                   "--set", "model.pretrained=false", "--set", "model.hidden_dim=32", "--set", "data.image_size=32",
                   "--set", "data.crop_pct=0.8", "--set", "thresholds.target_fpr=0.1")
    assert done.returncode == 0, done.stderr
    record = read_record(out)
    cal = record.calibration
    assert cal["target_fpr"] == 0.1 and record.classification_threshold == cal["threshold"]
    assert cal["val_fpr"] <= 0.1 and record.temperature > 0 and "val_ece_after" in cal
    res = run_evaluate(out, smoke_data, out_dir=tmp_path / "eval")
    assert res.threshold == record.classification_threshold and res.temperature == record.temperature
    assert "fpr" in res.intervals and res.intervals["fpr"][0] <= res.fpr <= res.intervals["fpr"][1]
    assert np.isfinite(res.ece) and np.isfinite(res.ece_uncalibrated)
    preds = list(csv.DictReader(io.StringIO((tmp_path / "eval" / PREDICTIONS_FILE).read_text())))
    app = create_app(str(out), load_config(), KeyChecker([hash_key("k")]))
    with running(app) as url, httpx.Client(timeout=30) as client:
        wait_ready(client, url)
        info = client.get(f"{url}/model", headers={"X-API-Key": "k"}).json()
        assert info["thresholds"]["classification"] == record.classification_threshold
        assert info["calibration"]["temperature"] == record.temperature
        for row in preds[:3] + preds[-3:]:
            path = Path(row["path"])
            body = client.post(f"{url}/predict", files={"file": (path.name, path.read_bytes())},
                               headers={"X-API-Key": "k"}).json()
            assert body["probability"] == pytest.approx(float(row["probability"]), abs=1e-5)
            assert body["prediction"] == row["prediction"]


def test_evaluate_cli_prints_the_robustness_table(texture_model: Path, sample_dir: Path, tmp_path: Path) -> None:
    done = run_cli("evaluate", "--model", str(texture_model), "--data", str(sample_dir), "--out", str(tmp_path / "e"),
                   "--set", "evaluate.perturbations=[jpeg_q75, downscale_0.5]", "--set",
                   "gate.robustness={jpeg_q75: 0.8}")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("| downscale_0.5 ") for line in lines), done.stdout
    assert any("false-positive rate on real" in line for line in lines)
    assert (tmp_path / "e" / "report.html").read_text().count("<table") >= 3
    gate = run_cli("gate", "--metrics", str(tmp_path / "e" / "eval.json"), "--set",
                   "gate.robustness={jpeg_q75: 0.0}")
    assert "robustness jpeg_q75" in gate.stdout
