"""The console's read-only endpoints (``meterd.api.console``) through a real server, over the site
that ``test_api_views`` seeds (a bus, a DTU and an MQTT terminal, six meters, an area, two
accounts): who am I, search with short forms, every list paged by cursor and each item seen once,
the meter, account, area and terminal pages against what was seeded, and the roles."""

from __future__ import annotations

import tomllib
from decimal import Decimal

import pytest
from test_api import ROLES, Site, serve
from test_api_views import METERS, NOW, SITE, TODAY, _seed, at

from meterd.api import create_app
from meterd.config.loader import parse_config
from meterd.control.state import ControlStore


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("console-api")
    data_dir, billing = root / "data", root / "billing"
    data_dir.mkdir()
    meters = "\n".join(f'[[meters]]\naddress = "{a}"\nchannel = "{ch}"' for a, ch in METERS.items())
    config = parse_config(tomllib.loads(SITE.format(data=data_dir, billing=billing, meters=meters)),
                          source="console.toml")
    tokens = _seed(data_dir)
    with ControlStore(data_dir) as control:  # five payments: a ledger of six entries to page through
        for n in range(1, 6):
            control.pay("A1", Decimal(f"{n}0.00"), f"R{n}", actor="counter", now=NOW)
    with serve(create_app(data_dir, clock=lambda: NOW, config=config)) as base:
        yield Site(data_dir, base, tokens)


PATHS = ("/api/v1/whoami", "/api/v1/search?q=2", "/api/v1/console/meters", "/api/v1/console/meters/1",
         "/api/v1/console/meters/1/curve", "/api/v1/console/meters/1/events", "/api/v1/console/commands",
         "/api/v1/console/accounts", "/api/v1/console/accounts/A1", "/api/v1/console/accounts/A1/ledger",
         "/api/v1/console/areas", "/api/v1/console/areas/TA-1", "/api/v1/console/terminals/DTU-0001")


@pytest.mark.parametrize("role", (None, *ROLES))
@pytest.mark.parametrize("path", PATHS)
def test_every_console_page_is_a_viewers(site: Site, path: str, role: str | None) -> None:
    status, _, doc = site.call("GET", path, role=role)
    assert status == (401 if role is None else 200), doc


def test_whoami_names_the_token_and_its_roles(site: Site) -> None:
    _, _, me = site.call("GET", "/api/v1/whoami", role="operator")
    assert me["name"] == "operator-user" and me["role"] == "operator"
    assert me["roles"] == ["viewer", "technician", "operator"]


def test_search_finds_short_forms_names_terminals_and_areas(site: Site) -> None:
    def found(q: str) -> list[tuple[str, str]]:
        status, _, doc = site.call("GET", f"/api/v1/search?q={q}", role="viewer")
        assert status == 200, doc
        return [(r["type"], r["id"]) for r in doc["results"]]

    assert found("2")[0] == ("meter", "000000000002")  # the last digits
    assert found("000000000005") == [("meter", "000000000005")]
    assert ("account", "A1") in found("a1")  # accounts, case aside
    assert found("DTU-0001") == [("terminal", "DTU-0001")] and ("terminal", "T-0001") in found("term1")
    assert found("TA-1") == [("area", "TA-1")]
    assert found("nothing-like-it") == []
    _, _, doc = site.call("GET", "/api/v1/search?q=2", role="viewer")
    assert doc["results"][0]["detail"] == "bus1 · A1"  # the meter's channel and account
    assert site.call("GET", "/api/v1/search?q=", role="viewer")[0] == 400
    # % and _ are searched for as typed, not as LIKE's wildcards (every account matched them)
    assert found("%25") == [] and found("_") == [] and found("a%25") == []


def test_meters_page_by_cursor_each_once(site: Site) -> None:
    seen, cursor, pages = [], None, 0
    while True:
        path = "/api/v1/console/meters?limit=4" + (f"&cursor={cursor}" if cursor else "")
        _, _, doc = site.call("GET", path, role="viewer")
        seen += [m["address"] for m in doc["meters"]]
        pages += 1
        cursor = doc["next"]
        if cursor is None:
            break
    assert seen == sorted(METERS) and pages == 2
    _, _, dtu = site.call("GET", "/api/v1/console/meters?channel=dtu1", role="viewer")
    assert [m["address"] for m in dtu["meters"]] == ["000000000005"] and dtu["next"] is None
    _, _, owned = site.call("GET", "/api/v1/console/meters?limit=2&cursor=000000000001", role="viewer")
    assert [(m["address"], m["account"]) for m in owned["meters"]] == [("000000000002", "A1"), ("000000000003", "A2")]
    assert site.call("GET", "/api/v1/console/meters?limit=0", role="viewer")[0] == 400


