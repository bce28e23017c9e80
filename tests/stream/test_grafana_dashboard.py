"""Every metric (and label) the Grafana dashboard queries is one a worker
exposes (docker/grafana/taskstream-dashboard.json): a renamed metric fails
here, not on a dashboard that silently shows "No data". In the stream tier
because the worker's registry comes with its faust app (tables in memory)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from streams.agents import metrics as worker_metrics

DOCKER = Path(__file__).resolve().parents[2] / "docker"
DASHBOARD = DOCKER / "grafana" / "taskstream-dashboard.json"

_METRIC = re.compile(r"\b((?:taskstream|process)_[a-z0-9_]+)")
_SELECTOR = re.compile(r"\b((?:taskstream|process)_[a-z0-9_]+)\{([^}]*)\}")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
# Labels Prometheus adds, or that histogram_quantile and friends work on.
_ALWAYS = {"job", "instance", "le", "__name__"}


def _families() -> dict[str, set[str]]:
    """Exposed family name -> its labels, with the sample suffixes Prometheus sees."""
    exposed: dict[str, set[str]] = {}
    for family in worker_metrics.registry.collect():
        labels = set(getattr(family, "_labelnames", ()) or ()) | _declared_labels(family.name)
        if family.type == "histogram":
            suffixes = ("_bucket", "_sum", "_count")
        elif family.type == "counter":
            suffixes = ("_total",)
        else:
            suffixes = ("",)
        for suffix in suffixes:
            exposed[family.name + suffix] = labels
    return exposed


def _declared_labels(name: str) -> set[str]:
    """Labels of a metric the worker declares (its WorkerMetrics' Counters, Histogram ...)."""
    for value in vars(worker_metrics).values():
        if getattr(value, "_name", None) == name:
            return set(getattr(value, "_labelnames", ()))
    return set()


def _dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in doc["panels"] for t in panel.get("targets", [])]


def test_every_queried_metric_and_label_is_exposed() -> None:
    source = "the dashboard"
    exprs = _dashboard_exprs()
    assert exprs
    exposed = _families()
    for expr in exprs:
        names = set(_METRIC.findall(expr))
        assert names, expr
        unknown = sorted(name for name in names if name not in exposed)
        assert not unknown, f"{source} queries {unknown}, not exposed: {expr}"
        labels = set().union(*(exposed[name] for name in names)) | _ALWAYS
        used = {
            part.split("=")[0].strip().rstrip("!~")
            for _, selector in _SELECTOR.findall(expr)
            for part in selector.split(",")
            if part.strip()
        }
        used |= {
            label.strip()
            for grouping in _GROUPING.findall(expr)
            for label in grouping.split(",")
            if label.strip()
        }
        assert used <= labels, f"{source}: labels {sorted(used - labels)} unknown in {expr}"


def test_the_dashboard_is_grafana_json_with_a_prometheus_datasource_variable() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "taskstream-overview"
    assert [v["name"] for v in doc["templating"]["list"]] == ["datasource"]
    ids = [panel["id"] for panel in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"]
