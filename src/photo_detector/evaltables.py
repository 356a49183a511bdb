"""The evaluation's tables as pandas DataFrames, written as CSV (for tools), Markdown (for the KFP Markdown
artifact and terminals) and HTML (for the report): the robustness suite and the per-source slices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from photo_detector.io import write_text_atomic

ROBUSTNESS, SOURCES, SUMMARY_MD = "robustness", "sources", "evaluation.md"


def _interval(lo_hi: list[float]) -> str:
    lo, hi = lo_hi
    return f"[{lo:.3f}, {hi:.3f}]"


def robustness_frame(result: dict[str, Any]) -> Any:
    """One row per pass (the clean split, then each perturbation) with the metrics at the threshold."""
    import pandas as pd

    rows = [{"perturbation": r["perturbation"], "images": r["images"], "accuracy": r["accuracy"],
             "accuracy_ci": _interval(r["intervals"]["accuracy"]), "precision": r["precision"], "recall": r["recall"],
             "f1": r["f1"], "roc_auc": r["roc_auc"], "average_precision": r["average_precision"],
             "fpr_real": r["fpr"], "tpr_ai_generated": r["tpr"], "images_per_second": r["images_per_second"]}
            for r in result["robustness"]]
    return pd.DataFrame(rows)


def sources_frame(result: dict[str, Any]) -> Any:
    """One row per source, worst accuracy first."""
    import pandas as pd

    rows = [{"source": r["source"], "class": r["class"], "images": r["images"], "accuracy": r["accuracy"],
             "accuracy_ci": _interval(r["accuracy_interval"]), "mean_probability": r["mean_probability"]}
            for r in result["sources"]]
    return pd.DataFrame(rows, columns=["source", "class", "images", "accuracy", "accuracy_ci", "mean_probability"])


def markdown(frame: Any) -> str:
    return frame.to_markdown(index=False, floatfmt=".4f")


def html(frame: Any) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0, classes="metrics")


def summary_markdown(result: dict[str, Any]) -> str:
    """The evaluation in Markdown: headline with intervals, operating point, calibration, both tables."""
    iv = result.get("intervals", {})

    def with_ci(key: str) -> str:
        value = result[key]
        return f"{value:.4f} {_interval(iv[key])}" if key in iv else f"{value:.4f}"

    worst = result["sources"][0] if result.get("sources") else None
    lines = [
        f"# Evaluation on {result['split']} ({result['n_images']} images)", "",
        f"- accuracy {with_ci('accuracy')}, F1 {with_ci('f1')}, ROC AUC {with_ci('roc_auc')}, "
        f"average precision {result['average_precision']:.4f} ({result['confidence']:.0%} intervals)",
        f"- threshold {result['threshold']:.4f}: false-positive rate on real {with_ci('fpr')}, "
        f"true-positive rate on ai_generated {with_ci('tpr')}",
        "- true-positive rate at false-positive rate " + ", ".join(
            f"{float(k):.0%}: {v:.4f}" for k, v in result.get("tpr_at_fpr", {}).items()),
        f"- calibration: temperature {result['temperature']:.3f}, ECE {result['ece_uncalibrated']:.4f} before, "
        f"{result['ece']:.4f} after ({result['reliability'].get('bins', 0)} bins)",
    ]
    if worst is not None:
        lines.append(f"- worst source: **{worst['source']}** ({worst['class']}), accuracy {worst['accuracy']:.4f} "
                     f"on {worst['images']} images")
    sampled = [r["images"] for r in result["robustness"][1:]]
    lines += ["", "## Robustness", "",
              (f"Each perturbation scores a seeded, class-stratified sample of {sampled[0]} images."
               if sampled else "No perturbations configured."), "", markdown(robustness_frame(result)), "",
              "## Sources", "", markdown(sources_frame(result)), ""]
    return "\n".join(lines)


def write_tables(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """robustness.{csv,md,html}, sources.{csv,md,html} and evaluation.md in `out_dir`."""
    out = Path(out_dir)
    written = {}
    for name, frame in ((ROBUSTNESS, robustness_frame(result)), (SOURCES, sources_frame(result))):
        write_text_atomic(out / f"{name}.csv", frame.to_csv(index=False))
        write_text_atomic(out / f"{name}.md", markdown(frame) + "\n")
        write_text_atomic(out / f"{name}.html", html(frame) + "\n")
        written[name] = out / f"{name}.csv"
    write_text_atomic(out / SUMMARY_MD, summary_markdown(result))
    written["summary"] = out / SUMMARY_MD
    return written
