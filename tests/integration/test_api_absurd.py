"""Inputs absurd in size, over real HTTP: each is refused with a 4xx that names the parameter and
its limit, is read no further than the limit, and writes nothing.

Before: a ``limit`` or ``days`` of 5,000 digits answered 500 (``int()`` refuses that many); a
100 MB body was answered 413 and then read to its end anyway (1 GB in 4.4 s); a ref of 60 KB was
stored with its payment and a token named with 60 KB; a 1 MB query string got uvicorn's plain
``400 Invalid HTTP request received.``.  The absurd report periods are in
``test_api_absurd_views.py``.
"""

from __future__ import annotations

import contextlib
import json
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from test_api import PAY, Site, _snapshot, serve, site  # noqa: F401 -- site is the fixture

from meterd.api import create_app
from meterd.api.guard import MAX_HEAD, ConnectionGuard

DIGITS = "9" * 5_000  # more than Python converts to an int (4,300)


@pytest.mark.parametrize(("path", "says"), [
    (f"/api/v1/meters?limit={DIGITS}", "limit="),
    (f"/api/v1/meters/1/readings?limit={DIGITS}", "from 1 to 10000"),
    (f"/api/v1/console/meters?limit={DIGITS}", "from 1 to 500"),
    (f"/api/v1/alarms?limit={DIGITS}", "from 1 to 1000"),
    (f"/api/v1/console/accounts/A1001?days={DIGITS}", "days="),
    (f"/api/v1/meters/1/readings?limit=000000000000000000000000000000{DIGITS}", "from 1 to 10000"),
])
def test_a_number_of_thousands_of_digits_is_400_naming_the_parameter(site: Site, path: str, says: str) -> None:  # noqa: F811
    status, _, doc = site.call("GET", path, role="admin")
    assert status == 400, doc
    assert says in doc["error"] and "characters)" in doc["error"]
    assert len(doc["error"]) < 200  # the 5,000 digits are not echoed back


def test_leading_zeros_still_make_a_small_number(site: Site) -> None:  # noqa: F811
    status, _, doc = site.call("GET", "/api/v1/meters?limit=0000000000000000000002", role="viewer")
    assert status == 200 and len(doc) == 2


@pytest.mark.parametrize(("path", "body", "says"), [
    (PAY, {"account": "A1001", "amount": "1", "ref": "r" * 201}, "field ref is 201 characters, at most 200"),
    (PAY, {"account": "A" * 60_000, "amount": "1", "ref": "x"}, "field account is 60000 characters, at most 200"),
    ("/api/v1/adjustments", {"account": "A1001", "amount": "1", "ref": "r" * 60_000, "reason": "x"},
     "at most 200"),
    ("/api/v1/tokens", {"name": "n" * 65, "role": "viewer"}, "field name is 65 characters, at most 64"),
    ("/api/v1/commands", {"meter": "1" * 60_000, "kind": "trip", "reason": "x"}, "at most 200"),
    ("/api/v1/meters/1/read", {"quantities": ["q" * 201]}, "a string of 201 characters, at most 200"),
    ("/api/v1/accounts/A1001/activate", {"opening_balance": "1", "ref": "r" * 201}, "at most 200"),
])
def test_a_body_field_absurd_in_size_is_400_and_writes_nothing(site: Site, path: str, body: Any,  # noqa: F811
                                                                 says: str) -> None:
    before = _snapshot(site)
    status, _, doc = site.call("POST", path, role="admin", body=body)
    assert status == 400, doc
    assert says in doc["error"]
    assert _snapshot(site) == before


def test_a_json_number_of_thousands_of_digits_is_named(site: Site) -> None:  # noqa: F811
    raw = b'{"account": "A1001", "ref": "big", "amount": ' + DIGITS.encode() + b"}"
    before = _snapshot(site)
    status, _, doc = site.call("POST", PAY, role="admin", raw=raw)
    assert status == 400
    assert doc["error"] == "request body holds a number of 5000 digits, at most 100"
    assert _snapshot(site) == before


def _send_absurd_body(base: str, head: str, total: int) -> tuple[int, bytes]:
    """Sends ``head`` and then up to ``total`` bytes of body; how many went out before the server
    closed, and what it answered."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sent, chunk = 0, b"x" * (1 << 20)
    try:
        sock.sendall(head.encode())
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass  # closed by the server: it read no further
    answer = b""
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            part = sock.recv(65536)
            if not part:
                break
            answer += part
    sock.close()
    return sent, answer


@pytest.mark.parametrize(("method", "path", "role"), [
    ("POST", PAY, "operator"),
    ("POST", "/api/v1/alarms/1/close", "operator"),
    ("GET", "/api/v1/overview", "viewer"),  # a body where none is read
    ("POST", PAY, None),  # refused for the token, before the body
])
def test_a_100_mb_body_is_answered_at_once_and_read_no_further(site: Site, method: str, path: str,  # noqa: F811
                                                                role: str | None) -> None:
    total = 100 << 20
    auth = f"Authorization: Bearer {site.tokens[role]}\r\n" if role else ""
    head = (f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
            f"Content-Length: {total}\r\n\r\n")
    before = _snapshot(site)
    sent, answer = _send_absurd_body(site.base, head, total)
    status = 401 if role is None else 413
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    assert b"connection: close" in answer.lower()
    assert sent < total // 2  # the server closed: the rest was never read (before: all 100 MB were)
    assert _snapshot(site) == before


def _guarded(app: Any) -> contextlib.AbstractContextManager[str]:
    """``app`` as the daemon serves it: uvicorn with meterd's guarded h11 protocol."""
    return serve(app, log_level="critical", http=ConnectionGuard().protocol(), h11_max_incomplete_event_size=MAX_HEAD)


