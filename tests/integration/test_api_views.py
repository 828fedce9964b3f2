"""The API's views over a site config, through a real server on a free port: overview, line loss,
energy, load curves, quality, terminals, sync status and runs, diagnostics, tokens and config --
every endpoint × every role, each answer checked against the OpenAPI document and against figures
computed by hand from what was seeded.  The on-demand read through a running daemon is in
``test_api_live.py``."""

from __future__ import annotations

import tomllib
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from test_api import ROLES, Site, serve

from meterd.analytics.energy import IMPORT_DAILY, DailyRegisterStore
from meterd.api import Role, TokenStore, create_app
from meterd.clock import CST
from meterd.config.loader import parse_config
from meterd.control.state import AccountSpec, ControlStore
from meterd.readings import Reading
from meterd.storage.quality import QualityStore
from meterd.storage.sqlite import Attempt, MeterRecord, SqliteStore

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=CST)  # the API's clock
TODAY, YESTERDAY = date(2026, 11, 23), date(2026, 11, 22)

SITE = """
[store]
data_dir = "{data}"
[listeners.gprs]
port = 1
[mqtt]
host = "127.0.0.1"
port = 1
[channels.bus1]
tcp = {{ host = "127.0.0.1", port = 9 }}
[channels.dtu1]
dtu = {{ listener = "gprs", terminal = "DTU-0001" }}
[channels.term1]
mqtt = {{ terminal = "T-0001" }}
{meters}
[[polls]]
name = "p"
interval = 60
quantities = ["energy.active.import.total"]

[[topology.units]]
name = "TA-1"
kind = "area"
[[topology.points]]
meter = "000000000001"
unit = "TA-1"
role = "supply"
[[topology.points]]
meter = "000000000002"
unit = "TA-1"
role = "sales"
groups = ["north"]
[[topology.points]]
meter = "000000000003"
unit = "TA-1"
role = "sales"
groups = ["north"]

[[sync.jobs]]
name = "payments"
kind = "import_payments"
folder = "{billing}"
"""
METERS = {"000000000001": "bus1", "000000000002": "bus1", "000000000003": "bus1", "000000000004": "bus1",
          "000000000005": "dtu1", "000000000006": "term1"}


def at(day: date, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=CST).astimezone(timezone.utc)


def _seed(data_dir: Path) -> dict[str, str]:
    with SqliteStore(data_dir) as archive:
        archive.upsert_meters([MeterRecord(a, ch, "dlt645-2007", Decimal(1), Decimal(1)) for a, ch in METERS.items()])
        # power of the two sales meters: 1.5 + 2.5 kW in each quarter hour from 00:00 to 01:00;
        # meter 2 has two samples in 00:15..00:30 (1.0 and 2.0: its mean 1.5 counts, not the sum)
        rows = [Reading(m, "power.active.total", at(TODAY, 0, q), Decimal(v), "kW")
                for m, v in (("000000000002", "1.5"), ("000000000003", "2.5")) for q in (0, 15, 30, 45) if
                not (m == "000000000002" and q == 15)]
        rows += [Reading("000000000002", "power.active.total", at(TODAY, 0, 16), Decimal("1.0"), "kW"),
                 Reading("000000000002", "power.active.total", at(TODAY, 0, 20), Decimal("2.0"), "kW")]
        archive.write_readings(rows)
        attempts = [Attempt(m, "bus1", "00010000", at(TODAY, 9), "ok", 0.1) for m in ("000000000001",
                                                                                  "000000000002", "000000000003")]
        attempts.append(Attempt("000000000004", "bus1", "00010000", at(TODAY, 9), "timeout", None, "no answer"))
        archive.record_attempts(attempts)
    with DailyRegisterStore(data_dir) as registers:
        registers.record([Reading(m, IMPORT_DAILY, at(day), Decimal(v), "kWh")
                          for m, a, b in (("000000000001", "100", "200"), ("000000000002", "50", "95"),
                                          ("000000000003", "10", "50"))
                          for day, v in ((YESTERDAY, a), (TODAY, b))])
    with QualityStore(data_dir) as quality:
        quality.record_online("dtu1", at(TODAY, 9), None)
        quality.record_online("term1", at(TODAY, 8), at(TODAY, 9))
    with ControlStore(data_dir) as control:
        control.upsert_accounts([
            AccountSpec("A1", "res", {"000000000002": Decimal(1)}, area="TA-1", opening_balance=Decimal(0)),
            AccountSpec("A2", "res", {"000000000003": Decimal(1)}, area="TA-1", opening_balance=Decimal(0)),
        ], actor="test", now=NOW)
    with TokenStore(data_dir) as tokens:
        return {role: tokens.create(f"{role}-user", role, NOW)[1] for role in ROLES}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("views")
    data_dir, billing = root / "data", root / "billing"
    data_dir.mkdir()
    meters = "\n".join(f'[[meters]]\naddress = "{a}"\nchannel = "{ch}"' for a, ch in METERS.items())
    config = parse_config(tomllib.loads(SITE.format(data=data_dir, billing=billing, meters=meters)),
                          source="views.toml")
    tokens = _seed(data_dir)
    with serve(create_app(data_dir, clock=lambda: NOW, config=config)) as base:
        s = Site(data_dir, base, tokens)
        s.billing = billing  # type: ignore[attr-defined]
        yield s


