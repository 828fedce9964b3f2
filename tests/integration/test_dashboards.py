"""The Grafana dashboards in deploy/grafana/, checked for what an import and a provisioning rely on.

* Both import with a data-source choice (``__inputs``) and name no data source of their own: every
  panel, query and variable goes through the dashboard's data-source variable.
* The readings dashboard (InfluxDB, Flux) queries only the measurement, fields and tags that
  docs/influxdb.md documents and quantities meterd's catalogue has; sums by area go through the
  area/role/group tags, and no query builds a regex of every meter (the meter variable is one
  meter, used with ``==``).
* The daemon-health dashboard (Prometheus) queries only metrics, and labels of them, that a scrape
  of /metrics holds (every family filled in, see test_metrics.every_family_text).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_metrics import every_family_text

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
READINGS = GRAFANA / "dashboards" / "meterd.json"
HEALTH = GRAFANA / "dashboards" / "meterd-health.json"
#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
PROMQL_WORDS = {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "offset"}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def documented_schema() -> tuple[set[str], set[str], set[str]]:
    """Measurements, tags and fields from docs/influxdb.md."""
    doc = (ROOT / "docs" / "influxdb.md").read_text()
    measurements = set(re.findall(r"\*\*Measurement:\*\*\s*`([^`]+)`", doc))

    def section(title: str) -> str:
        return doc.split(title, 1)[1].split("\n\n**", 1)[0]

    tags = set(re.findall(r"^\| `([a-z_]+)` \|", section("**Tags**"), flags=re.MULTILINE))
    fields = set(re.findall(r"^\| `([a-z_]+)` \|", section("**Fields.**"), flags=re.MULTILINE))
    assert measurements and tags and fields, "docs/influxdb.md changed shape: update this test"
    return measurements, tags, fields


def queries(dashboard: dict[str, Any], key: str) -> list[tuple[str, str]]:
    """(where, query text) of every variable and panel target."""
    found = []
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            found.append((f"variable {v['name']}", query))
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                found.append((f"panel {inner['title']!r} {target['refId']}", target[key]))
    return found


def datasource_refs(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every ``datasource`` value in the dashboard, with where it is."""
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                out.append((path, value))
            out.extend(datasource_refs(value, f"{path}/{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.extend(datasource_refs(value, f"{path}[{i}]"))
    return out


@pytest.mark.parametrize(("path", "plugin"), [(READINGS, "influxdb"), (HEALTH, "prometheus")],
                         ids=["readings", "health"])
def test_a_dashboard_imports_with_a_data_source_choice_and_names_none_of_its_own(path: Path, plugin: str) -> None:
    dashboard = load(path)
    (wanted,) = dashboard["__inputs"]
    assert (wanted["type"], wanted["pluginId"]) == ("datasource", plugin)
    assert {"type": "datasource", "id": plugin} in [{k: r[k] for k in ("type", "id")} for r in dashboard["__requires"]]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    chooser = variables["datasource"]
    assert (chooser["type"], chooser["query"]) == ("datasource", plugin)
    assert chooser["current"]["value"] == f"${{{wanted['name']}}}"  # the import's choice lands here
    refs = datasource_refs(dashboard)
    assert refs, "no panel names its data source"
    for where, ref in refs:
        assert ref == {"type": plugin, "uid": "${datasource}"}, f"{path.name}{where}: {ref}"
    text = path.read_text()
    placeholders = set(re.findall(r"\$\{(DS_\w+)\}", text))
    assert placeholders == {wanted["name"]}, placeholders
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"]


def test_provisioning_names_both_data_sources_from_the_environment() -> None:
    text = (GRAFANA / "provisioning" / "datasources" / "meterd.yaml").read_text()
    assert re.findall(r"^\s+type:\s*(\S+)", text, flags=re.MULTILINE) == ["influxdb", "prometheus"]
    assert re.search(r"^\s+version:\s*Flux\s*$", text, flags=re.MULTILINE)
    assert "token: ${METERD_INFLUX_TOKEN}" in text and "url: ${METERD_PROMETHEUS_URL}" in text  # never inline
    assert "path:" in (GRAFANA / "provisioning" / "dashboards" / "meterd.yaml").read_text()


def test_the_readings_dashboard_queries_the_documented_schema_and_no_regex_of_meters() -> None:
    from meterd.protocols.readspec import dlt645_index

    dashboard = load(READINGS)
    measurements, tags, fields = documented_schema()
    known_quantities = set(dlt645_index())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    meter = variables["meter"]
    assert not meter.get("multi") and not meter.get("includeAll"), "one meter at a time, never a list of them all"
    for name in ("area", "group"):  # few values: a regex of them is cheap; All is '.*', not a list
        assert variables[name]["allValue"] == ".*"
    text = READINGS.read_text()
    assert "${meter:regex}" not in text and "${meter:pipe}" not in text
    quantities_shown: set[str] = set()
    by_area = 0
    found = queries(dashboard, "query")
    assert len(found) >= 8
    for where, flux in found:
        named = re.findall(r'_measurement\s*==\s*"([^"]+)"', flux)
        assert named, f"{where} names no measurement"
        assert set(named) <= measurements, f"{where}: {set(named) - measurements} not in docs/influxdb.md"
        used_fields = set(re.findall(r'_field\s*==\s*"([^"]+)"', flux))
        assert used_fields <= fields, f"{where}: fields {used_fields - fields} not in docs/influxdb.md"
        used_columns = set(re.findall(r"\br\.([A-Za-z]\w*)", flux))
        assert used_columns <= tags | fields, f"{where}: {used_columns - tags - fields} not in docs/influxdb.md"
        for listed in re.findall(r"columns:\s*\[([^\]]*)\]", flux):
            named_columns = set(re.findall(r'"([^"]+)"', listed)) - {"_time", "_value", "_field"}
            assert named_columns <= tags, f"{where}: columns {named_columns - tags} are no documented tags"
        tag = re.findall(r'tag:\s*"([^"]+)"', flux)
        assert set(tag) <= tags, where
        for var in re.findall(r"\$\{(\w+)", flux):
            assert var in variables, f"{where} uses ${{{var}}}, which the dashboard does not define"
        if where.startswith("panel"):
            exact = set(re.findall(r'r\.quantity\s*==\s*"([^"]+)"', flux))
            patterns = re.findall(r"r\.quantity\s*=~\s*/([^/]+)/", flux)
            matched = {q for p in patterns for q in known_quantities if re.fullmatch(p, q)}
            assert exact or matched, f"{where} selects no quantity"
            assert exact <= known_quantities, f"{where}: {exact - known_quantities} is no meterd quantity"
            assert all(any(re.fullmatch(p, q) for q in known_quantities) for p in patterns), where
            quantities_shown |= exact | matched
            if 'group(columns: ["area"' in flux:
                by_area += 1
                assert 'r.role == "${role}"' in flux, f"{where} sums every role: the supply meter counts twice"
            else:
                assert 'r.meter == "${meter}"' in flux, f"{where} is neither a sum by area nor one meter"
            if "every: 1d" in flux:  # days cut at the site's midnight, not UTC's
                assert 'option location = timezone.location(name: "${tz}")' in flux, where
    assert by_area >= 2
    assert {"energy.active.import.total", "power.active.total", "voltage.a", "voltage.b", "voltage.c",
            "current.a", "current.b", "current.c", "relay.open"} <= quantities_shown


def scrape_labels() -> dict[str, set[str]]:
    """sample name -> its label names, from a scrape with every family filled in."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(every_family_text()):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def promql_selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) of every series selector in ``expr``."""
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    found = []
    for name, call, matchers in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?(\{[^}]*\})?", expr):
        if call or name in PROMQL_WORDS:
            continue
        found.append((name, set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))))
    return found