def test_the_meter_page(site: Site) -> None:
    _, _, four = site.call("GET", "/api/v1/console/meters/4", role="viewer")
    assert four["address"] == "000000000004" and four["channel"] == "bus1" and four["account"] is None
    assert four["attempts_24h"]["by_outcome"] == {"timeout": 1}
    assert four["attempts_24h"]["last_failure"]["detail"] == "no answer"
    _, _, two = site.call("GET", "/api/v1/console/meters/000000000002", role="viewer")
    assert two["account"]["account"] == "A1" and two["attempts_24h"]["by_outcome"] == {"ok": 1}
    _, _, five = site.call("GET", "/api/v1/console/meters/5", role="viewer")
    assert five["terminal"]["id"] == "DTU-0001"
    assert site.call("GET", "/api/v1/console/meters/999999999999", role="viewer")[0] == 404


def test_a_meters_curve_over_a_range(site: Site) -> None:
    since, until = at(TODAY, 0).isoformat(), at(TODAY, 1).isoformat()
    _, _, doc = site.call("GET", f"/api/v1/console/meters/2/curve?since={since.replace('+', '%2B')}"
                                 f"&until={until.replace('+', '%2B')}", role="viewer")
    assert doc["step_seconds"] == 60  # an hour: minute buckets
    # 00:00 1.5, 00:15 1.5, 00:16 1.0, 00:20 2.0, 00:30 1.5, 00:45 1.5 (no 00:15 sample for meter 2: see the seed)
    assert [p["kw"] for p in doc["power"]] == [1.5, 1.0, 2.0, 1.5, 1.5]
    assert site.call("GET", f"/api/v1/console/meters/2/curve?since={until.replace('+', '%2B')}"
                            f"&until={since.replace('+', '%2B')}", role="viewer")[0] == 400


def test_the_account_page_and_its_ledger_paged_with_the_balance_after_each(site: Site) -> None:
    _, _, doc = site.call("GET", "/api/v1/console/accounts/A1?days=2", role="viewer")
    assert doc["account"]["balance"] == "150.00" and doc["series"][-1]["balance"] == "150.00"
    assert [m["address"] for m in doc["meters"]] == ["000000000002"]
    entries, cursor = [], None
    while True:
        _, _, page = site.call("GET", "/api/v1/console/accounts/A1/ledger?limit=4" + (f"&cursor={cursor}" if cursor
                                                                                          else ""), role="viewer")
        entries += page["entries"]
        cursor = page["next"]
        if cursor is None:
            break
    assert [e["balance"] for e in entries] == ["150.00", "100.00", "60.00", "30.00", "10.00", "0.00"]
    _, _, payments = site.call("GET", "/api/v1/console/accounts/A1/ledger?kind=payment&limit=2", role="viewer")
    assert [(e["amount"], e["balance"]) for e in payments["entries"]] == [("50.00", "150.00"), ("40.00", "100.00")]
    assert payments["next"] is not None
    _, _, tripped = site.call("GET", "/api/v1/console/accounts?state=tripped", role="viewer")
    assert tripped == {"accounts": [], "next": None}
    assert site.call("GET", "/api/v1/console/accounts/NOPE", role="viewer")[0] == 404


def test_the_area_and_terminal_pages(site: Site) -> None:
    _, _, area = site.call("GET", "/api/v1/console/areas/TA-1?days=2&day=2026-11-23", role="viewer")
    first = area["series"][0]
    assert (first["start"], first["supply"], first["sales"], first["rate"]) == ("2026-11-22", "100", "85", "15.00")
    assert {(p["meter"], p["role"]) for p in area["points"]} == {
        ("000000000001", "supply"), ("000000000002", "sales"), ("000000000003", "sales")}
    assert site.call("GET", "/api/v1/console/areas/NOPE", role="viewer")[0] == 404
    _, _, dtu = site.call("GET", "/api/v1/console/terminals/DTU-0001", role="viewer")
    assert dtu["online"] is True and [m["address"] for m in dtu["meters_page"]] == ["000000000005"]
    assert dtu["intervals"] == [{"start": at(TODAY, 9).astimezone(dtu_zone()).isoformat(), "end": None}]
    _, _, mqtt = site.call("GET", "/api/v1/console/terminals/term1", role="viewer")  # by channel too
    assert mqtt["id"] == "T-0001" and mqtt["online"] is False and len(mqtt["intervals"]) == 1
    assert site.call("GET", "/api/v1/console/terminals/NOPE", role="viewer")[0] == 404


def dtu_zone():  # type: ignore[no-untyped-def]
    from meterd.clock import CST

    return CST


def test_console_paths_are_in_the_openapi_document(site: Site) -> None:
    _, _, doc = site.call("GET", "/api/v1/openapi.json")
    for path in ("/api/v1/whoami", "/api/v1/search", "/api/v1/console/meters/{address}",
                 "/api/v1/console/accounts/{account}/ledger", "/api/v1/console/terminals/{terminal}"):
        assert doc["paths"][path]["get"]["x-role"] == "viewer", path
