"""``GET /api/v1/accounts`` without ``limit`` answers every account, as documented, but streams them a
page at a time (a city's 100,000 accounts were one 27 MB list built in memory, 190 MiB of peak RSS,
before the first byte left); with ``limit`` it answers one page, and a page reads only its own
accounts' meters (it read the whole account_meters table: 333 ms a page at 100,000 accounts).
Real server, both backends."""

from __future__ import annotations

import http.client
import json
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlsplit

import pytest
from test_api import serve

from meterd.api import TokenStore, create_app
from meterd.api import app as api_app
from meterd.api.schemas import account_doc
from meterd.control.state import AccountSpec, ControlStore

NOW = datetime(2026, 12, 8, 2, 0, tzinfo=UTC)
N = 2_345


def _get(base: str, path: str, token: str) -> tuple[int, dict[str, str], bytes]:
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    r = conn.getresponse()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


@pytest.fixture
def site(state_where, monkeypatch):
    monkeypatch.setattr(api_app, "STREAM_PAGE", 500)  # five pages and a short one
    specs = [AccountSpec(f"A{i:05d}", "res", {f"{i:012d}": Decimal(1)} | ({f"{i + 50_000:012d}": Decimal(40)}
                                                                        if i % 7 == 0 else {}),
                         area=f"TA-{i % 3}", opening_balance=Decimal(i % 11)) for i in range(N)]
    with ControlStore(state_where) as control:
        control.upsert_accounts(specs, actor="test", now=NOW)
    with TokenStore(state_where) as tokens:
        token = tokens.create("viewer", "viewer", NOW)[1]
    with serve(create_app(state_where, clock=lambda: NOW)) as base:
        yield base, token, state_where


def test_every_account_streams_in_order_as_the_store_lists_them(site, monkeypatch) -> None:
    base, token, where = site
    asked: list[int | None] = []
    real = ControlStore.accounts

    def accounts(self, **kwargs):  # type: ignore[no-untyped-def]
        asked.append(kwargs.get("limit"))
        return real(self, **kwargs)

    monkeypatch.setattr(ControlStore, "accounts", accounts)
    status, headers, body = _get(base, "/api/v1/accounts", token)
    monkeypatch.undo()
    assert status == 200 and headers["content-type"] == "application/json"
    assert headers.get("transfer-encoding") == "chunked" and "content-length" not in headers
    assert asked == [500] * (N // 500 + 1)  # a page at a time, never the whole list
    with ControlStore(where) as control:
        expected = [account_doc(a, NOW) for a in control.accounts()]
    assert len(expected) == N
    assert json.loads(body) == json.loads(json.dumps(expected))
    assert [a["meters"] for a in json.loads(body)[:8:7]] == [{"000000000000": "1", "000000050000": "40"},
                                                            {"000000000007": "1", "000000050007": "40"}]


def test_a_filter_or_a_start_streams_only_what_it_selects(site) -> None:
    base, token, where = site
    _, _, body = _get(base, "/api/v1/accounts?area=TA-1&after=A01000", token)
    got = json.loads(body)
    assert got and all(a["area"] == "TA-1" and a["account"] > "A01000" for a in got)
    with ControlStore(where) as control:
        assert [a["account"] for a in got] == [a.account for a in control.accounts(area="TA-1", after="A01000")]
    _, _, none = _get(base, "/api/v1/accounts?area=nowhere", token)
    assert none == b"[]"
    status, _, bad = _get(base, "/api/v1/accounts?state=bogus", token)  # refused before any byte
    assert status == 400 and "must be one of" in json.loads(bad)["error"]


def test_pages_by_limit_join_to_the_whole_list_with_their_own_meters(site) -> None:
    base, token, _ = site
    _, _, whole = _get(base, "/api/v1/accounts", token)
    pages, after = [], ""
    while True:
        _, _, body = _get(base, f"/api/v1/accounts?limit=400{'&after=' + after if after else ''}", token)
        page = json.loads(body)
        if not page:
            break
        pages += page
        after = page[-1]["account"]
    assert pages == json.loads(whole)


def test_a_page_reads_only_its_own_accounts_meters(state_where, monkeypatch) -> None:
    with ControlStore(state_where) as control:
        sql: list[str] = []
        real = control._read

        def read(query, *args, **kwargs):  # type: ignore[no-untyped-def]
            sql.append(query)
            return real(query, *args, **kwargs)

        monkeypatch.setattr(control, "_read", read)
        control.upsert_accounts([AccountSpec(f"A{i}", "res", {f"{i:012d}": Decimal(1), f"{i + 900:012d}": Decimal(2)},
                                             opening_balance=Decimal(0)) for i in range(100, 700)],
                                actor="test", now=NOW)
        page = control.accounts(after="A150", limit=510)
        assert len(page) == 510 and page[0].account == "A151"
        assert all(a.meters == {f"{int(a.account[1:]):012d}": Decimal(1),
                                f"{int(a.account[1:]) + 900:012d}": Decimal(2)} for a in page)
        assert control.accounts(names=["A101", "A650"], limit=600)[1].meters == {"000000000650": Decimal(1),
                                                                              "000000001550": Decimal(2)}
        meters = [q for q in sql if "FROM account_meters" in q]
        assert len(meters) == 2 and all("WHERE" in q for q in meters), meters  # not the whole table