def test_the_health_dashboard_queries_metrics_a_scrape_has() -> None:
    dashboard = load(HEALTH)
    exposed = scrape_labels()
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    found = queries(dashboard, "expr")
    assert len(found) >= 12
    used: set[str] = set()
    for where, expr in found:
        values_of = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", expr)  # a variable's choices
        if values_of is not None:
            name, label = values_of.groups()
            assert name in exposed and label in exposed[name] | TARGET_LABELS, where
            continue
        selectors = promql_selectors(expr)
        assert selectors, f"{where} selects no series"
        for name, labels in selectors:
            assert name in exposed, f"{where}: {name} is not in a scrape of /metrics"
            unknown = labels - exposed[name] - TARGET_LABELS
            assert not unknown, f"{where}: {name} has no label {unknown}"
            used.add(name)
        for var in re.findall(r"\$(\w+)", expr):
            assert var in variables or var.startswith("__"), f"{where} uses ${var}, which the dashboard does not define"
    for wanted in ("meterd_channel_attempts_total", "meterd_read_duration_seconds_bucket",
                   "meterd_channel_last_success_timestamp_seconds", "meterd_terminal_online",
                   "meterd_command_outcomes_total", "meterd_prepaid_pass_duration_seconds_bucket",
                   "meterd_spool_records", "process_cpu_seconds_total", "meterd_build_info"):
        assert wanted in used, f"the health dashboard shows nothing of {wanted}"
