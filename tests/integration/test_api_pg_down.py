"""The API over PostgreSQL while the database is down: 503 with Retry-After, within the pool's wait,
never a 500 or a hang; and answers again by itself once the server is back."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime

from test_api import serve

from meterd.api import TokenStore, create_app
from meterd.storage.database import Database


def _get(base: str, path: str, token: str) -> tuple[int, dict, dict]:
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, dict(reply.headers), json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def test_the_api_answers_503_while_postgresql_is_down_and_recovers_by_itself():
    import pgserver

    server = pgserver.PgServer()
    try:
        db = Database(server.new_database(), pool_size=2, timeout=2.0)
        now = datetime(2026, 12, 7, tzinfo=UTC)
        with TokenStore(db) as tokens:
            secret = tokens.create("ops", "viewer", now)[1]
        with serve(create_app(db, clock=lambda: datetime.now(UTC))) as base:
            assert _get(base, "/api/v1/accounts", secret)[0] == 200
            server.stop()
            started = time.monotonic()
            status, headers, body = _get(base, "/api/v1/accounts", secret)
            assert status == 503 and "unreachable" in body["error"] and headers.get("retry-after") == "10"
            assert time.monotonic() - started < 15
            server.start()
            deadline = time.monotonic() + 30
            while (status := _get(base, "/api/v1/accounts", secret)[0]) != 200 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert status == 200
        db.pool().close()
    finally:
        server.close()