# path -> (least role, status when allowed); 503: served only by the daemon
MATRIX: dict[str, tuple[str, int, str, Any]] = {
    "/api/v1/overview": ("viewer", 200, "GET", None),
    "/api/v1/lineloss?period=2026-11-22": ("viewer", 200, "GET", None),
    "/api/v1/energy?period=2026-11-22&by=group": ("viewer", 200, "GET", None),
    "/api/v1/curve?unit=TA-1&day=2026-11-23": ("viewer", 200, "GET", None),
    "/api/v1/quality": ("viewer", 200, "GET", None),
    "/api/v1/terminals": ("viewer", 200, "GET", None),
    "/api/v1/sync": ("viewer", 200, "GET", None),
    "/api/v1/meters/000000000004/attempts?since=2026-11-23T00:00:00%2B08:00": ("technician", 200, "GET", None),
    "/api/v1/diagnostics": ("technician", 503, "GET", None),
    "/api/v1/meters/000000000001/read": ("technician", 503, "POST", {"quantities": ["voltage.a"]}),
    "/api/v1/sync/payments/run": ("operator", 200, "POST", None),
    "/api/v1/tokens": ("admin", 200, "GET", None),
    "/api/v1/config": ("admin", 200, "GET", None),
}


@pytest.mark.parametrize("role", (None, *ROLES))
@pytest.mark.parametrize("path", MATRIX)
def test_view_by_role(site: Site, path: str, role: str | None) -> None:
    needed, ok, method, body = MATRIX[path]
    status, _, doc = site.call(method, path, role=role, body=body)
    if role is not None and Role(role).allows(Role(needed)):
        assert status == ok, doc
    else:
        assert status == (401 if role is None else 403), doc


def test_overview_counts_what_was_seeded(site: Site) -> None:
    _, _, doc = site.call("GET", "/api/v1/overview", role="viewer")
    assert doc["day"] == "2026-11-23" and doc["meters"] == 6
    assert doc["collection"] == {"attempts": 4, "successes": 3, "no_record": 0, "failed": 1, "success_rate": 0.75,
                                 "target": 0.97}
    assert doc["terminals"] == {"total": 2, "online": 1}
    assert doc["accounts"]["total"] == 2 and doc["accounts"]["normal"] == 2 and doc["accounts"]["pending"] == 0


