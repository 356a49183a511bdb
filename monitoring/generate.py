"""Writes the service's two dashboards from one list of panels, so Cloud Monitoring and Grafana never drift:

  monitoring/dashboard.json          Cloud Monitoring (Managed Service for Prometheus on Cloud Run), PromQL
  monitoring/grafana/dashboard.json  Grafana over a local Prometheus (monitoring/prometheus.yml scrapes serve)

Run `python monitoring/generate.py` after changing PANELS; tests/test_monitoring.py fails while the files are
stale, and checks that every query names only series `GET /metrics` exports.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLOUD, GRAFANA = HERE / "dashboard.json", HERE / "grafana" / "dashboard.json"
TITLE = "photo-detector service"
WINDOW = "5m"  # rate window: Managed Prometheus on Cloud Run scrapes every 60 s, so at least 4 samples


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str  # Grafana's legend template; Cloud Monitoring names series by their labels


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    unit: str = ""  # "s", "percentunit", "reqps" (Grafana units); Cloud Monitoring gets "s" only
    kind: str = "line"  # "line", "stacked", or "heatmap" (Grafana; a line chart per bucket in Cloud Monitoring)


def _quantile(q: float, metric: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket[{WINDOW}])))"


REQ = "photo_detector_requests_total"
PANELS = (
    Panel("Requests per second, by route", (Query(f"sum by (route) (rate({REQ}[{WINDOW}]))", "{{route}}"),),
          "reqps", "stacked"),
    Panel("Server errors (5xx) as a share of requests, by route", (Query(
        f'sum by (route) (rate({REQ}{{status=~"5.."}}[{WINDOW}])) / sum by (route) (rate({REQ}[{WINDOW}]))',
        "{{route}}"),), "percentunit"),
    Panel("Latency p50, by route", (Query(_quantile(0.5, "photo_detector_request_seconds", "route"),
                                          "p50 {{route}}"),), "s"),
    Panel("Latency p99, by route", (Query(_quantile(0.99, "photo_detector_request_seconds", "route"),
                                          "p99 {{route}}"),), "s"),
    Panel("Model time (ONNX Runtime per /predict call): p50 and p99", (
        Query(f"histogram_quantile(0.5, sum by (le) (rate(photo_detector_model_seconds_bucket[{WINDOW}])))", "p50"),
        Query(f"histogram_quantile(0.99, sum by (le) (rate(photo_detector_model_seconds_bucket[{WINDOW}])))",
              "p99")), "s"),
    Panel("Time per request phase (mean: read, decode, resize, normalise, model, occlude)", (Query(
        f"sum by (phase) (rate(photo_detector_phase_seconds_sum[{WINDOW}])) "
        f"/ sum by (phase) (rate(photo_detector_phase_seconds_count[{WINDOW}]))", "{{phase}}"),), "s"),
    Panel("Predictions per second, by label", (Query(
        f"sum by (label) (rate(photo_detector_predictions_total[{WINDOW}]))", "{{label}}"),), "reqps", "stacked"),
    Panel("Share labelled ai_generated (1 h window; drift)", (Query(
        'sum(rate(photo_detector_predictions_total{label="ai_generated"}[1h])) '
        "/ sum(rate(photo_detector_predictions_total[1h]))", "ai_generated share"),), "percentunit"),
    Panel("ai_generated probability: median and p90 (1 h window; drift)", (
        Query("histogram_quantile(0.5, sum by (le) (rate(photo_detector_ai_probability_bucket[1h])))", "median"),
        Query("histogram_quantile(0.9, sum by (le) (rate(photo_detector_ai_probability_bucket[1h])))", "p90"))),
    Panel("ai_generated probability histogram (scores per tenth, 1 h; drift)", (Query(
        "sum by (le) (increase(photo_detector_ai_probability_bucket[1h]))", "{{le}}"),), "", "heatmap"),
)


def cloud_dashboard() -> dict:
    """Cloud Monitoring's Dashboard resource (mosaic layout, 48 columns; two charts per row)."""
    tiles = [{"xPos": 0, "yPos": 0, "width": 48, "height": 4, "widget": {"title": TITLE, "text": {
        "content": "Requests, errors and latency of the prediction service, where a request's time goes, and "
                   "the drift signals: the label share and the ai_generated score distribution. Series from "
                   "`GET /metrics`, written by the Managed Service for Prometheus sidecar.",
        "format": "MARKDOWN"}}}]
    for i, panel in enumerate(PANELS):
        data_sets = []
        for q in panel.queries:
            query = {"prometheusQuery": q.expr, **({"unitOverride": "s"} if panel.unit == "s" else {})}
            plot = "STACKED_AREA" if panel.kind == "stacked" else "LINE"
            data_sets.append({"timeSeriesQuery": query, "plotType": plot, "targetAxis": "Y1"})
        tiles.append({"xPos": 24 * (i % 2), "yPos": 4 + 16 * (i // 2), "width": 24, "height": 16,
                      "widget": {"title": panel.title, "xyChart": {
                          "dataSets": data_sets, "chartOptions": {"mode": "COLOR"},
                          "yAxis": {"scale": "LINEAR"}}}})
    return {"displayName": TITLE, "mosaicLayout": {"columns": 48, "tiles": tiles}, "labels": {"photo-detector": ""}}


def grafana_dashboard() -> dict:
    """A Grafana dashboard over the Prometheus data source provisioned as uid `prometheus`."""
    source = {"type": "prometheus", "uid": "prometheus"}
    panels = []
    for i, panel in enumerate(PANELS):
        targets = [{"refId": chr(ord("A") + j), "datasource": source, "expr": q.expr, "legendFormat": q.legend,
                    **({"format": "heatmap"} if panel.kind == "heatmap" else {})}
                   for j, q in enumerate(panel.queries)]
        entry = {"id": i + 1, "title": panel.title, "datasource": source, "targets": targets,
                 "gridPos": {"x": 12 * (i % 2), "y": 8 * (i // 2), "w": 12, "h": 8}}
        if panel.kind == "heatmap":
            entry.update(type="heatmap", options={"calculate": False, "yAxis": {"axisLabel": "probability ≤"},
                                                  "cellGap": 1, "color": {"scheme": "Oranges", "mode": "scheme"}})
        else:
            custom = {"stacking": {"mode": "normal" if panel.kind == "stacked" else "none"},
                      "fillOpacity": 30 if panel.kind == "stacked" else 0}
            entry.update(type="timeseries", fieldConfig={"defaults": {"unit": panel.unit or "none",
                                                                      "custom": custom}, "overrides": []})
        panels.append(entry)
    return {"uid": "photo-detector", "title": TITLE, "tags": ["photo-detector"], "timezone": "utc",
            "schemaVersion": 39, "version": 1, "editable": True, "refresh": "30s",
            "time": {"from": "now-6h", "to": "now"}, "panels": panels}


def render() -> dict[Path, str]:
    return {CLOUD: json.dumps(cloud_dashboard(), indent=2, ensure_ascii=False) + "\n",
            GRAFANA: json.dumps(grafana_dashboard(), indent=2, ensure_ascii=False) + "\n"}


def main() -> int:
    for path, text in render().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)  # never a half-written dashboard
        print(f"wrote {path.relative_to(HERE.parent)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
