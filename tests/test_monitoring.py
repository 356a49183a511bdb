"""The dashboards (monitoring/): current with their generator, valid for the Cloud Monitoring API, and every
PromQL query names only series and labels that a live service's `GET /metrics` exports."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from serving_helpers import running, wait_ready

from photo_detector.config import load_config
from photo_detector.serving.app import create_app
from photo_detector.serving.auth import KeyChecker, hash_key

ROOT = Path(__file__).resolve().parents[1]
KEY = "monitoring-key"


def generator():
    spec = importlib.util.spec_from_file_location("monitoring_generate", ROOT / "monitoring" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def all_queries() -> list[str]:
    cloud = json.loads((ROOT / "monitoring" / "dashboard.json").read_text())
    grafana = json.loads((ROOT / "monitoring" / "grafana" / "dashboard.json").read_text())
    out = [d["timeSeriesQuery"]["prometheusQuery"] for tile in cloud["mosaicLayout"]["tiles"]
           if "xyChart" in tile["widget"] for d in tile["widget"]["xyChart"]["dataSets"]]
    grafana_queries = [t["expr"] for p in grafana["panels"] for t in p["targets"]]
    assert sorted(out) == sorted(grafana_queries)  # the same panels in both
    return out


KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
            "group_right", "inf", "nan"}


def promql_names(expr: str) -> tuple[set[str], set[tuple[str | None, str]]]:
    """The metric names a PromQL expression reads, and the label names it uses: (metric or None, label) for
    matchers on that metric and for by (...) clauses (None: any metric of the expression)."""
    labels: set[tuple[str | None, str]] = set()
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals hold no names
    for metric, matchers in re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}", text):
        labels |= {(metric, m) for m in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers)}
    for clause in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text):
        labels |= {(None, name.strip()) for name in clause.split(",") if name.strip()}
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors: [5m]
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![A-Za-z0-9_.:])[A-Za-z_:][A-Za-z0-9_:]*", text):
        followed_by_call = text[m.end():].lstrip().startswith("(")
        if not followed_by_call and m.group(0).lower() not in KEYWORDS:
            names.add(m.group(0))
    return names, labels


def test_the_promql_reader_finds_names_and_labels() -> None:
    names, labels = promql_names('histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{status=~"5..", '
                                 'x="by (y)"}[5m]))) / ignoring(le) sum(b_total offset 1h) > 0.01')
    assert names == {"a_bucket", "b_total"}
    assert labels == {("a_bucket", "status"), ("a_bucket", "x"), (None, "le"), (None, "route")}


def test_the_dashboards_are_current_with_their_generator() -> None:
    stale = [str(path.relative_to(ROOT)) for path, text in generator().render().items()
             if not path.exists() or path.read_text(encoding="utf-8") != text]
    assert stale == [], f"run `python monitoring/generate.py`: {stale} differ from what it writes"


def test_the_cloud_dashboard_is_what_the_monitoring_api_accepts() -> None:
    """Parsed as the API's own Dashboard message: an unknown field or enum value fails here, not at
    `gcloud monitoring dashboards create`."""
    from google.cloud import monitoring_dashboard_v1 as monitoring

    dashboard = monitoring.Dashboard.from_json((ROOT / "monitoring" / "dashboard.json").read_text())
    layout = dashboard.mosaic_layout
    charts = [t.widget.xy_chart for t in layout.tiles if t.widget.xy_chart.data_sets]
    assert dashboard.display_name and len(charts) == len(generator().PANELS) >= 8
    assert all(t.x_pos + t.width <= layout.columns for t in layout.tiles)
    assert all(d.time_series_query.prometheus_query for c in charts for d in c.data_sets)


def test_the_local_stack_files_agree_with_the_grafana_dashboard() -> None:
    grafana = json.loads((ROOT / "monitoring" / "grafana" / "dashboard.json").read_text())
    source = yaml.safe_load((ROOT / "monitoring/grafana/provisioning/datasources/prometheus.yaml").read_text())
    uids = {t["datasource"]["uid"] for p in grafana["panels"] for t in p["targets"]}
    assert uids == {source["datasources"][0]["uid"]} and source["datasources"][0]["type"] == "prometheus"
    provider = yaml.safe_load((ROOT / "monitoring/grafana/provisioning/dashboards/photo-detector.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    scrape = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["metrics_path"] == "/metrics" and scrape["static_configs"][0]["targets"] == ["127.0.0.1:8080"]
    assert len({p["id"] for p in grafana["panels"]}) == len(grafana["panels"])


@pytest.fixture(scope="module")
def exported(smoke_model: Path, smoke_data: Path) -> dict[str, set[str]]:
    """Every series name a live service exports, with its label names, after the traffic that fills each."""
    app = create_app(str(smoke_model), load_config(None, {"serve.explain_grid": 2}), KeyChecker([hash_key(KEY)]))
    image = sorted((smoke_data / "test" / "real").iterdir())[0].read_bytes()
    with running(app) as url, httpx.Client(timeout=30) as client:
        wait_ready(client, url)
        for route in ("/predict", "/v1/explain"):
            r = client.post(url + route, files={"file": ("x.png", image)}, headers={"X-API-Key": KEY})
            assert r.status_code == 200, r.text
        assert client.get(f"{url}/model").status_code == 401
        text = client.get(f"{url}/metrics").text
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def test_every_panel_reads_only_what_metrics_exports(exported: dict[str, set[str]]) -> None:
    queries = all_queries()
    assert len(queries) >= 10
    used: set[str] = set()
    for expr in queries:
        names, labels = promql_names(expr)
        assert names, f"{expr!r} reads no metric"
        assert names <= set(exported), f"{expr!r} reads {sorted(names - set(exported))}, not in /metrics"
        used |= names
        for metric, label in labels:
            owners = [metric] if metric else sorted(names)
            assert any(label in exported[m] for m in owners), f"{expr!r}: no label {label!r} on {owners}"
    # And the other way round: every family the service exports is on the dashboard.
    families = {re.sub(r"_(bucket|sum|count|total|created)$", "", n) for n in exported}
    shown = {re.sub(r"_(bucket|sum|count|total|created)$", "", n) for n in used}
    assert families == shown, f"not on the dashboard: {sorted(families - shown)}"