def test_line_loss_and_energy_by_hand(site: Site) -> None:
    _, _, reports = site.call("GET", "/api/v1/lineloss?period=2026-11-22", role="viewer")
    (ta1,) = reports
    # supply 200 - 100 = 100 kWh; sales (95 - 50) + (50 - 10) = 85; loss 15 -> 15.00 %
    assert (ta1["unit"], ta1["supply"], ta1["sales"], ta1["loss"], ta1["rate"]) == ("TA-1", "100", "85", "15",
                                                                                     "15.00")
    assert ta1["completeness"] == "100.00" and ta1["missing"] == []
    _, _, rows = site.call("GET", "/api/v1/energy?period=2026-11-22&by=group", role="viewer")
    assert rows == [{"start": "2026-11-22", "end": "2026-11-22", "key": "north", "kwh": "85"}]
    _, _, unit_rows = site.call("GET", "/api/v1/energy?period=2026-11-22&role=supply", role="viewer")
    assert [(r["key"], r["kwh"]) for r in unit_rows] == [("TA-1", "100")]


def test_load_curve_adds_meters_and_averages_samples(site: Site) -> None:
    _, _, curve = site.call("GET", "/api/v1/curve?unit=TA-1&day=2026-11-23&step=15m", role="viewer")
    assert curve["meters"] == ["000000000002", "000000000003"] and curve["step_seconds"] == 900
    assert [(p["at"][11:16], Decimal(p["kw"]), p["meters"]) for p in curve["points"]] == [
        ("00:00", Decimal("4.0"), 2), ("00:15", Decimal("4.0"), 2), ("00:30", Decimal("4.0"), 2),
        ("00:45", Decimal("4.0"), 2)]
    _, _, hourly = site.call("GET", "/api/v1/curve?meter=2&day=2026-11-23&step=1h", role="viewer")
    assert hourly["subject"] == "meter 000000000002" and len(hourly["points"]) == 1
    _, _, group = site.call("GET", "/api/v1/curve?group=north&day=2026-11-23", role="viewer")
    assert len(group["points"]) == 4


def test_quality_and_terminals(site: Site) -> None:
    _, _, report = site.call("GET", "/api/v1/quality?day=2026-11-23", role="viewer")
    assert report["total"]["attempts"] == 4 and report["total"]["failures"] == {"timeout": 1}
    _, _, terminals = site.call("GET", "/api/v1/terminals", role="viewer")
    by_id = {t["id"]: t for t in terminals}
    assert by_id["DTU-0001"]["online"] is True and by_id["DTU-0001"]["kind"] == "dtu"
    assert by_id["DTU-0001"]["since"] == at(TODAY, 9).isoformat()
    assert by_id["T-0001"]["online"] is False and by_id["T-0001"]["kind"] == "mqtt"
    _, _, attempts = site.call("GET", "/api/v1/meters/4/attempts?since=2026-11-23T00:00:00%2B08:00",
                               role="technician")
    assert [(a["outcome"], a["detail"]) for a in attempts] == [("timeout", "no answer")]


def test_a_sync_run_from_the_api_applies_once_and_shows_in_status(site: Site) -> None:
    inbox = site.billing / "inbox"  # type: ignore[attr-defined]
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / "p.csv").write_text("payment_id,account,amount,paid_at,channel\nAPI-P1,A1,12.30,2026-11-23 09:00:00,x\n")
    status, _, run = site.call("POST", "/api/v1/sync/payments/run", role="operator")
    assert status == 200 and run["job"] == "payments" and run["kind"] == "import_payments"
    with ControlStore(site.data_dir) as control:
        assert control.balance("A1") >= Decimal("12.30")
        ledger_keys = [r.key for r in control.ledger("A1")]
        audit = [a.action for a in control.audit_log(subject="payments", limit=10)]
    assert ledger_keys.count("payment:API-P1") == 1 and "api-sync-run" in audit
    _, _, jobs = site.call("GET", "/api/v1/sync", role="viewer")
    (job,) = jobs
    assert job["job"] == "payments" and job["last_status"] == "ok"
    assert site.call("POST", "/api/v1/sync/nope/run", role="operator")[0] == 404


