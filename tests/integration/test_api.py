"""The HTTP API over real HTTP: a uvicorn server on a free port, a data directory written through
the stores, and every answer checked against the API's own OpenAPI document.

- every endpoint × every role (and no token): allowed or refused with 401 / 403;
- every JSON answer validates against the response schema the document gives for its status;
- malformed bodies and parameters (bad JSON, wrong types, missing or unknown fields, oversize,
  unknown ids) get the right 4xx and change nothing in the database;
- tokens are stored hashed; a payment posted twice is applied once.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import re
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from conftest import free_port
from meterd.analytics.anomalies import AnomalyStore, Finding, Kind, Severity
from meterd.analytics.outages import OutageFinding, OutageStore
from meterd.api import Role, TokenStore, create_app
from meterd.control.state import AccountSpec, ControlStore
from meterd.readings import Quality, Reading
from meterd.storage.sqlite import STATE_FILE, MeterRecord, SqliteStore

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc)
ROLES = ("viewer", "technician", "operator", "admin")
_addresses = itertools.count(100)


# --- the server --------------------------------------------------------------------------------


class Site:
    def __init__(self, data_dir: Path, base: str, tokens: dict[str, str]) -> None:
        self.data_dir, self.base, self.tokens = data_dir, base, tokens
        self._openapi: dict[str, Any] | None = None

    def call(self, method: str, path: str, *, role: str | None = None, body: Any = None, raw: bytes | None = None,
             token: str | None = None, check: bool = True) -> tuple[int, dict[str, str], Any]:
        headers = {"Accept": "application/json"}
        secret = token if token is not None else (self.tokens[role] if role else None)
        if secret is not None:
            headers["Authorization"] = f"Bearer {secret}"
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, hdrs, payload = resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            status, hdrs, payload = exc.code, dict(exc.headers), exc.read()
        doc = json.loads(payload)
        if check:
            self.validate(method, path, status, doc)
        return status, hdrs, doc

    @property
    def openapi(self) -> dict[str, Any]:
        if self._openapi is None:
            status, _, self._openapi = self.call("GET", "/api/v1/openapi.json", check=False)
            assert status == 200
        return self._openapi

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        path = path.split("?")[0]
        for template, ops in self.openapi["paths"].items():
            if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path) and method.lower() in ops:
                return template, ops[method.lower()]
        raise AssertionError(f"{method} {path} is not in the OpenAPI document")

    def validate(self, method: str, path: str, status: int, doc: Any) -> None:
        template, op = self.operation(method, path)
        response = op["responses"].get(str(status))
        assert response is not None, f"{method} {template}: status {status} not documented ({doc})"
        schema = response["content"]["application/json"]["schema"]
        errors = validate(doc, schema, self.openapi)
        assert not errors, f"{method} {path} -> {status}: {errors}"


def validate(value: Any, schema: dict[str, Any], root: dict[str, Any], where: str = "$") -> list[str]:
    """The JSON Schema subset the API uses: $ref, type (or a list of types), enum, required,
    properties, additionalProperties, items, pattern."""
    if "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        return validate(value, node, root, where)
    errors: list[str] = []
    types = schema.get("type")
    if types is not None:
        allowed = types if isinstance(types, list) else [types]
        checks = {"object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
                  "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
                  "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
                  "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                  "null": lambda v: v is None}
        if not any(checks[t](value) for t in allowed):
            return [f"{where}: {value!r} is not {types}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errors += [f"{where}: missing {name}" for name in schema.get("required", []) if name not in value]
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                errors += validate(item, props[key], root, f"{where}.{key}")
            elif extra is False:
                errors.append(f"{where}: unexpected {key}")
            elif isinstance(extra, dict):
                errors += validate(item, extra, root, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += validate(item, schema["items"], root, f"{where}[{i}]")
    return errors


def _seed(data_dir: Path) -> dict[str, str]:
    with SqliteStore(data_dir) as archive:
        archive.upsert_meters([MeterRecord(f"{i:012d}", "line1", "dlt645-2007", Decimal(1), Decimal(1),
                                           name=f"m{i}") for i in range(1, 5)])
        archive.write_readings([
            Reading("000000000001", "energy.active.import.total", NOW - timedelta(hours=h), Decimal(f"{1000 + h}.25"),
                    "kWh") for h in range(3)] + [
            Reading("000000000001", "voltage.a", NOW, Decimal("221.3"), "V", Quality.SUSPECT),
            Reading("000000000001", "clock", NOW, NOW - timedelta(seconds=5)),
            Reading("000000000001", "status.relay", NOW, 3),
        ])
    with ControlStore(data_dir) as control:
        control.upsert_accounts([
            AccountSpec("A1001", "residential", {"000000000001": Decimal(1)}, customer="Zhang San", area="TA-001"),
            AccountSpec("A1002", "residential", {"000000000002": Decimal(1)}, customer="Li Si", area="TA-001",
                        protected=True),
        ], actor="test", now=NOW)
        control.pay("A1001", "100", "seed-1", actor="test", now=NOW)
    with AnomalyStore(data_dir) as anomalies:
        anomalies.update([Finding("000000000003", Kind.NO_DATA, list(Severity)[0], NOW, "silent 24 h",
                                  ({"meter": "000000000003", "quantity": "x", "timestamp": NOW.isoformat(),
                                    "value": "1"},))], [], NOW)
    with OutageStore(data_dir) as outages:
        outages.update([OutageFinding("TA-001", NOW, ("000000000001", "000000000002"), Decimal("1"))], NOW,
                       lambda m: {"000000000001": "A1001"}.get(m))
    with TokenStore(data_dir) as tokens:
        secrets = {role: tokens.create(f"{role}-user", role, NOW)[1] for role in ROLES}
        revoked_id, secrets["revoked"] = tokens.create("gone", "admin", NOW)
        tokens.revoke(revoked_id, NOW)
    return secrets


@contextlib.contextmanager
def serve(app: Any, **options: Any) -> Iterator[str]:
    """``app`` served by uvicorn in a thread on a free port; yields its base URL.  ``options`` go to
    ``uvicorn.Config`` (e.g. the daemon's guarded ``http`` protocol)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           **{"log_level": "warning", "lifespan": "on", **options}))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("api")
    tokens = _seed(data_dir)
    with serve(create_app(data_dir, clock=lambda: datetime.now(timezone.utc))) as base:
        yield Site(data_dir, base, tokens)


def _new_meter(site: Site) -> str:
    address = f"{next(_addresses):012d}"
    with SqliteStore(site.data_dir) as archive:
        archive.upsert_meters([MeterRecord(address, "line1", "dlt645-2007", Decimal(1), Decimal(1))])
    return address


def _snapshot(site: Site) -> tuple[int, ...]:
    with sqlite3.connect(site.data_dir / STATE_FILE) as conn:
        return tuple(conn.execute(sql).fetchone()[0] for sql in (
            "SELECT COUNT(*) FROM ledger", "SELECT COUNT(*) FROM commands", "SELECT COUNT(*) FROM audit",
            "SELECT COALESCE(SUM(balance_fen), 0) FROM accounts",
            "SELECT COUNT(*) FROM commands WHERE state = 'cancelled'"))


# --- every endpoint × every role ---------------------------------------------------------------


def _request(site: Site, name: str) -> tuple[str, str, Any]:
    """(method, path, body) of a valid request to endpoint ``name``."""
    ref = f"r{next(_addresses)}"
    if name == "post_command":
        return "POST", "/api/v1/commands", {"meter": _new_meter(site), "kind": "alarm", "reason": "inspection"}
    if name == "cancel":
        _, _, queued = site.call("POST", "/api/v1/commands", role="admin",
                                 body={"meter": _new_meter(site), "kind": "trip", "reason": "to cancel"})
        return "POST", f"/api/v1/commands/{queued['id']}/cancel", {"reason": "changed my mind"}
    if name == "payment":
        return "POST", "/api/v1/payments", {"account": "A1001", "amount": "10.50", "ref": ref}
    if name == "adjustment":
        return "POST", "/api/v1/adjustments", {"account": "A1001", "amount": "-1.25", "ref": ref, "reason": "fix"}
    if name == "activate":
        return "POST", f"/api/v1/accounts/{_new_account(site)}/activate", {"opening_balance": "12.30", "ref": ref}
    return "GET", name, None


def _new_account(site: Site) -> str:
    """A new pending account (created without an opening balance)."""
    name = f"P{next(_addresses)}"
    with ControlStore(site.data_dir) as control:
        control.upsert_accounts([AccountSpec(name, "residential", {})], actor="test", now=NOW)
    return name


# endpoint -> (least role, status when allowed)
MATRIX = {
    "/healthz": (None, 200),
    "/api/v1/openapi.json": (None, 200),
    "/api/v1/meters": ("viewer", 200),
    "/api/v1/meters?limit=2&after=000000000001": ("viewer", 200),
    "/api/v1/meters/1": ("viewer", 200),
    "/api/v1/meters/000000000001/readings?quantity=energy.active.import.total&limit=2": ("viewer", 200),
    "/api/v1/meters/1/readings?since=2026-11-23T00:00:00%2B00:00&until=2026-11-24T00:00:00Z": ("viewer", 200),
    "/api/v1/accounts": ("viewer", 200),
    "/api/v1/accounts?state=normal&area=TA-001": ("viewer", 200),
    "/api/v1/accounts/A1001": ("viewer", 200),
    "/api/v1/accounts/A1001/ledger?limit=5": ("viewer", 200),
    "/api/v1/commands?state=queued": ("viewer", 200),
    "/api/v1/anomalies?state=open": ("viewer", 200),
    "/api/v1/outages": ("viewer", 200),
    "post_command": ("operator", 201),
    "cancel": ("operator", 200),
    "payment": ("operator", 201),
    "adjustment": ("operator", 201),
    "activate": ("operator", 201),
}


@pytest.mark.parametrize("role", (None, *ROLES))
@pytest.mark.parametrize("name", MATRIX)
def test_endpoint_by_role(site: Site, name: str, role: str | None) -> None:
    needed, ok = MATRIX[name]
    method, path, body = _request(site, name)
    before = _snapshot(site)
    status, headers, doc = site.call(method, path, role=role, body=body)
    if needed is None or (role is not None and Role(role).allows(Role(needed))):
        assert status == ok, doc
        return
    assert _snapshot(site) == before, "a refused request wrote something"
    if role is None:
        assert status == 401
        assert headers.get("www-authenticate", headers.get("WWW-Authenticate", "")).startswith("Bearer")
    else:
        assert status == 403
        assert needed in doc["error"]


def test_bad_tokens_are_401(site: Site) -> None:
    for token in ("nonsense", site.tokens["revoked"], site.tokens["admin"] + "x", site.tokens["admin"].split(".")[0]):
        status, headers, doc = site.call("GET", "/api/v1/meters", token=token)
        assert status == 401, token
        assert "Bearer" in headers.get("www-authenticate", "")
    req = urllib.request.Request(site.base + "/api/v1/meters", headers={"Authorization": "Basic dXNlcjpwdw=="})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    assert exc.value.code == 401


# --- what the answers hold ---------------------------------------------------------------------


def test_reads_show_the_stores(site: Site) -> None:
    _, _, meters = site.call("GET", "/api/v1/meters", role="viewer")
    first = next(m for m in meters if m["address"] == "000000000001")
    assert first["latest"]["energy.active.import.total"]["value"] == "1000.25"
    assert first["latest"]["voltage.a"]["quality"] == "suspect"
    _, _, readings = site.call("GET", "/api/v1/meters/000000000001/readings?quantity=energy.active.import.total",
                               role="viewer")
    assert [r["value"] for r in readings["readings"]] == ["1002.25", "1001.25", "1000.25"]
    _, _, account = site.call("GET", "/api/v1/accounts/A1002", role="viewer")
    assert account["protected"] is True and account["balance"] == "0.00" and account["held"] is None
    _, _, ledger = site.call("GET", "/api/v1/accounts/A1001/ledger", role="viewer")
    assert ledger["entries"][0]["key"] == "payment:seed-1" and ledger["entries"][-1]["balance"] == ledger["balance"]
    _, _, anomalies = site.call("GET", "/api/v1/anomalies", role="viewer")
    assert anomalies[0]["kind"] == "no_data"
    _, _, outages = site.call("GET", "/api/v1/outages?open=true", role="viewer")
    assert outages[0]["unit"] == "TA-001" and outages[0]["accounts"] == ["A1001"]


def test_meters_page_by_address_and_one_meter_shows_its_latest(site: Site) -> None:
    _, _, page = site.call("GET", "/api/v1/meters?limit=2", role="viewer")
    _, _, rest = site.call("GET", f"/api/v1/meters?after={page[-1]['address']}&limit=2", role="viewer")
    assert [m["address"] for m in page] == ["000000000001", "000000000002"]
    assert [m["address"] for m in rest] == ["000000000003", "000000000004"]
    _, _, one = site.call("GET", "/api/v1/meters/000000000001", role="viewer")
    assert one["latest"]["energy.active.import.total"]["value"] == "1000.25" and one["name"] == "m1"
    status, _, doc = site.call("GET", "/api/v1/meters/424242", role="viewer")
    assert status == 404 and "000000424242" in doc["error"]


def test_openapi_describes_every_route(site: Site) -> None:
    doc = site.openapi
    assert doc["openapi"].startswith("3.1")
    for template, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["responses"], f"{method} {template}"
            for response in op["responses"].values():
                assert "schema" in response["content"]["application/json"]
            placeholders = set(re.findall(r"\{([^}]+)\}", template))
            assert placeholders == {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
    assert set(doc["paths"]) >= {"/healthz", "/api/v1/meters", "/api/v1/commands", "/api/v1/payments",
                                 "/api/v1/commands/{id}/cancel", "/api/v1/openapi.json"}


# --- writes ------------------------------------------------------------------------------------


def test_payment_twice_is_applied_once(site: Site) -> None:
    body = {"account": "A1001", "amount": "88.50", "ref": "receipt-77"}
    before = _snapshot(site)
    _, _, start = site.call("GET", "/api/v1/accounts/A1001", role="viewer")
    status, _, first = site.call("POST", "/api/v1/payments", role="operator", body=body)
    assert status == 201 and first["applied"] is True
    assert Decimal(first["balance"]) == Decimal(start["balance"]) + Decimal("88.50")
    status, _, again = site.call("POST", "/api/v1/payments", role="admin", body=body)
    assert status == 200 and again["applied"] is False and "already applied" in again["reason"]
    assert again["balance"] == first["balance"]
    assert _snapshot(site)[0] == before[0] + 1
    with ControlStore(site.data_dir) as control:
        assert control.verify_balances() == []
        audit = [a for a in control.audit_log(subject="A1001", limit=20) if a.action == "api-payment"]
    assert audit[-1].actor == "admin-user" and audit[-1].detail["token_id"] == site.tokens["admin"].split(".")[0]


def test_an_account_shows_the_effective_protection_with_the_archives_flag(site: Site) -> None:
    # an operator's 保电 override (meterd protect) is what the API reports as protected
    _, _, before = site.call("GET", "/api/v1/accounts/A1001", role="viewer")
    assert before["protected"] is before["archive_protected"]
    with ControlStore(site.data_dir) as control:
        control.set_protection("A1001", not before["protected"], reason="hospital night shift", actor="li",
                               now=datetime.now(timezone.utc))
    try:
        _, _, shown = site.call("GET", "/api/v1/accounts/A1001", role="viewer")
        assert shown["protected"] is (not before["protected"])
        assert shown["archive_protected"] is before["protected"]
        _, _, listed = site.call("GET", "/api/v1/accounts", role="viewer")
        assert [a["protected"] for a in listed if a["account"] == "A1001"] == [shown["protected"]]
    finally:
        with ControlStore(site.data_dir) as control:
            control.set_protection("A1001", before["protected"], reason="back to the archive", actor="li",
                                   now=datetime.now(timezone.utc))


def test_an_operator_activates_a_pending_account_once(site: Site) -> None:
    name = _new_account(site)
    _, _, shown = site.call("GET", f"/api/v1/accounts/{name}", role="viewer")
    assert (shown["state"], shown["alarmed_at"]) == ("pending", None)
    _, _, pending = site.call("GET", "/api/v1/accounts?state=pending", role="viewer")
    assert name in [a["account"] for a in pending]
    for bad, code in (("1e3", 422), ("1.005", 422), ("2000000", 422), (12, 400)):
        before = _snapshot(site)
        status, _, refused = site.call("POST", f"/api/v1/accounts/{name}/activate", role="operator",
                                       body={"opening_balance": bad, "ref": "MIG-1"})
        assert status == code and "opening_balance" in refused["error"], refused
        assert _snapshot(site) == before
    status, _, done = site.call("POST", f"/api/v1/accounts/{name}/activate", role="operator",
                                body={"opening_balance": "-12.30", "ref": "MIG-1"})
    assert status == 201 and done["applied"] is True and done["balance"] == "-12.30"
    status, _, again = site.call("POST", f"/api/v1/accounts/{name}/activate", role="admin",
                                 body={"opening_balance": "-12.30", "ref": "MIG-1"})
    assert status == 200 and again["applied"] is False and again["balance"] == "-12.30"
    _, _, shown = site.call("GET", f"/api/v1/accounts/{name}", role="viewer")
    assert shown["state"] == "normal"
    status, _, missing = site.call("POST", "/api/v1/accounts/NOPE/activate", role="operator",
                                   body={"opening_balance": "0", "ref": "MIG-2"})
    assert status == 404 and "unknown account NOPE" in missing["error"]
    with ControlStore(site.data_dir) as control:
        assert [r.key for r in control.ledger(name)] == [f"opening:{name}"]
        assert control.ledger(name)[0].actor == "operator-user"
        assert "api-activate" in [a.action for a in control.audit_log(subject=name)]


def test_command_is_queued_as_the_token_name_and_cancelled(site: Site) -> None:
    meter = _new_meter(site)
    status, _, command = site.call("POST", "/api/v1/commands", role="operator",
                                   body={"meter": meter, "kind": "reclose-allowed", "reason": "customer paid"})
    assert status == 201 and command["requested_by"] == "operator-user" and command["state"] == "queued"
    status, _, again = site.call("POST", "/api/v1/commands", role="operator",
                                 body={"meter": meter, "kind": "reclose-allowed", "reason": "again"})
    assert status == 422 and "already" in again["error"]
    status, _, cancelled = site.call("POST", f"/api/v1/commands/{command['id']}/cancel", role="operator",
                                     body={"reason": "wrong meter"})
    assert status == 200 and cancelled["state"] == "cancelled"
    status, _, doc = site.call("POST", f"/api/v1/commands/{command['id']}/cancel", role="operator",
                               body={"reason": "twice"})
    assert status == 409
    _, _, listed = site.call("GET", "/api/v1/commands?state=cancelled", role="viewer")
    assert command["id"] in [c["id"] for c in listed]


def test_refused_command_is_422_with_the_reason(site: Site) -> None:
    status, _, doc = site.call("POST", "/api/v1/commands", role="operator",
                               body={"meter": "000000000002", "kind": "trip", "reason": "arrears"})
    assert status == 422 and "protected" in doc["error"]


# --- bad input changes nothing -----------------------------------------------------------------

PAY = "/api/v1/payments"
BAD = [
    ("POST", PAY, b"{not json", 400, "not valid JSON"),
    ("POST", PAY, b"\xff\xfe", 400, "not valid JSON"),
    ("POST", PAY, b"[1, 2]", 400, "JSON object"),
    ("POST", PAY, b"", 400, "not valid JSON"),
    ("POST", PAY, b"[" * 60_000, 400, "not valid JSON"),
    ("POST", PAY, json.dumps({"account": "A1001", "amount": 10, "ref": "x1"}).encode(), 422,
     'must be a JSON string such as "88.50"'),
    ("POST", PAY, json.dumps({"account": "A1001", "amount": "10"}).encode(), 400, "missing field: ref"),
    ("POST", PAY, json.dumps({"account": "A1001", "amount": "1.234", "ref": "x2"}).encode(), 422, "two decimals"),
    ("POST", PAY, json.dumps({"account": "A1001", "amount": "-5", "ref": "x3"}).encode(), 422, "takes no sign"),
    ("POST", PAY, json.dumps({"account": "A1001", "amount": "NaN", "ref": "x4"}).encode(), 422, "NaN"),
    ("POST", PAY, json.dumps({"account": "A1001", "amount": "abc", "ref": "x5"}).encode(), 422, "not an amount"),
    ("POST", PAY, json.dumps({"account": "A1001", "amount": "1", "ref": "x6", "x": "1"}).encode(), 400, "unknown"),
    ("POST", PAY, json.dumps({"account": "A1001", "amount": "1", "ref": " "}).encode(), 400, "empty"),
    ("POST", PAY, json.dumps({"account": "NOPE", "amount": "1", "ref": "x7"}).encode(), 404, "unknown account"),
    ("POST", PAY, json.dumps({"account": "A1001", "amount": "1", "ref": "x" * 70_000}).encode(), 413, "64"),
    ("POST", "/api/v1/adjustments", json.dumps({"account": "A1001", "amount": "1", "ref": "y1"}).encode(), 400,
     "missing field: reason"),
    ("POST", "/api/v1/adjustments", json.dumps({"account": "A1001", "amount": "0", "ref": "y2",
                                                "reason": "r"}).encode(), 422, "zero"),
    ("POST", "/api/v1/commands", json.dumps({"meter": "000000000001", "kind": "explode",
                                             "reason": "r"}).encode(), 400, "must be one of"),
    ("POST", "/api/v1/commands", json.dumps({"meter": "999999999999", "kind": "trip",
                                             "reason": "r"}).encode(), 404, "unknown meter"),
    ("POST", "/api/v1/commands", json.dumps({"meter": ["1"], "kind": "trip", "reason": "r"}).encode(), 400,
     "must be a string"),
    ("POST", "/api/v1/commands/424242/cancel", json.dumps({"reason": "r"}).encode(), 404, "no command"),
    ("POST", "/api/v1/commands/abc/cancel", json.dumps({"reason": "r"}).encode(), 400, "not a number"),
    ("POST", "/api/v1/commands/1/cancel", json.dumps({"reason": 5}).encode(), 400, "must be a string"),
    # a reason is kept in the command and the audit log: at most 500 characters (was up to the 64 KiB body)
    ("POST", "/api/v1/commands", json.dumps({"meter": "000000000001", "kind": "trip",
                                             "reason": "r" * 501}).encode(), 400, "at most 500"),
    ("POST", "/api/v1/commands/1/cancel", json.dumps({"reason": "r" * 60_000}).encode(), 400, "at most 500"),
    ("POST", "/api/v1/adjustments", json.dumps({"account": "A1001", "amount": "1", "ref": "y3",
                                                "reason": "长" * 501}).encode(), 400, "at most 500"),
    ("GET", "/api/v1/accounts/NOPE", None, 404, "unknown account"),
    ("GET", "/api/v1/accounts/NOPE/ledger", None, 404, "unknown account"),
    ("GET", "/api/v1/meters/999999999999/readings", None, 404, "unknown meter"),
    ("GET", "/api/v1/meters/1/readings?since=yesterday", None, 400, "ISO 8601"),
    ("GET", "/api/v1/meters/1/readings?since=2026-11-23T00:00:00", None, 400, "time zone"),
    ("GET", "/api/v1/meters/1/readings?limit=-3", None, 400, "limit"),
    ("GET", "/api/v1/meters/1/readings?limit=ten", None, 400, "limit"),
    ("GET", "/api/v1/meters/1/readings?limit=%C2%B2", None, 400, "limit"),
    ("POST", "/api/v1/commands/%C2%B2/cancel", json.dumps({"reason": "r"}).encode(), 400, "not a number"),
    ("GET", "/api/v1/commands?state=bogus", None, 400, "must be one of"),
    ("GET", "/api/v1/anomalies?state=bogus", None, 400, "must be one of"),
    ("GET", "/api/v1/accounts?state=bogus", None, 400, "must be one of"),
]


@pytest.mark.parametrize(("method", "path", "raw", "status", "says"), BAD,
                         ids=[f"{m} {p[:40]} -> {s} {w}" for m, p, _, s, w in BAD])
def test_bad_input_is_4xx_and_writes_nothing(site: Site, method: str, path: str, raw: bytes | None, status: int,
                                              says: str) -> None:
    before = _snapshot(site)
    got, _, doc = site.call(method, path, role="admin", raw=raw)
    assert got == status, doc
    assert says in doc["error"]
    assert _snapshot(site) == before


# The amount grammar (issue #14): each refused the same on both endpoints, 422 with the reason, nothing written.
# Before: "1e3", "1_000", "１０", "+10", " 10", ".5", "10." and "92233720368547758.07" were applied (the last one
# drove the balance past int64 into a float); the others were 400.
AMOUNTS = [
    ("92233720368547758.07", "more than the limit of 1000000 yuan"), ("1e3", "exponent"), ("1E+2", "exponent"),
    ("1_000", "separators"), ("１０", "U+FF11 FULLWIDTH DIGIT ONE"), ("١٠", "U+0661 ARABIC-INDIC DIGIT ONE"),
    (" 10", "whitespace"), ("10 ", "whitespace"), (".5", "before the point"), ("10.", "after the point"),
    ("NaN", "NaN"), ("Infinity", "infinity"), ("0", "zero"), ("", "empty"), ("1" * 5000, "longer than 24"),
    ("1000000.01", "more than the limit"), (1000, "not a JSON number"), (10.5, "not a floating-point number"),
    (1e3, "not a floating-point number"), (True, "not a true/false"), (None, "not a null"),
]


@pytest.mark.parametrize("endpoint", ["payments", "adjustments"])
@pytest.mark.parametrize(("amount", "says"), AMOUNTS, ids=[repr(a)[:24] for a, _ in AMOUNTS])
def test_an_amount_outside_the_grammar_is_422_and_writes_nothing(site: Site, endpoint: str, amount: Any,
                                                                  says: str) -> None:
    body = {"account": "A1001", "amount": amount, "ref": f"bad-{next(_addresses)}"}
    if endpoint == "adjustments":
        body["reason"] = "test"
        says = says.replace("1000000 yuan", "1000000 yuan (set by [prepaid] max_adjustment)")
    before = _snapshot(site)
    status, _, doc = site.call("POST", f"/api/v1/{endpoint}", role="operator", body=body)
    assert status == 422, doc
    assert doc["error"].startswith("field amount ") and says in doc["error"], doc
    assert len(doc["error"]) < 200
    assert _snapshot(site) == before


@pytest.mark.parametrize("amount", ["+10", "-0", "-5"])
def test_a_payment_with_a_sign_is_422(site: Site, amount: str) -> None:
    before = _snapshot(site)
    status, _, doc = site.call("POST", PAY, role="operator", body={"account": "A1001", "amount": amount, "ref": "s1"})
    assert status == 422 and "takes no sign" in doc["error"] and _snapshot(site) == before


def test_an_adjustment_may_carry_either_sign_and_is_stored_to_the_fen(site: Site) -> None:
    for amount, delta in (("+2.5", Decimal("2.50")), ("-2.50", Decimal("-2.50"))):
        with ControlStore(site.data_dir) as control:
            start = control.balance("A1001")
        status, _, doc = site.call("POST", "/api/v1/adjustments", role="operator",
                                   body={"account": "A1001", "amount": amount, "ref": f"sign-{amount}", "reason": "t"})
        assert status == 201 and doc["balance"] == str(start + delta)


def test_the_openapi_document_states_the_amount_grammar(site: Site) -> None:
    schemas = site.openapi["components"]["schemas"]
    pay, adjust = schemas["PaymentRequest"]["properties"]["amount"], schemas["AdjustmentRequest"]["properties"]["amount"]
    assert pay["pattern"] == r"^[0-9]+(\.[0-9]{1,2})?$" and adjust["pattern"] == r"^[+-]?[0-9]+(\.[0-9]{1,2})?$"
    assert pay["maxLength"] == adjust["maxLength"] == 24


def test_chunked_oversize_body_is_413(site: Site) -> None:
    before = _snapshot(site)
    conn = http.client.HTTPConnection(site.base.removeprefix("http://"), timeout=10)
    chunks = (b'{"account": "A1001", "amount": "1", "ref": "' if i == 0 else b"x" * 8192 for i in range(12))
    conn.request("POST", PAY, body=chunks, encode_chunked=True,
                 headers={"Authorization": f"Bearer {site.tokens['admin']}", "Transfer-Encoding": "chunked"})
    resp = conn.getresponse()
    assert resp.status == 413 and "64" in json.loads(resp.read())["error"]
    conn.close()
    assert _snapshot(site) == before


def test_unknown_route_and_method_are_json(site: Site) -> None:
    for method, path, status in (("GET", "/api/v1/nothing", 404), ("DELETE", "/api/v1/meters", 405)):
        req = urllib.request.Request(site.base + path, method=method,
                                     headers={"Authorization": f"Bearer {site.tokens['admin']}"})
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=10)
        assert exc.value.code == status and "error" in json.loads(exc.value.read())


# --- tokens ------------------------------------------------------------------------------------


def test_tokens_are_stored_hashed(site: Site) -> None:
    files = b"".join(p.read_bytes() for p in site.data_dir.iterdir() if p.is_file())
    for secret in site.tokens.values():
        token_id, _, random_part = secret.partition(".")
        assert secret.encode() not in files and random_part.encode() not in files
    with sqlite3.connect(site.data_dir / STATE_FILE) as conn:
        rows = dict(conn.execute("SELECT id, hash FROM api_tokens").fetchall())
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in rows.values())
    with TokenStore(site.data_dir) as tokens:
        assert tokens.verify(site.tokens["operator"])[1:] == ("operator-user", Role.OPERATOR)
        assert tokens.verify(site.tokens["revoked"]) is None
        listed = {t.name: t for t in tokens.list()}
    assert listed["gone"].revoked is not None and listed["admin-user"].revoked is None


def test_docs_list_every_endpoint() -> None:
    from meterd.api.app import ENDPOINTS

    text = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    missing = [f"{ep.method} {ep.path}" for ep in ENDPOINTS if f"`{ep.method} {ep.path}`" not in text]
    assert not missing, f"docs/api.md does not list {missing}"
