"""``/metrics``, ``/readyz`` and the Prometheus files in deploy/prometheus/, against a real daemon.

One daemon (collector, prepaid, API) reads simulated meters over TCP and behind a GPRS DTU, with a
second DTU that never dials in, and writes readings to a real line-protocol server
(VictoriaMetrics); an operator's trip goes out and is confirmed.  Its ``/metrics`` is scraped over
HTTP with a viewer token and parsed with ``prometheus_client``'s parser: every metric the alert
rules name must be there, with the figures the daemon saw.  promtool (Debian's ``prometheus``
package) checks the rules, their unit tests, the scrape config and the scrape itself."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_influx_store import victoria  # noqa: F401 -- the server fixture

from conftest import free_port
from meterd.api import TokenStore, create_app
from meterd.api.metrics import Figures, Metrics
from meterd.app import build_node
from meterd.config.loader import parse_config
from meterd.simulators.dtu import run_dtu_fleet
from meterd.simulators.fleet import FleetSpec, run_fleet
from meterd.storage.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
SECRETS = {"METERD_METER_PASSWORD": "02123456", "METERD_OPERATOR_CODE": "00000001", "TEST_INFLUX_TOKEN": "x"}
#: Series Prometheus makes itself, not the target.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


@pytest.fixture
def promtool() -> str:
    """promtool's path; in CI (scripts/test installs it) a missing one fails, elsewhere it skips."""
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed (apt-get install prometheus)")
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return found