def test_admin_makes_and_revokes_tokens_and_sees_the_config(site: Site) -> None:
    status, _, made = site.call("POST", "/api/v1/tokens", role="admin", body={"name": "wallboard", "role": "viewer"})
    assert status == 201 and made["secret"].startswith(made["id"] + ".")
    assert site.call("GET", "/api/v1/overview", token=made["secret"])[0] == 200
    _, _, listed = site.call("GET", "/api/v1/tokens", role="admin")
    assert made["secret"] not in str(listed) and any(t["id"] == made["id"] for t in listed)
    assert site.call("POST", f"/api/v1/tokens/{made['id']}/revoke", role="admin")[0] == 200
    assert site.call("GET", "/api/v1/overview", token=made["secret"])[0] == 401
    assert site.call("POST", f"/api/v1/tokens/{made['id']}/revoke", role="admin")[0] == 404
    own = site.tokens["admin"].split(".")[0]
    assert site.call("POST", f"/api/v1/tokens/{own}/revoke", role="admin")[0] == 409
    _, _, config = site.call("GET", "/api/v1/config", role="admin")
    assert config["meters"] == 6 and {c["name"] for c in config["channels"]} == {"bus1", "dtu1", "term1"}
    assert "sync" in config["sections"]


@pytest.mark.parametrize(("path", "fragment"), [
    ("/api/v1/lineloss?period=2026-13", "period"),
    ("/api/v1/lineloss?period=2026-11-22..2026-11-01", "before the start"),
    ("/api/v1/lineloss?unit=NOPE&period=2026-11-22", "NOPE"),
    ("/api/v1/energy?by=street", "by"),
    ("/api/v1/curve?day=2026-11-23", "exactly one"),
    ("/api/v1/curve?meter=1&unit=TA-1", "exactly one"),
    ("/api/v1/curve?meter=999&day=2026-11-23", "unknown meter"),
    ("/api/v1/curve?unit=NOPE", "NOPE"),
    ("/api/v1/curve?meter=1&step=fortnight", "step"),
    ("/api/v1/curve?meter=1&step=1s", "step"),
    ("/api/v1/curve?meter=1&day=23/11/2026", "day"),
    ("/api/v1/quality?day=yesterday", "day"),
    ("/api/v1/meters/999/attempts", "unknown meter"),
])
def test_bad_view_parameters_are_4xx_with_the_reason(site: Site, path: str, fragment: str) -> None:
    status, _, doc = site.call("GET", path, role="admin")
    assert status in (400, 404), doc
    assert fragment in doc["error"]


@pytest.mark.parametrize("body", [{}, {"quantities": []}, {"quantities": "voltage.a"}, {"quantities": [1]},
                                  {"quantities": ["voltage.a"], "extra": "x"}, {"quantities": [""]}])
def test_bad_read_bodies_are_400_before_anything_else(site: Site, body: dict) -> None:
    status, _, doc = site.call("POST", "/api/v1/meters/000000000001/read", role="technician", body=body)
    assert status == 400, doc


def test_bad_token_bodies_are_400(site: Site) -> None:
    for body in ({"name": "x"}, {"name": "x", "role": "root"}, {"name": "", "role": "viewer"}):
        status, _, doc = site.call("POST", "/api/v1/tokens", role="admin", body=body)
        assert status == 400, (body, doc)


def test_accounts_by_state_are_filtered_with_their_meters(site: Site) -> None:
    _, _, normal = site.call("GET", "/api/v1/accounts?state=normal&area=TA-1", role="viewer")
    assert [(a["account"], a["meters"]) for a in normal] == [("A1", {"000000000002": "1"}),
                                                              ("A2", {"000000000003": "1"})]
    _, _, tripped = site.call("GET", "/api/v1/accounts?state=tripped", role="viewer")
    assert tripped == []
    _, _, first = site.call("GET", "/api/v1/accounts?limit=1", role="viewer")
    _, _, second = site.call("GET", f"/api/v1/accounts?limit=1&after={first[0]['account']}", role="viewer")
    assert [a["account"] for a in first + second] == ["A1", "A2"]
    with ControlStore(site.data_dir) as control:
        assert [a.account for a in control.accounts(state="normal", names=["A2"])] == ["A2"]
