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


def evaluation_report(result: dict[str, Any]) -> str:
    """Headline metrics, the confusion matrix and the ROC curve of one evaluated split."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(result["roc_fpr"], result["roc_tpr"], label=f"ROC AUC {result['roc_auc']:.4f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend()
    img = _figure_png(fig)
    cm = result["confusion_matrix"]
    head = "".join(f"<th>pred {html.escape(c)}</th>" for c in CLASS_NAMES)
    body = "".join(f"<tr><th>true {html.escape(c)}</th>" + "".join(f"<td>{n}</td>" for n in row) + "</tr>"
                   for c, row in zip(CLASS_NAMES, cm, strict=True))
    rows = [(k, result[k]) for k in ("accuracy", "precision", "recall", "f1", "roc_auc", "threshold")]
    rows += [("split", result["split"]), ("images", result["n_images"])]
    return _page(f"Evaluation on {result['split']}",
                 f"{_table(rows)}<h2>Confusion matrix</h2><table><tr><th></th>{head}</tr>{body}</table>"
                 f"<h2>ROC</h2><img alt='roc' src='data:image/png;base64,{img}'>")