@pytest.mark.parametrize("path", ["/api/v1/accounts/" + "A" * 20_000, "/api/v1/meters?after=" + "a" * 9_000,
                                  "/api/v1/meters?" + "&".join(f"p{i}=1" for i in range(5_000))])
def test_a_path_and_query_over_8_kib_is_414_naming_the_limit(site: Site, path: str) -> None:  # noqa: F811
    status, _, doc = site.call("GET", path, role="viewer")
    assert status == 414
    assert doc["error"].startswith("request path and query string are ") and doc["error"].endswith(", at most 8192")


def test_a_request_head_over_16_kib_in_pieces_is_431_naming_the_limit(site: Site) -> None:  # noqa: F811
    with _guarded(create_app(site.data_dir, clock=lambda: datetime.now(UTC))) as base:
        head = f"GET /api/v1/meters?after={'a' * (1 << 20)} HTTP/1.1\r\nHost: x\r\n\r\n"
        _, answer = _send_absurd_body(base, head, 0)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        doc = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert doc == {"error": "request line and headers over 16 KiB (16384 bytes): a path, query string or "
                                "header that long is refused"}
        # the server goes on serving
        _, answer = _send_absurd_body(base, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 0)
        assert answer.startswith(b"HTTP/1.1 200 ")


def test_a_meters_attempts_since_1970_read_only_the_newest_it_answers(state_where: Any) -> None:
    """``GET /api/v1/meters/{a}/attempts?since=1970-...&limit=200`` read every attempt of the meter
    and kept the last 200 (600,000 attempts: 4.6 s, the process +364 MiB); now the store reads
    only the newest ``limit``, still oldest first, on both backends."""
    from meterd.storage import open_store
    from meterd.storage.sqlite import Attempt

    at = datetime(2026, 11, 23, tzinfo=UTC)
    with open_store(state_where) as store:
        store.record_attempts([Attempt("000000000001", "line1", "00010000", at + timedelta(seconds=i), "ok", 0.1,
                                       str(i)) for i in range(50)]
                              + [Attempt("000000000002", "line1", "00010000", at + timedelta(seconds=99), "ok")])
        newest = store.attempts(meter="000000000001", since=datetime(1970, 1, 1, tzinfo=UTC), last=3)
        assert [a.detail for a in newest] == ["47", "48", "49"]
        assert len(store.attempts(meter="000000000001", last=100)) == 50
        assert len(store.attempts(meter="000000000001")) == 50


def test_the_newest_entries_of_a_ledger_are_the_tail_of_the_whole_with_the_same_balances(site: Site) -> None:  # noqa: F811
    """``?limit=`` reads only the newest entries (10 of 200,000 read every one: 3 s, +250 MiB) and
    answers what the tail of the whole ledger says, running balances and all."""
    for i in range(5):
        site.call("POST", PAY, role="operator", body={"account": "A1001", "amount": f"{i + 1}.25", "ref": f"tail-{i}"})
    _, _, whole = site.call("GET", "/api/v1/accounts/A1001/ledger", role="viewer")
    assert len(whole["entries"]) >= 6
    for limit in (1, 3, len(whole["entries"]), 10_000):
        _, _, tail = site.call("GET", f"/api/v1/accounts/A1001/ledger?limit={limit}", role="viewer")
        assert tail == {**whole, "entries": whole["entries"][-limit:]}


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_a_little_over_64_kib_gets_its_413_and_the_connection_serves_on(site: Site, chunked: bool) -> None:  # noqa: F811
    """Up to MAX_DRAIN over the limit is read and dropped before the 413, so the client reads the
    answer (not a reset) and may send its next request on the same connection."""
    import http.client

    conn = http.client.HTTPConnection(site.base.removeprefix("http://"), timeout=10)
    auth = {"Authorization": f"Bearer {site.tokens['operator']}"}
    body = b'{"account": "A1001", "amount": "1", "ref": "' + b"x" * 200_000 + b'"}'
    if chunked:
        conn.request("POST", PAY, body=(body[i:i + 8192] for i in range(0, len(body), 8192)), encode_chunked=True,
                     headers={**auth, "Transfer-Encoding": "chunked"})
    else:
        conn.request("POST", PAY, body=body, headers=auth)
    resp = conn.getresponse()
    assert resp.status == 413 and "64 KiB" in json.loads(resp.read())["error"]
    conn.request("GET", "/api/v1/accounts/A1001", headers=auth)
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["account"] == "A1001"
    conn.close()