def get(port: int, path: str, token: str | None = None, accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if accept:
        headers["Accept"] = accept
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def post(port: int, path: str, token: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def rule_metric_names() -> set[str]:
    """Every metric name in the alert rules' expressions (PromQL functions and labels left out)."""
    lines = (PROMETHEUS / "alerts.yml").read_text().splitlines()
    exprs = []
    for i, line in enumerate(lines):
        found = re.match(r"^(\s+)expr:\s*(.*)$", line)
        if found is None:
            continue
        indent, expr = len(found.group(1)), found.group(2)
        if expr == "|":  # a block: the lines indented deeper
            block = []
            for following in lines[i + 1:]:
                if following.strip() and len(following) - len(following.lstrip()) <= indent:
                    break
                block.append(following)
            expr = "\n".join(block)
        exprs.append(expr)
    assert len(exprs) >= 6, "alerts.yml changed shape: update this test"
    names: set[str] = set()
    for expr in exprs:
        expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
        expr = re.sub(r"\bby\s*\([^)]*\)", "", expr)  # grouping labels
        expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
        for word, call in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
            if not call and word not in {"and", "or", "unless"}:  # a function is followed by "("
                names.add(word)
    return names


def site(tmp_path: Path, bus: Any, dtu_port: int, api_port: int, influx_url: str) -> str:
    host, _, port = bus.endpoint.rpartition(":")
    first, second = bus.meters[0], bus.meters[1]
    return f"""
[store]
data_dir = "{tmp_path / 'data'}"
flush_interval = "100ms"

[store.influxdb]
url = "{influx_url}"
org = "utility"
bucket = "meterd"
token_env = "TEST_INFLUX_TOKEN"
spool_keep_free_mb = 0  # the guard has tests of its own; these must not depend on the disk
spool_dir = "{tmp_path / 'spool'}"

[listeners.gprs]
host = "127.0.0.1"
port = {dtu_port}

[channels.bus1]
tcp = {{ host = "{host}", port = {port} }}
response_timeout = "500ms"
retries = 0

[channels.d1]
dtu = {{ listener = "gprs", terminal = "DTU00000001" }}
response_timeout = "2s"

[channels.d2]
dtu = {{ listener = "gprs", terminal = "DTU00000002" }}
response_timeout = "500ms"

[[meters]]
address = "{first}"
channel = "bus1"
group = "north"

[[meters]]
address = "{second}"
channel = "bus1"
group = "north"

[[meters]]
address = "000000000101"
channel = "d1"
group = "south"

[[meters]]
address = "000000000201"
channel = "d2"
group = "south"

[[polls]]
name = "rt"
interval = "1s"
quantities = ["energy.active.import.total", "voltage.a"]

[[topology.units]]
name = "TA-001"
kind = "area"

[[topology.points]]
meter = "{first}"
unit = "TA-001"
role = "supply"

[[topology.points]]
meter = "{second}"
unit = "TA-001"
role = "sales"

[prepaid]
check_every = "1s"

[[prepaid.tariffs]]
name = "flat"
[[prepaid.tariffs.versions]]
effective = 2020-01-01
kind = "flat"
price = "0.50"

[[prepaid.accounts]]
account = "A1"
tariff = "flat"
meters = ["{second}"]
opening_balance = "100.00"

[api]
port = {api_port}
"""


async def until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        assert time.monotonic() < deadline, f"timed out after {timeout} s: {what}"
        await asyncio.sleep(0.1)


async def run_daemon(tmp_path: Path, victoria: Any, monkeypatch: Any) -> dict[str, Any]:  # noqa: F811
    """A run of the daemon: what /metrics and /readyz answered, the fleet's meters, the server."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    server = victoria().start()
    fleet = await run_fleet(FleetSpec(pty_buses=0, tcp_buses=1, meters_per_bus=2, wire_time=False, seed=7))
    dtu_port, api_port = free_port(), free_port()
    try:
        bus = fleet.buses[0]
        config = parse_config(tomllib.loads(site(tmp_path, bus, dtu_port, api_port, server.url)), "site.toml")
        (tmp_path / "data").mkdir()
        with TokenStore(tmp_path / "data") as tokens:
            now = datetime.now(UTC)
            viewer = tokens.create("prometheus", "viewer", now)[1]
            operator = tokens.create("ops", "operator", now)[1]
        with SqliteStore(config.store.data_dir) as store:
            node = build_node(config, store, clock=lambda: datetime.now(UTC))
            stop = asyncio.Event()
            task = asyncio.create_task(node.run(stop))
            dtus = None
            try:
                await until(lambda: _answers(api_port), 30, "the API answers")
                dtus = await run_dtu_fleet(1, 1, "127.0.0.1", dtu_port, first_address="000000000101", heartbeat=5.0)
                status, made = await asyncio.to_thread(post, api_port, "/api/v1/commands", operator,
                                                       {"meter": bus.meters[1], "kind": "trip", "reason": "metrics"})
                assert status == 201, made

                def settled() -> bool:
                    _, _, body = get(api_port, f"/api/v1/commands?meter={bus.meters[1]}", operator)
                    return any(c["state"] == "confirmed" for c in json.loads(body))

                await until(settled, 30, "the trip is confirmed")
                await until(lambda: b'meterd_terminal_online{channel="d1"' in _scrape(api_port, viewer)
                            and b'channel="d1",kind="dtu",terminal="DTU00000001"} 1.0' in _scrape(api_port, viewer),
                            30, "the DTU's channel is online")
                await until(lambda: b"meterd_prepaid_pass_duration_seconds_count 0.0" not in _scrape(api_port, viewer),
                            30, "a prepaid pass ran")
                ready = await asyncio.to_thread(get, api_port, "/readyz")
                unauthorized = await asyncio.to_thread(get, api_port, "/metrics")
                text = (await asyncio.to_thread(get, api_port, "/metrics", viewer))[2].decode()
                openmetrics = await asyncio.to_thread(get, api_port, "/metrics", viewer,
                                                      "application/openmetrics-text; version=1.0.0")
            finally:
                stop.set()
                await task
                if dtus is not None:
                    await dtus.close()
        return {"text": text, "openmetrics": openmetrics, "ready": ready, "unauthorized": unauthorized,
                "meters": bus.meters, "server": server}
    finally:
        await fleet.close()


def _answers(port: int) -> bool:
    try:
        return get(port, "/healthz")[0] == 200
    except OSError:
        return False


def _scrape(port: int, token: str) -> bytes:
    return get(port, "/metrics", token)[2]


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        out.setdefault(family.name, [])
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


async def test_a_running_daemon_exposes_what_the_alert_rules_name_is_ready_and_tags_its_points(
        tmp_path, victoria, monkeypatch):  # noqa: F811
    scraped = await run_daemon(tmp_path, victoria, monkeypatch)
    status, headers, _ = scraped["unauthorized"]
    assert status == 401 and headers.get("www-authenticate", "").startswith("Bearer")
    got = samples(scraped["text"])
    missing = rule_metric_names() - set(got) - PROMETHEUS_OWN
    assert not missing, f"alerts.yml names metrics /metrics does not expose: {sorted(missing)}"
    assert "meterd_channel_attempts_total" in rule_metric_names()  # the extraction found the names

    (labels, value), = got["meterd_build_info"]
    assert value == 1 and labels["version"] and labels["python"].count(".") == 2
    assert got["process_cpu_seconds_total"][0][1] > 0 and got["process_resident_memory_bytes"][0][1] > 0
    # read latency per kind of channel: TCP and DTU answered, counted in buckets that add up
    buckets = {(lab["link"], lab["le"]): v for lab, v in got["meterd_read_duration_seconds_bucket"]}
    counts = {lab["link"]: v for lab, v in got["meterd_read_duration_seconds_count"]}
    assert counts["tcp"] > 0 and counts["dtu"] > 0
    for link in ("tcp", "dtu"):
        assert buckets[(link, "+Inf")] == counts[link]
        ladder = [v for (k, le), v in sorted(buckets.items(), key=lambda kv: float(kv[0][1])) if k == link]
        assert ladder == sorted(ladder)  # cumulative
    reads = {(lab["channel"], lab["outcome"]): v for lab, v in got["meterd_channel_attempts_total"]}
    assert reads[("bus1", "ok")] > 0 and reads[("d2", "link")] > 0 and ("d2", "ok") not in reads
    successes = {lab["channel"]: v for lab, v in got["meterd_channel_successes_total"]}
    assert counts["tcp"] == successes["bus1"] and counts["dtu"] == successes["d1"] + successes["d2"]
    last = {lab["channel"]: v for lab, v in got["meterd_channel_last_success_timestamp_seconds"]}
    assert set(last) == {"bus1", "d1"}  # d2's DTU never dialled in: no reply, no timestamp
    assert all(abs(v - time.time()) < 120 for v in last.values())
    online = {lab["terminal"]: v for lab, v in got["meterd_terminal_online"]}
    assert online == {"DTU00000001": 1.0, "DTU00000002": 0.0}
    assert {lab["kind"]: v for lab, v in got["meterd_terminals_online"]} == {"dtu": 1.0, "mqtt": 0.0}
    outcomes = {(lab["kind"], lab["outcome"]): v for lab, v in got["meterd_command_outcomes_total"]}
    assert outcomes[("trip", "confirmed")] == 1
    assert got["meterd_prepaid_pass_duration_seconds_count"][0][1] >= 1
    assert got["meterd_prepaid_passes_total"][0][1] == got["meterd_prepaid_pass_duration_seconds_count"][0][1]
    assert got["meterd_spool_records"] == [({}, 0.0)]
    # what dashboards and docs relied on before keeps its name
    for name in ("meterd_channel_transactions_total", "meterd_channel_failures_total", "meterd_channel_waiting",
                 "meterd_channel_latency_mean_seconds", "meterd_commands", "meterd_api_connections"):
        assert name in got, name
    # OpenMetrics when Prometheus asks for it
    status, headers, body = scraped["openmetrics"]
    assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")

    # /readyz while it ran
    status, _, body = scraped["ready"]
    assert (status, json.loads(body)) == (200, {"status": "ready", "reasons": []})

    # its readings in InfluxDB (VictoriaMetrics): area, group and channel are tags
    server, (first, second) = scraped["server"], scraped["meters"]
    series = {s["metric"]["meter"]: s["metric"] for s in server.export('{__name__="reading_value"}')
              if s["metric"].get("quantity") == "voltage.a"}
    assert series[first] == {"__name__": "reading_value", "meter": first, "quantity": "voltage.a", "unit": "V",
                             "area": "TA-001", "role": "supply", "group": "north", "channel": "bus1"}
    assert (series[second]["area"], series[second]["role"]) == ("TA-001", "sales")
    assert series["000000000101"]["group"] == "south" and "area" not in series["000000000101"]
    assert not server.export('{__name__=~"reading_(kind|unit)"}')  # no constant strings as fields


def every_family_text() -> str:
    """A scrape with every family /metrics can show filled in (no daemon needed)."""
    import math

    from meterd.api.runtime import render_metrics
    from meterd.collector.ports import ChannelFigures, TerminalFigures
    from meterd.control.runtime import PrepaidFigures

    channel = ChannelFigures("bus1", 10, 9, (("timeout", 1),), 0.1, 0.5, 0, 3, 0, link="serial",
                             latency_buckets=((0.1, 5), (1.0, 4), (math.inf, 0)), latency_total=0.9,
                             last_success=1.7e9, outcomes=(("no_record", 1), ("ok", 8), ("timeout", 1)))
    cluster = {"node": "a", "channels_held": 1, "share": 1, "live_nodes": 1, "leading": {"prepaid": True},
               "lost": 0, "lapsed": 0, "renew_failures": 0, "acquired": 1, "claimed": 0, "released": 0}
    return render_metrics(Figures(
        channels=lambda: [channel], spool=lambda: (3, 400), commands=lambda: {"queued": 1},
        open_anomalies=lambda: 0, open_outages=lambda: 0, cluster=lambda: cluster,
        terminals=lambda: [TerminalFigures("T1", "dtu1", "dtu", True)],
        prepaid=lambda: PrepaidFigures(2, ((1.0, 2), (math.inf, 0)), 0.3, (("trip", "confirmed", 1),))))


def test_promtool_finds_nothing_to_lint_in_any_metric_family(promtool):
    """Every family /metrics can show through promtool's linter: names, units and suffixes as
    Prometheus has them."""
    text = every_family_text()
    families = {f.name for f in text_string_to_metric_families(text)}
    assert {"meterd_cluster_leader", "meterd_command_outcomes", "meterd_read_duration_seconds",
            "meterd_terminal_online", "meterd_build_info", "process_cpu_seconds"} <= families
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_alert_rules_and_their_unit_tests(promtool):
    checked = subprocess.run([promtool, "check", "rules", str(PROMETHEUS / "alerts.yml")],
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS,
                            capture_output=True, text=True, check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_promtool_accepts_the_scrape_config(tmp_path, promtool):
    """The example as shipped, with its token file put where this test can create it."""
    text = (PROMETHEUS / "prometheus.yml").read_text()
    assert "credentials_file: /etc/prometheus/meterd.token" in text and "type: Bearer" in text
    (tmp_path / "meterd.token").write_text("secret\n")
    (tmp_path / "prometheus.yml").write_text(text.replace("/etc/prometheus/meterd.token",
                                                          str(tmp_path / "meterd.token")))
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
    result = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readyz_says_why_without_a_collector(tmp_path):
    from test_api import serve

    with serve(create_app(tmp_path, clock=lambda: datetime.now(UTC))) as base:
        try:
            urllib.request.urlopen(base + "/readyz", timeout=10)
            raise AssertionError("/readyz answered 200 without a collector")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
            assert json.loads(exc.read()) == {"status": "not ready", "reasons": [
                "no collector in this process (the API runs without the daemon)"]}


def test_readyz_names_an_unreachable_store():
    from test_api import serve

    import pgserver
    from meterd.storage.database import Database

    if not pgserver.available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (apt-get install postgresql)")
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed")
    server = pgserver.PgServer()
    try:
        db = Database(server.new_database(), pool_size=2, timeout=2.0)

        def reasons(base: str) -> list[str]:
            try:
                urllib.request.urlopen(base + "/readyz", timeout=30)
            except urllib.error.HTTPError as exc:
                assert exc.code == 503
                return json.loads(exc.read())["reasons"]
            raise AssertionError("ready without a collector")

        with serve(create_app(db, clock=lambda: datetime.now(UTC))) as base:
            assert not any("state store" in r for r in reasons(base))
            server.stop()
            down = reasons(base)
            assert any(r.startswith("the state store is unreachable: ") for r in down), down
            server.start()
            deadline = time.monotonic() + 30
            while any("state store" in r for r in reasons(base)):
                assert time.monotonic() < deadline, "still unreachable 30 s after PostgreSQL came back"
                time.sleep(0.5)
        db.pool().close()
    finally:
        server.close()


def test_each_daemon_has_its_own_registry():
    """Two nodes in one process (tests, collector nodes side by side) never share a metric."""
    a = Metrics(Figures(channels=list, spool=lambda: (1, 10)))
    b = Metrics(Figures(channels=list, spool=lambda: (2, 20)))
    assert b"meterd_spool_records 1.0" in a.render()[0] and b"meterd_spool_records 2.0" in b.render()[0]
    from prometheus_client import REGISTRY

    assert REGISTRY.get_sample_value("meterd_spool_records") is None  # nothing in the global registry
