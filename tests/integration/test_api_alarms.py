"""Alarms and 保电 over real HTTP with real tokens: the list made of anomalies, failed and stuck-relay
commands and outages (one alarm per ongoing condition, resolved when it clears, history kept), the
operator's acknowledge / assign / close with the audit line, the counts in the overview, the roles,
absurd input answered 4xx with nothing written, and 保电 from the API as ``meterd protect`` does it.
Every answer is checked against the API's own OpenAPI document (tests/integration/test_api.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from test_api import ROLES, Site, serve

from meterd.analytics.anomalies import AnomalyStore, Finding, Kind, Severity
from meterd.analytics.outages import OutageFinding, OutageStore
from meterd.api import Role, TokenStore, create_app
from meterd.control.model import CommandKind, CommandRequest, CommandState
from meterd.control.state import AccountSpec, ControlStore
from meterd.storage.sqlite import STATE_FILE

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
M1, M2, M3 = "000000000001", "000000000002", "000000000003"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def _fail(control: ControlStore, meter: str, kind: CommandKind, at: datetime, *, read_back: dict[str, bool],
          state: CommandState = CommandState.FAILED, detail: str = "control anomaly") -> int:
    [cmd] = control.queue_commands([CommandRequest(meter, kind, "low balance", "policy", account="A1")], now=at,
                                   ttl=timedelta(hours=2))
    control.mark_sent(cmd.id, now=at)
    control.finish(cmd.id, state, now=at, detail=detail, read_back=read_back)
    return cmd.id


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Site, Clock]]:
    with ControlStore(tmp_path) as control:
        control.upsert_accounts([AccountSpec("A1", "flat", {M1: Decimal(1), M2: Decimal(1)}, area="TA-1")],
                                actor="test", now=NOW)
        _fail(control, M1, CommandKind.TRIP, NOW - timedelta(minutes=30), read_back={"relay.open": False})
    with AnomalyStore(tmp_path) as anomalies:
        anomalies.update([Finding(M3, Kind.NO_DATA, Severity.WARNING, NOW - timedelta(hours=30), "silent 30 h", ())],
                         [], NOW)
        # the control hook's own anomaly of the stuck trip: the command's alarm stands for it, no second one
        anomalies.record([Finding(M1, Kind.COMMAND_FAILED, Severity.CRITICAL, NOW, "trip failed", ())], NOW)
    with OutageStore(tmp_path) as outages:
        outages.update([OutageFinding("TA-1", NOW - timedelta(minutes=20), (M1, M2), Decimal(1))], NOW,
                       lambda m: "A1")
    with TokenStore(tmp_path) as tokens:
        secrets = {role: tokens.create(f"{role}-user", role, NOW)[1] for role in ROLES}
    clock = Clock()
    with serve(create_app(tmp_path, clock=clock)) as base:
        yield Site(tmp_path, base, secrets), clock


def _alarms(site: Site, query: str = "", role: str = "viewer") -> dict[str, Any]:
    status, _, doc = site.call("GET", "/api/v1/alarms" + query, role=role)
    assert status == 200, doc
    return doc


def _by_kind(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for a in doc["alarms"]:
        out.setdefault(a["kind"], []).append(a)
    return out


def _audit(site: Site) -> list[tuple[str, str, str]]:
    with sqlite3.connect(site.data_dir / STATE_FILE) as conn:
        return conn.execute("SELECT actor, action, subject FROM audit WHERE action LIKE 'alarm-%' OR action LIKE "
                            "'%protect%' ORDER BY id").fetchall()


def _writes(site: Site) -> tuple[int, ...]:
    with sqlite3.connect(site.data_dir / STATE_FILE) as conn:
        return tuple(conn.execute(sql).fetchone()[0] for sql in (
            "SELECT COUNT(*) FROM audit", "SELECT COUNT(*) FROM alarm_history",
            "SELECT COUNT(*) FROM protection_overrides"))


def test_one_list_of_every_source_with_counts_in_the_overview(site: tuple[Site, Clock]) -> None:
    s, _ = site
    doc = _alarms(s)
    kinds = _by_kind(doc)
    assert set(kinds) == {"anomaly", "relay_stuck", "outage"}, kinds
    [stuck] = kinds["relay_stuck"]
    assert stuck["subject"] == M1 and stuck["severity"] == "critical" and stuck["state"] == "open"
    assert stuck["detail"]["command_kind"] == "trip" and stuck["detail"]["read_back"] == {"relay.open": False}
    [anomaly] = kinds["anomaly"]
    assert anomaly["subject"] == M3 and anomaly["severity"] == "major" and anomaly["detail"]["anomaly_kind"] == "no_data"
    assert anomaly["raised_at"] == (NOW - timedelta(hours=30)).isoformat()  # when the condition began
    [outage] = kinds["outage"]
    assert outage["subject"] == "TA-1" and outage["severity"] == "critical"
    assert all(a["history"][0]["action"] == "raised" and a["history"][0]["by"] == "meterd" for a in doc["alarms"])
    assert doc["counts"] == {"open": 3, "acknowledged": 0, "closed": 0} and doc["next"] is None
    assert _alarms(s)["counts"]["open"] == 3  # asked again: the same alarms, none raised twice
    status, _, overview = s.call("GET", "/api/v1/overview", role="viewer")
    assert status == 200 and overview["alarms"] == {"open": 3, "acknowledged": 0}


def test_acknowledge_assign_close_each_audited_with_the_tokens_name(site: tuple[Site, Clock]) -> None:
    s, _ = site
    [alarm] = _by_kind(_alarms(s))["outage"]
    path = f"/api/v1/alarms/{alarm['id']}"
    status, _, acked = s.call("POST", path + "/acknowledge", role="operator", body={"comment": "on it"})
    assert status == 200 and acked["state"] == "acknowledged"
    status, _, assigned = s.call("POST", path + "/assign", role="operator", body={"to": "wang (line crew)"})
    assert status == 200 and assigned["assignee"] == "wang (line crew)" and assigned["state"] == "acknowledged"
    status, _, closed = s.call("POST", path + "/close", role="admin", body={"comment": "feeder breaker reset 08:40"})
    assert status == 200 and closed["state"] == "closed"
    assert [(h["action"], h["by"], h["comment"]) for h in closed["history"]] == [
        ("raised", "meterd", None), ("acknowledged", "operator-user", "on it"),
        ("assigned", "operator-user", None), ("closed", "admin-user", "feeder breaker reset 08:40")]
    assert _audit(s) == [("operator-user", "alarm-acknowledge", "TA-1"), ("operator-user", "alarm-assign", "TA-1"),
                         ("admin-user", "alarm-close", "TA-1")]
    counts = _alarms(s)["counts"]
    assert counts == {"open": 2, "acknowledged": 0, "closed": 1}
    assert [a["id"] for a in _alarms(s, "?state=closed")["alarms"]] == [alarm["id"]]
    status, _, overview = s.call("GET", "/api/v1/overview", role="viewer")
    assert overview["alarms"] == {"open": 2, "acknowledged": 0}


@pytest.mark.parametrize("role", (None, *ROLES))
def test_roles(site: tuple[Site, Clock], role: str | None) -> None:
    s, _ = site
    alarm = _alarms(s)["alarms"][0]
    before = _writes(s)
    for path, body, needed in ((f"/api/v1/alarms/{alarm['id']}/acknowledge", {}, "operator"),
                               (f"/api/v1/alarms/{alarm['id']}/assign", {"to": "li"}, "operator"),
                               (f"/api/v1/alarms/{alarm['id']}/close", {"comment": "done"}, "operator"),
                               ("/api/v1/accounts/A1/protect", {"protect": True, "reason": "hospital"}, "admin")):
        status, _, doc = s.call("POST", path, role=role, body=body)
        if role is not None and Role(role).allows(Role(needed)):
            assert status == 200, (path, doc)
            continue
        assert status == (401 if role is None else 403), (path, doc)
    if role is None or not Role(role).allows(Role.OPERATOR):
        assert _writes(s) == before
    status, _, _ = s.call("GET", "/api/v1/alarms", role=role) if role else s.call("GET", "/api/v1/alarms")
    assert status == (200 if role else 401)


def test_absurd_input_is_4xx_and_writes_nothing(site: tuple[Site, Clock]) -> None:
    s, _ = site
    alarm = _alarms(s)["alarms"][0]
    path = f"/api/v1/alarms/{alarm['id']}"
    before = _writes(s)
    cases: list[tuple[str, Any, bytes | None, int, str]] = [
        (path + "/close", {"comment": "x" * 2001}, None, 400, "at most 2000"),
        (path + "/close", {}, None, 400, "missing field: comment"),
        (path + "/close", {"comment": "  "}, None, 400, "must not be empty"),
        (path + "/close", {"comment": 5}, None, 400, "must be a string"),
        (path + "/close", {"comment": "ok", "state": "open"}, None, 400, "unknown field"),
        (path + "/close", None, b"[1, 2]", 400, "JSON object"),
        (path + "/close", None, b"{nope", 400, "not valid JSON"),
        (path + "/close", None, b'{"comment": "' + b"y" * 70_000 + b'"}', 413, "64 KiB"),
        (path + "/assign", {"comment": "who?"}, None, 400, "missing field: to"),
        (path + "/assign", {"to": "a\u0000b"}, None, 400, "control character"),
        (path + "/assign", {"to": "n" * 65}, None, 400, "at most 64"),
        ("/api/v1/alarms/99999/close", {"comment": "gone"}, None, 404, "no alarm #99999"),
        ("/api/v1/alarms/abc/acknowledge", {}, None, 400, "not a number"),
        ("/api/v1/alarms/1" + "0" * 30 + "/acknowledge", {}, None, 400, "not a number"),
        ("/api/v1/accounts/A1/protect", {"protect": "yes", "reason": "r"}, None, 400, "must be a boolean"),
        ("/api/v1/accounts/A1/protect", {"protect": True}, None, 400, "missing field: reason"),
        ("/api/v1/accounts/A1/protect", {"protect": True, "reason": "r" * 501}, None, 400, "at most 500"),
        ("/api/v1/accounts/NOBODY/protect", {"protect": True, "reason": "r"}, None, 404, "unknown account"),
    ]
    for p, body, raw, status, words in cases:
        got, _, doc = s.call("POST", p, role="admin", body=body, raw=raw)
        assert got == status and words in doc["error"], (p, body, got, doc)
    for query, words in (("?state=maybe", "state="), ("?kind=fire", "kind="), ("?limit=0", "limit="),
                         ("?limit=1001", "limit="), ("?cursor=x1", "cursor="), ("?subject=" + "s" * 201, "subject")):
        got, _, doc = s.call("GET", "/api/v1/alarms" + query, role="viewer")
        assert got == 400 and words in doc["error"], (query, doc)
    assert _writes(s) == before


def test_twice_is_409(site: tuple[Site, Clock]) -> None:
    s, _ = site
    alarm = _alarms(s)["alarms"][0]
    path = f"/api/v1/alarms/{alarm['id']}"
    assert s.call("POST", path + "/acknowledge", role="operator", body={})[0] == 200
    status, _, doc = s.call("POST", path + "/acknowledge", role="operator", body={})
    assert status == 409 and "acknowledged already" in doc["error"]
    assert s.call("POST", path + "/assign", role="operator", body={"to": "li"})[0] == 200
    status, _, doc = s.call("POST", path + "/assign", role="operator", body={"to": "li"})
    assert status == 409 and "assigned to li already" in doc["error"]
    assert s.call("POST", path + "/close", role="operator", body={"comment": "done"})[0] == 200
    before = _writes(s)
    for step, body in (("close", {"comment": "again"}), ("acknowledge", {}), ("assign", {"to": "zhao"})):
        status, _, doc = s.call("POST", f"{path}/{step}", role="operator", body=body)
        assert status == 409 and "closed already" in doc["error"], (step, doc)
    assert _writes(s) == before


def test_one_alarm_per_ongoing_condition_resolved_when_it_clears(site: tuple[Site, Clock]) -> None:
    s, clock = site
    [stuck] = _by_kind(_alarms(s))["relay_stuck"]
    # the policy tries the trip again and it fails again: the same alarm, now naming the newer command
    with ControlStore(s.data_dir) as control:
        again = _fail(control, M1, CommandKind.TRIP, NOW, read_back={"relay.open": False})
        _fail(control, M2, CommandKind.ALARM, NOW, read_back={}, detail="meter refused: password")
    clock.now += timedelta(minutes=1)
    kinds = _by_kind(_alarms(s))
    assert [a["id"] for a in kinds["relay_stuck"]] == [stuck["id"]]
    assert kinds["relay_stuck"][0]["detail"]["command_id"] == again
    assert kinds["relay_stuck"][0]["detail"]["failures_in_a_row"] == 2
    [failed] = kinds["command_failed"]
    assert failed["subject"] == M2 and failed["severity"] == "minor"
    # an operator closes the stuck-relay alarm while the relay is still stuck: it stays closed
    assert s.call("POST", f"/api/v1/alarms/{stuck['id']}/close", role="operator",
                  body={"comment": "crew sent"})[0] == 200
    clock.now += timedelta(minutes=1)
    assert "relay_stuck" not in _by_kind(_alarms(s, "?state=open"))
    # the relay is fixed and a trip confirmed; the outage ends: both conditions clear
    with ControlStore(s.data_dir) as control:
        [ok] = control.queue_commands([CommandRequest(M1, CommandKind.TRIP, "retry", "policy")], now=clock.now,
                                      ttl=timedelta(hours=2))
        control.mark_sent(ok.id, now=clock.now)
        control.finish(ok.id, CommandState.CONFIRMED, now=clock.now, detail="relay.open = yes",
                       read_back={"relay.open": True})
    with OutageStore(s.data_dir) as outages:
        outages.update([], clock.now, lambda m: None)
    clock.now += timedelta(minutes=1)
    doc = _alarms(s, "?state=closed")
    closed = {a["kind"]: a for a in doc["alarms"]}
    assert closed["outage"]["history"][-1]["action"] == "resolved"
    assert closed["outage"]["history"][-1]["by"] == "meterd"
    assert [h["action"] for h in closed["relay_stuck"]["history"]] == ["raised", "closed", "resolved"]
    assert _alarms(s)["counts"] == {"open": 2, "acknowledged": 0, "closed": 2}
    # the trip fails once more later: a new condition, a new alarm
    with ControlStore(s.data_dir) as control:
        _fail(control, M1, CommandKind.TRIP, clock.now, read_back={"relay.open": False})
    clock.now += timedelta(minutes=1)
    stuck_now = _by_kind(_alarms(s, "?state=open"))["relay_stuck"]
    assert len(stuck_now) == 1 and stuck_now[0]["id"] > stuck["id"]


def test_pages_with_the_cursor_and_filters(site: tuple[Site, Clock]) -> None:
    s, _ = site
    first = _alarms(s, "?limit=2")
    assert len(first["alarms"]) == 2 and first["next"] is not None
    rest = _alarms(s, f"?limit=2&cursor={first['next']}")
    assert len(rest["alarms"]) == 1 and rest["next"] is None
    ids = [a["id"] for a in first["alarms"] + rest["alarms"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 3
    only = _alarms(s, f"?kind=anomaly&subject={M3}")
    assert [a["subject"] for a in only["alarms"]] == [M3]
    assert only["counts"] == {"open": 1, "acknowledged": 0, "closed": 0}
    assert _alarms(s, "?subject=nobody")["alarms"] == []


def test_protect_from_the_api_as_meterd_protect(site: tuple[Site, Clock]) -> None:
    s, _ = site
    status, _, doc = s.call("POST", "/api/v1/accounts/A1/protect", role="admin",
                            body={"protect": True, "reason": "hospital ward on this line"})
    assert status == 200, doc
    assert doc["changed"] is True and doc["protected"] is True and doc["archive_protected"] is False
    assert doc["protection_override"]["operator"] == "admin-user"
    _, _, account = s.call("GET", "/api/v1/accounts/A1", role="viewer")
    assert account["protected"] is True
    status, _, again = s.call("POST", "/api/v1/accounts/A1/protect", role="admin",
                              body={"protect": True, "reason": "hospital ward on this line"})
    assert status == 200 and again["changed"] is False
    status, _, released = s.call("POST", "/api/v1/accounts/A1/protect", role="admin",
                                 body={"protect": False, "reason": "ward moved"})
    assert released["changed"] is True and released["protected"] is False
    assert _audit(s) == [("admin-user", "protection-override", "A1"), ("admin-user", "api-protect", "A1"),
                         ("admin-user", "protection-unchanged", "A1"), ("admin-user", "api-protect", "A1"),
                         ("admin-user", "protection-override-ended", "A1"), ("admin-user", "api-protect", "A1")]


def test_commands_need_a_reason_and_record_it(site: tuple[Site, Clock]) -> None:
    s, _ = site
    status, _, doc = s.call("POST", "/api/v1/commands", role="operator", body={"meter": M2, "kind": "trip"})
    assert status == 400 and "missing field: reason" in doc["error"]
    status, _, cmd = s.call("POST", "/api/v1/commands", role="operator",
                            body={"meter": M2, "kind": "trip", "reason": "meter tampering, work order 77"})
    assert status == 201 and cmd["reason"] == "meter tampering, work order 77"
    status, _, cancelled = s.call("POST", f"/api/v1/commands/{cmd['id']}/cancel", role="operator",
                                  body={"reason": "customer paid"})
    assert status == 200 and cancelled["state"] == "cancelled"


def test_a_growing_spool_is_one_alarm_resolved_when_it_drains(tmp_path: Path) -> None:
    from meterd.api.alarms import AlarmWatch

    sizes = iter([(10, 1000), (40, 4000), (90, 9000), (160, 16000), (300, 30000), (0, 0), (0, 0)])
    with ControlStore(tmp_path) as control, AnomalyStore(tmp_path) as anomalies, OutageStore(tmp_path) as outages:
        watch = AlarmWatch(tmp_path, control=control, anomalies=anomalies, outages=outages, spool=lambda: next(sizes))
        try:
            raised = []
            for i in range(5):  # a sample every 15 s, as the daemon's watch takes them
                result = watch.refresh(NOW + timedelta(seconds=15 * i), force=True)
                assert result is not None
                raised += result[0]
            [alarm_id] = raised  # from the third sample on it grows: one alarm, not one per sample
            alarm = watch.store.alarm(alarm_id)
            assert alarm is not None and alarm.kind.value == "spool_growing" and alarm.detail["records"] == 300
            assert watch.refresh(NOW + timedelta(seconds=75), force=True) == ([], [alarm_id])  # drained
        finally:
            watch.close()


def test_the_daemons_api_syncs_alarms_in_the_background(tmp_path: Path) -> None:
    """With a running node (``live``) the list is synced without anybody asking for it."""
    import time

    from meterd.storage.alarms import AlarmStore

    class Node:  # what the daemon hands the API: only the spool's size matters here
        def spool_size(self) -> tuple[int, int] | None:
            return (0, 0)

        def readiness(self) -> str | None:
            return None

    with AnomalyStore(tmp_path) as anomalies:
        anomalies.update([Finding(M3, Kind.NO_DATA, Severity.CRITICAL, NOW, "silent", ())], [], NOW)
    with ControlStore(tmp_path), serve(create_app(tmp_path, clock=Clock(), live=Node())):  # type: ignore[arg-type]
        deadline = time.monotonic() + 10
        with AlarmStore(tmp_path) as store:
            while not store.alarms()[0]:
                assert time.monotonic() < deadline, "no alarm raised in the background"
                time.sleep(0.05)
            [alarm] = store.alarms()[0]
    assert alarm.subject == M3 and alarm.severity.value == "critical"


def test_the_alarm_list_and_its_steps_on_postgresql(pg_url: str) -> None:
    from meterd.storage.database import Database

    db = Database(pg_url, pool_size=4)
    with ControlStore(db) as control:
        control.upsert_accounts([AccountSpec("A1", "flat", {M1: Decimal(1)})], actor="test", now=NOW)
        _fail(control, M1, CommandKind.TRIP, NOW, read_back={"relay.open": False})
    with AnomalyStore(db) as anomalies:
        anomalies.update([Finding(M3, Kind.NO_DATA, Severity.WARNING, NOW, "silent", ())], [], NOW)
    with TokenStore(db) as tokens:
        secrets = {role: tokens.create(f"{role}-user", role, NOW)[1] for role in ROLES}
    with serve(create_app(db, clock=Clock())) as base:
        s = Site(Path("/nonexistent"), base, secrets)
        doc = _alarms(s)
        assert sorted(a["kind"] for a in doc["alarms"]) == ["anomaly", "relay_stuck"]
        first = doc["alarms"][0]["id"]
        assert s.call("POST", f"/api/v1/alarms/{first}/close", role="operator", body={"comment": "done"})[0] == 200
        status, _, again = s.call("POST", f"/api/v1/alarms/{first}/close", role="operator", body={"comment": "x"})
        assert status == 409 and "closed already" in again["error"]
        assert s.call("GET", "/api/v1/overview", role="viewer")[2]["alarms"] == {"open": 1, "acknowledged": 0}
        status, _, protected = s.call("POST", "/api/v1/accounts/A1/protect", role="admin",
                                      body={"protect": True, "reason": "hospital"})
        assert status == 200 and protected["protected"] is True
    with ControlStore(db) as control:
        assert [r.action for r in control.audit_log(limit=20) if r.actor in ("operator-user", "admin-user")] == [
            "alarm-close", "protection-override", "api-protect"]
