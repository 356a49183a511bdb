"""Self-contained HTML reports (plots inlined as PNG) for the pipeline's HTML artifacts and local runs."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from photo_detector import CLASS_NAMES
from photo_detector.artifacts import ModelRecord


def _figure_png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display in containers or CI
    import matplotlib.pyplot as plt

    return plt


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def training_report(history: list[dict[str, float]], record: ModelRecord) -> str:
    """Loss, accuracy and F1 per epoch (train vs val), plus the best epoch's numbers."""
    plt = _plt()
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = (("loss", ("train_loss", "val_loss")), ("accuracy", ("train_accuracy", "val_accuracy")),
              ("F1", ("val_f1",)))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            ax.plot(epochs, [r[key] for r in history], marker="o", label=key)
        ax.axvline(record.best_epoch or 0, color="grey", linestyle=":", label="best epoch")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend()
    img = _figure_png(fig)
    rows = [("best epoch", record.best_epoch), *record.val_metrics.items(), ("data digest", record.data_digest),
            ("train images", record.train_images), ("val images", record.val_images),
            ("model", record.model_name), ("image size", record.image_size),
            ("training stopped by", record.training.get("stopped_by", "epochs"))]
    return _page("Training", f"<img alt='curves' src='data:image/png;base64,{img}'>{_table(rows)}")


def _curves(result: dict[str, Any]) -> str:
    """ROC, precision-recall and the reliability diagram (before and after the temperature), side by side."""
    plt = _plt()
    fig, (roc, pr, rel) = plt.subplots(1, 3, figsize=(15, 4.6))
    roc.plot(result["roc_fpr"], result["roc_tpr"], label=f"ROC AUC {result['roc_auc']:.4f}")
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc.axvline(result.get("fpr", float("nan")), color="red", linestyle="--", label="at the threshold")
    roc.set(xlabel="false positive rate (real flagged)", ylabel="true positive rate", title="ROC")
    pr.plot(result.get("pr_recall", []), result.get("pr_precision", []),
            label=f"AP {result.get('average_precision', float('nan')):.4f}")
    pr.set(xlabel="recall", ylabel="precision", title="precision-recall", ylim=(0, 1.02))
    for key, name in (("reliability_uncalibrated", "before"), ("reliability", "after")):
        r = result.get(key) or {}
        pts = [(p, f) for p, f, n in zip(r.get("mean_probability", []), r.get("fraction_ai_generated", []),
                                         r.get("count", []), strict=True) if n]
        if pts:
            rel.plot(*zip(*pts, strict=True), marker="o", label=f"{name} calibration (ECE {r['ece']:.4f})")
    rel.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    rel.set(xlabel="mean predicted P(ai_generated)", ylabel="share ai_generated", title="reliability",
            xlim=(0, 1), ylim=(0, 1))
    for ax in (roc, pr, rel):
        ax.legend(loc="lower right", fontsize=8)
    return _figure_png(fig)


def evaluation_report(result: dict[str, Any]) -> str:
    """Headline metrics with intervals, the confusion matrix, the robustness suite, the per-source slices,
    and the ROC, precision-recall and reliability curves of one evaluated split."""
    from photo_detector.evaltables import html as frame_html
    from photo_detector.evaltables import robustness_frame, sources_frame

    img = _curves(result)
    cm = result["confusion_matrix"]
    head = "".join(f"<th>pred {html.escape(c)}</th>" for c in CLASS_NAMES)
    body = "".join(f"<tr><th>true {html.escape(c)}</th>" + "".join(f"<td>{n}</td>" for n in row) + "</tr>"
                   for c, row in zip(CLASS_NAMES, cm, strict=True))
    iv = result.get("intervals", {})

    def value(k: str) -> str:
        v = _fmt(result[k])
        return f"{v} [{iv[k][0]:.4f}, {iv[k][1]:.4f}]" if k in iv else v

    rows = [(k, value(k)) for k in ("accuracy", "precision", "recall", "f1", "roc_auc", "average_precision",
                                    "threshold", "fpr", "tpr") if k in result]
    rows += [(f"TPR at FPR {float(f):.0%}", t) for f, t in result.get("tpr_at_fpr", {}).items()]
    rows += [("temperature", result.get("temperature", 1.0)), ("ECE before calibration",
                                                               result.get("ece_uncalibrated", float("nan"))),
             ("ECE after calibration", result.get("ece", float("nan"))),
             ("split", result["split"]), ("images", result["n_images"])]
    worst = result.get("worst_source")
    sections = [f"{_table(rows)}<p>Intervals: {result.get('confidence', 0.95):.0%} (Wilson for proportions, "
                "bootstrap for F1 and ROC AUC); FPR: real photos flagged, TPR: ai_generated photos flagged.</p>",
                f"<h2>Confusion matrix</h2><table><tr><th></th>{head}</tr>{body}</table>"]
    if result.get("robustness"):
        sections.append("<h2>Robustness</h2><p>The split as stored, then each perturbation (applied to the "
                        "decoded image before the shared preprocessing).</p>" + frame_html(robustness_frame(result)))
    if result.get("sources"):
        sections.append(f"<h2>Sources</h2><p>Worst: <b>{html.escape(str(worst))}</b>.</p>"
                        + frame_html(sources_frame(result)))
    sections.append(f"<h2>Curves</h2><img alt='ROC, precision-recall and reliability curves' "
                    f"src='data:image/png;base64,{img}'>")
    return _page(f"Evaluation on {result['split']}", "".join(sections))
