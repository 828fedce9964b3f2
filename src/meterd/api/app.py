"""The HTTP API: JSON under ``/api/v1``, Bearer tokens with roles, and its own OpenAPI document.

Strategy: one table, :data:`ENDPOINTS`, names every operation once -- method, path, the least
role, query parameters, request body and response schemas -- and both the Starlette routes and
``/api/v1/openapi.json`` are built from it, so the document cannot drift from what is served.

Requests are checked in this order, and the first failure answers:

0. the size of the path and query (over :data:`MAX_TARGET`: 414; see docs/api.md "Size limits");
1. the token (missing, malformed, unknown or revoked: 401 with ``WWW-Authenticate: Bearer``);
2. the role (403);
3. the body (over 64 KiB on any endpoint: 413, and the connection is closed unread; not JSON, not an object, a missing field or a wrong type: 400) and
   query parameters (400); an amount outside the amount grammar or over its limit (422, below);
4. the subject (unknown meter, account or command: 404);
5. the store's own rules (a refused command: 422; a command no longer queued: 409).

A date or time in a query that is no date is 400; one outside 1970-01-01 .. 2099-12-31 is 422.

Nothing is written before step 5, so a 4xx from steps 1-4 leaves the database as it was.  Money
travels as strings ("88.50"), never floats: an ``amount`` must be a JSON string by the one amount
grammar (:mod:`meterd.control.amounts`: ASCII digits, at most two decimals, a sign only on an
adjustment, at most ``[prepaid] max_payment`` / ``max_adjustment``); anything else -- a JSON
number, ``true``, ``"1e3"``, ``"+10"`` for a payment -- is 422 with the reason.  A JSON number
is refused even when it looks exact, because many clients have turned it into a binary float
before it is sent.  Blocking store calls run in the thread pool.  The
secret in ``Authorization`` is never logged; an audit row names the token by its id.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import psycopg
from psycopg_pool import PoolTimeout
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from meterd.analytics.anomalies import AnomalyStore
from meterd.analytics.outages import OutageStore
from meterd.analytics.views import curve_meters, curve_points, energy_rows, lineloss_reports, parse_period
from meterd.api.alarms import AlarmWatch, watching
from meterd.api.alarms import endpoints as alarm_endpoints
from meterd.api.live import LiveNode
from meterd.api.reports import REPORT_QUERY, report_xlsx
from meterd.api.schemas import (
    ACCOUNT_STATES,
    COMMAND_STATES,
    SCHEMAS,
    STR,
    TIME,
    account_doc,
    anomaly_doc,
    array,
    attempt_doc,
    command_doc,
    config_doc,
    iso,
    job_kind,
    ledger_doc,
    meter_doc,
    outage_doc,
    reading_doc,
    ref,
)
from meterd.api.tokens import Role, TokenStore
from meterd.checking import SHOWN, shown, small_int
from meterd.clock import CST, Clock, local_date, zone_name
from meterd.config.durations import parse_step
from meterd.control.amounts import AmountError, AmountLimits, amount_text, parse_adjustment, parse_payment
from meterd.control.command_store import Command
from meterd.control.engine import queue_manual
from meterd.control.model import CommandKind
from meterd.control.state import ControlStore, parse_opening
from meterd.errors import ConfigError, LedgerError, MeterdError, ReadRefusedError, StorageFullError
from meterd.logthrottle import LogThrottle
from meterd.readings import address_key
from meterd.storage import open_store
from meterd.storage.database import Database, Location
from meterd.storage.quality import QualityStore
from meterd.storage.sqlite import MeterRecord
from meterd.storage.statedb import disk_full

log = logging.getLogger(__name__)
_ERROR_LOG = LogThrottle()  # a failing request is logged once a minute per kind, with a count

MAX_BODY: Final = 64 * 1024
MAX_LIMIT: Final = 10_000
#: ``GET /api/v1/energy?split=month|quarter`` covers at most this many days (ten years, as a report):
#: each sub-period is a pass over every metering point, and 1970..2099 by month took 15 s of a
#: worker thread at 10,000 meters.
MAX_SPLIT_DAYS: Final = 3653
#: The most bytes of a request's path and query string together (414 over it).  h11 holds a request
#: head to 16 KiB only while it arrives in pieces (meterd.api.guard: 431); one that comes in a single
#: read of up to 256 KiB used to reach the handlers whole, and a 20,000-character account name was
#: echoed back in a 20 KB 404.
MAX_TARGET: Final = 8 * 1024
#: Bytes of an unread body read and dropped before an early answer (a 413, a 401, an endpoint that
#: takes no body) so that the client reads the answer rather than a reset; past it, or when more is
#: announced, the connection is closed unread.
MAX_DRAIN: Final = 1024 * 1024
#: The most digits of an integer in a request body (no field takes a number over 18 digits).
MAX_DIGITS: Final = 100
#: Accounts read per page when ``GET /api/v1/accounts`` streams every account.
STREAM_PAGE: Final = 1_000


def _json_bytes(doc: Any) -> bytes:
    """``doc`` as :class:`JSONResponse` renders it."""
    return json.dumps(doc, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


class ApiError(MeterdError):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


@dataclass(frozen=True, slots=True)
class Caller:
    token_id: str
    name: str
    role: Role


# --- input -------------------------------------------------------------------------------------


def _json_int(text: str) -> int:
    """A JSON integer of the body; one over :data:`MAX_DIGITS` digits is refused by name (Python's
    own refusal, past 4,300 digits, read "use sys.set_int_max_str_digits()")."""
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ApiError(400, f"request body holds a number of {len(text.lstrip('-'))} digits, at most {MAX_DIGITS}")
    return int(text)


def _declared_length(request: Request) -> None:
    """400 for a Content-Length that is no number, 413 for one over :data:`MAX_BODY` (before a byte
    of the body is read)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise ApiError(400, "Content-Length is not a number")
        if len(declared.lstrip("0")) > len(str(MAX_BODY)) or int(declared) > MAX_BODY:
            raise ApiError(413, f"request body over 64 KiB ({MAX_BODY} bytes)")


async def json_object(request: Request, schema: str, *, empty_ok: bool = False) -> dict[str, Any]:
    """The JSON object body, at most :data:`MAX_BODY` bytes, with only the fields of ``schema`` and
    every required one (an empty body is ``{}`` where ``empty_ok``); the values are the caller's
    to check (:func:`_body` here, ``meterd.api.alarms``)."""
    _declared_length(request)
    raw = bytearray()
    while True:  # the ASGI messages themselves: _drained needs to know whether the last one has come
        message = await request.receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        raw += message.get("body", b"")
        if not message.get("more_body", False):
            request.state.body_read = True
            break
        if len(raw) > MAX_BODY:
            raise ApiError(413, f"request body over 64 KiB ({MAX_BODY} bytes)")
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"request body over 64 KiB ({MAX_BODY} bytes)")
    if empty_ok and not raw.strip():
        return {}
    try:
        doc = json.loads(raw.decode("utf-8"), parse_int=_json_int)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: deep nesting
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "request body must be a JSON object")
    spec = SCHEMAS[schema]
    unknown = sorted(set(doc) - set(spec["properties"]))
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}")
    for name in spec["required"]:
        if name not in doc:
            raise ApiError(400, f"missing field: {name}")
    return doc


async def _body(request: Request, schema: str) -> dict[str, Any]:
    """The JSON object body (:func:`json_object`) with the fields of ``schema``: each required,
    each a string (and in its enum), no others."""
    doc = await json_object(request, schema)
    spec = SCHEMAS[schema]
    for name, value in doc.items():
        prop = spec["properties"][name]
        if prop.get("type") == "array":  # a list of non-empty strings
            if not isinstance(value, list) or not value:
                raise ApiError(400, f"field {name} must be a non-empty list of strings")
            if len(value) > prop.get("maxItems", 100):
                raise ApiError(400, f"field {name} has {len(value)} items, at most {prop.get('maxItems', 100)}")
            longest = prop["items"].get("maxLength")
            for item in value:
                if not isinstance(item, str) or not item.strip():
                    raise ApiError(400, f"field {name} must hold non-empty strings, not {repr(item)[:SHOWN]}")
                if longest is not None and len(item) > longest:
                    raise ApiError(400, f"field {name} holds a string of {len(item)} characters, at most {longest}")
            continue
        if name == "amount":  # the amount grammar has its own answer (422): Api._money
            continue
        if not isinstance(value, str):
            raise ApiError(400, f"field {name} must be a string, not {type(value).__name__}")
        if not value.strip():
            raise ApiError(400, f"field {name} must not be empty")
        longest = prop.get("maxLength")
        if longest is not None and len(value) > longest:
            raise ApiError(400, f"field {name} is {len(value)} characters, at most {longest}")
        enum = prop.get("enum")
        if enum and value not in enum:
            raise ApiError(400, f"field {name} must be one of {', '.join(enum)}, not {value!r}")
    return doc


def _amount(value: Any, limits: AmountLimits, *, adjustment: bool) -> Decimal:
    """The body's ``amount`` by the amount grammar, or 422 with the reason."""
    try:
        text = amount_text(value, what="field amount", numbers=False)
        return (parse_adjustment if adjustment else parse_payment)(text, limits, what="field amount")
    except AmountError as exc:
        raise ApiError(422, str(exc)) from None


# Every date and time in a query goes through _query_time, _query_day or _query_period: text that is
# no date is 400; a date outside [FIRST_DAY, LAST_DAY] is 422 (no meter read before the epoch, and
# date arithmetic past year 9999 overflows -- a day of 9999-12-31 used to answer 500).
FIRST_DAY: Final = date(1970, 1, 1)
LAST_DAY: Final = date(2099, 12, 31)
_OUT_OF_RANGE: Final = f"is out of range (from {FIRST_DAY} to {LAST_DAY})"


def _query_time(request: Request, name: str) -> datetime | None:
    text = request.query_params.get(name)
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(400, f"query parameter {name}={shown(text)} is not an ISO 8601 time") from None
    if at.tzinfo is None:
        raise ApiError(400, f"query parameter {name}={shown(text)} needs a time zone, e.g. {text[:19]}+08:00")
    try:
        day = at.astimezone(UTC).date()
    except OverflowError:  # 0001-01-01T00:00+08:00 is before year 1 in UTC
        day = date.min
    if not FIRST_DAY <= day <= LAST_DAY:
        raise ApiError(422, f"query parameter {name}={shown(text)} {_OUT_OF_RANGE}, UTC")
    return at


def _query_day(request: Request, name: str, default: date) -> date:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise ApiError(400, f"query parameter {name}={shown(text)} is not a date (YYYY-MM-DD)") from None
    if not FIRST_DAY <= day <= LAST_DAY:
        raise ApiError(422, f"query parameter {name}={shown(text)} {_OUT_OF_RANGE}")
    return day


def _query_period(request: Request, name: str, today: date) -> tuple[date, date]:
    text = request.query_params.get(name)
    try:
        start, end = parse_period(text, today=today, name=name)
    except ConfigError as exc:
        raise ApiError(400, f"query parameter {'; '.join(exc.problems)}") from None
    if not (FIRST_DAY <= start and end <= LAST_DAY):
        raise ApiError(422, f"query parameter {name}={shown(text or '')} {_OUT_OF_RANGE}")
    return start, end


def _query_limit(request: Request, default: int) -> int:
    text = request.query_params.get("limit")
    if text is None:
        return default
    value = small_int(text, 1, MAX_LIMIT)
    if value is None:
        raise ApiError(400, f"query parameter limit={shown(text)} must be an integer from 1 to {MAX_LIMIT}")
    return value


_Choice = TypeVar("_Choice", bound=str)


def _query_enum(request: Request, name: str, choices: tuple[_Choice, ...]) -> _Choice | None:
    text = request.query_params.get(name)
    if text is None:
        return None
    for choice in choices:  # the matching choice, typed as the choices are (a Literal for a literal tuple)
        if text == choice:
            return choice
    raise ApiError(400, f"query parameter {name}={shown(text)} must be one of {', '.join(choices)}")


_meter_address = address_key


# --- the endpoint table ------------------------------------------------------------------------

Handler = Callable[["Api", Request, Caller | None], Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    role: Role | None  # None: no token needed
    summary: str
    handler: Handler
    responses: dict[int, Any]  # status -> schema
    query: tuple[tuple[str, dict[str, Any], str], ...] = ()  # (name, schema, description)
    path_params: tuple[str, ...] = ()
    body: str | None = None
    errors: tuple[int, ...] = field(default=())


LIMIT_PARAM: Final = ("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}, "at most this many")
PERIOD_PARAM: Final = ("period", STR, "YYYY-MM-DD, YYYY-MM, YYYY-Qn or START..END (default yesterday, site time)")


class Api:
    """The handlers, over the stores of one location (a data directory, or a PostgreSQL database)."""

    def __init__(self, where: Location, clock: Clock, config: Any, live: LiveNode | None = None,
                 sync: Any = None) -> None:
        self.where, self.clock, self.config, self.live, self.sync = where, clock, config, live, sync
        # the site's zone ([site] timezone): days and periods are its days (the default: CST)
        self.zone = config.site.zone if config is not None else CST
        self.tokens = TokenStore(where)
        self.control = ControlStore(where)
        self.archive = open_store(where, clock=clock)
        self.anomalies = AnomalyStore(where)
        self.outages = OutageStore(where)
        self.quality = QualityStore(where, clock=clock, zone=self.zone)
        self.alarms = AlarmWatch.of(self)  # the alarm list (meterd.api.alarms)
        self._syncing: set[str] = set()
        self._configured = frozenset(m.address for m in config.meters) if config is not None else frozenset()

    def close(self) -> None:
        for store in (self.tokens, self.control, self.archive, self.anomalies, self.outages, self.quality, self.alarms):
            store.close()

    def _need_config(self, what: str) -> Any:
        if self.config is None:
            raise ApiError(503, f"{what} needs the site config: served by the daemon (or create_app(config=...))")
        return self.config

    def _need_live(self, what: str) -> LiveNode:
        if self.live is None:
            raise ApiError(503, f"{what} is only served by the running daemon")
        return self.live

    def _terminals(self) -> list[dict[str, Any]]:
        from meterd.config.model import DtuLink, GdwLink, MqttLink

        online = self.quality.online_since()
        out = []
        if self.config is not None:
            for ch in self.config.channels:
                if isinstance(ch.link, (DtuLink, MqttLink, GdwLink)):
                    kind = "dtu" if isinstance(ch.link, DtuLink) else "mqtt" if isinstance(ch.link, MqttLink) else "gdw1376"
                    out.append({"id": ch.link.terminal, "channel": ch.name, "kind": kind,
                                "online": ch.name in online, "since": iso(online.get(ch.name)),
                                "meters": len(self.config.meters_on(ch.name))})
        return out

    def _audit(self, caller: Caller, action: str, subject: str, detail: dict[str, Any]) -> None:
        self.control.audit(caller.name, f"api-{action}", subject,
                           {"token_id": caller.token_id, "role": str(caller.role), **detail}, now=self.clock())

    def _known_meters(self) -> list[str]:
        if self.config is not None:
            return list(self._configured)
        return [m.address for m in self.archive.meters()]

    def _meter_exists(self, address: str) -> bool:
        """Configured, in the archive (a meter since removed keeps its history) or on an account."""
        return (address in self._configured or self.archive.meter(address) is not None
                or address in self.control.meter_accounts())

    # --- read endpoints ---

    async def healthz(self, request: Request, caller: Caller | None) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request, caller: Caller | None) -> Response:
        """Ready for traffic: the state store answers a query, and the collector's channels are
        started (served by the daemon only); otherwise 503 with every reason."""
        def check() -> list[str]:
            reasons = []
            try:
                self.archive.meters(limit=1)
            except Exception as exc:  # noqa: BLE001 -- whatever the store raises, it is not reachable
                reasons.append(f"the state store is unreachable: {type(exc).__name__}: {exc}"[:300])
            waiting = ("no collector in this process (the API runs without the daemon)" if self.live is None
                       else self.live.readiness())
            if waiting is not None:
                reasons.append(waiting)
            return reasons
        reasons = await run_in_threadpool(check)
        if reasons:
            return JSONResponse({"status": "not ready", "reasons": reasons}, status_code=503)
        return JSONResponse({"status": "ready", "reasons": []})

    async def openapi(self, request: Request, caller: Caller | None) -> Response:
        return JSONResponse(openapi_document())

    async def meters(self, request: Request, caller: Caller | None) -> Response:
        limit = _query_limit(request, 1000)
        after = request.query_params.get("after") or None

        def work() -> list[dict[str, Any]]:
            return [meter_doc(m, self.archive.latest(m.address)) for m in self.archive.meters(after=after,
                                                                                                limit=limit)]
        return JSONResponse(await run_in_threadpool(work))

    async def meter(self, request: Request, caller: Caller | None) -> Response:
        address = _meter_address(request.path_params["address"])

        def work() -> dict[str, Any]:
            record = self.archive.meter(address)
            if record is None:
                if not self._meter_exists(address):
                    raise ApiError(404, f"unknown meter {address}")
                record = MeterRecord(address, "", "", Decimal(1), Decimal(1))
            return meter_doc(record, self.archive.latest(address))
        return JSONResponse(await run_in_threadpool(work))

    async def readings(self, request: Request, caller: Caller | None) -> Response:
        meter = _meter_address(request.path_params["address"])
        since, until = _query_time(request, "since"), _query_time(request, "until")
        quantity = request.query_params.get("quantity") or None
        limit = _query_limit(request, 1000)

        def work() -> dict[str, Any]:
            if not self._meter_exists(meter):
                raise ApiError(404, f"unknown meter {meter}")
            rows = self.archive.readings(meter, since=since, until=until, quantity=quantity, limit=limit)
            return {"meter": meter, "readings": [reading_doc(r) for r in rows]}
        return JSONResponse(await run_in_threadpool(work))

    async def accounts(self, request: Request, caller: Caller | None) -> Response:
        area = request.query_params.get("area") or None
        state = _query_enum(request, "state", ACCOUNT_STATES)
        after = request.query_params.get("after") or None
        limit = _query_limit(request, MAX_LIMIT) if "limit" in request.query_params else None

        def page(start: str | None, size: int | None) -> list[dict[str, Any]]:
            now = self.clock()
            return [account_doc(a, now) for a in self.control.accounts(area=area, state=state, after=start,
                                                                       limit=size)]
        if limit is not None:
            return JSONResponse(await run_in_threadpool(page, after, limit))
        first = await run_in_threadpool(page, after, STREAM_PAGE)  # a bad query fails here, before any byte

        async def pages() -> AsyncIterator[bytes]:
            docs, sep = first, b"["
            while True:
                if docs:
                    yield sep + _json_bytes(docs)[1:-1]  # the page's array without its brackets
                    sep = b","
                if len(docs) < STREAM_PAGE:
                    break
                docs = await run_in_threadpool(page, docs[-1]["account"], STREAM_PAGE)
            yield b"]" if sep == b"," else b"[]"
        # Every account, as documented, but a page at a time: a city's 100,000 accounts are never held
        # in memory at once, and the first of them leave before the last are read.
        return StreamingResponse(pages(), media_type="application/json")

    async def account(self, request: Request, caller: Caller | None) -> Response:
        name = request.path_params["account"]
        found = await run_in_threadpool(self.control.account, name)
        if found is None:
            raise ApiError(404, f"unknown account {name}")
        return JSONResponse(account_doc(found, self.clock()))

    async def ledger(self, request: Request, caller: Caller | None) -> Response:
        name = request.path_params["account"]
        limit = _query_limit(request, MAX_LIMIT) if "limit" in request.query_params else None

        def work() -> dict[str, Any]:
            if self.control.account(name) is None:
                raise ApiError(404, f"unknown account {name}")
            if limit is not None:  # the newest `limit` only: ?limit=10 of 200,000 entries read them all (3 s, +250 MiB)
                docs = [ledger_doc(r, after) for r, after in reversed(self.control.ledger_page(name, limit=limit))]
            else:
                running, docs = Decimal("0.00"), []
                for r in self.control.ledger(name):
                    running += r.amount
                    docs.append(ledger_doc(r, running))
            return {"account": name, "balance": str(self.control.balance(name)), "entries": docs}
        return JSONResponse(await run_in_threadpool(work))

    async def commands(self, request: Request, caller: Caller | None) -> Response:
        state = _query_enum(request, "state", COMMAND_STATES)
        meter = request.query_params.get("meter")
        limit = _query_limit(request, 200)
        rows = await run_in_threadpool(lambda: self.control.commands(
            state=state, meter=_meter_address(meter) if meter else None, limit=limit))
        return JSONResponse([command_doc(c) for c in rows])

    async def anomalies_list(self, request: Request, caller: Caller | None) -> Response:
        state = _query_enum(request, "state", ("open", "closed", "all"))
        limit = _query_limit(request, 1000)
        rows = await run_in_threadpool(lambda: self.anomalies.events(
            state=None if state in (None, "all") else state, limit=limit))
        return JSONResponse([anomaly_doc(e) for e in rows])

    async def outages_list(self, request: Request, caller: Caller | None) -> Response:
        open_only = _query_enum(request, "open", ("true", "false")) == "true"
        limit = _query_limit(request, 1000)
        rows = await run_in_threadpool(lambda: self.outages.outages(open_only, limit=limit))
        return JSONResponse([outage_doc(o) for o in rows])


    # --- views: overview, line loss, energy, curves, quality, terminals, sync ---

    async def overview(self, request: Request, caller: Caller | None) -> Response:
        def work() -> dict[str, Any]:
            now = self.clock()
            day = local_date(now, self.zone)
            total = self.quality.report(day, now=now).total
            terminals = self._terminals()
            accounts = {s: 0 for s in ACCOUNT_STATES}
            accounts.update(self.control.accounts_by_state())
            return {"at": now.isoformat(), "day": day.isoformat(), "timezone": zone_name(self.zone),
                    "utc_offset": now.astimezone(self.zone).isoformat()[-6:], "meters": len(self._known_meters()),
                    "meters_with_data_today": total.meters_with_data,
                    "terminals": {"total": len(terminals), "online": sum(t["online"] for t in terminals)},
                    "collection": {"attempts": total.attempts, "successes": total.ok, "no_record": total.no_record,
                                   "failed": total.failed, "success_rate": total.success_rate,
                                   "target": self.quality.threshold},
                    "accounts": {"total": sum(accounts.values()), **accounts},
                    "commands": self.control.commands_by_state(),
                    "anomalies_open": self.anomalies.open_count(),
                    "outages_open": self.outages.open_count(),
                    "alarms": self.alarms.active_counts(now)}
        return JSONResponse(await run_in_threadpool(work))

    def _period(self, request: Request) -> tuple[date, date]:
        return _query_period(request, "period", local_date(self.clock(), self.zone))

    async def lineloss(self, request: Request, caller: Caller | None) -> Response:
        config = self._need_config("line loss")
        start, end = self._period(request)
        unit = request.query_params.get("unit") or None
        kind = _query_enum(request, "kind", ("area", "line", "group"))
        estimated = _query_enum(request, "include_estimated", ("true", "false")) == "true"
        if config.analytics is None or config.analytics.topology is None:
            return JSONResponse([])

        def work() -> list[dict[str, Any]]:
            try:
                return [r.as_dict() for r in lineloss_reports(config, start, end, unit=unit, kind=kind,
                                                               include_estimated=estimated)]
            except ConfigError as exc:
                raise ApiError(404, str(exc)) from None
        return JSONResponse(await run_in_threadpool(work))

    async def energy(self, request: Request, caller: Caller | None) -> Response:
        from meterd.analytics.stats import periods

        config = self._need_config("energy statistics")
        start, end = self._period(request)
        bys: tuple[Literal["unit", "industry", "group"], ...] = ("unit", "industry", "group")
        splits: tuple[Literal["day", "month", "quarter"], ...] = ("day", "month", "quarter")
        by = _query_enum(request, "by", bys) or "unit"
        split = _query_enum(request, "split", splits)
        role = _query_enum(request, "role", ("sales", "supply", "auxiliary", "all")) or "sales"
        if split == "day" and (end - start).days > 366:
            raise ApiError(400, "query parameter split=day: at most 367 days")
        if split is not None and (end - start).days + 1 > MAX_SPLIT_DAYS:
            raise ApiError(400, f"query parameter split={split}: period {shown(request.query_params.get('period', ''))} "
                                f"is {(end - start).days + 1} days, at most ten years ({MAX_SPLIT_DAYS} days)")
        if config.analytics is None or config.analytics.topology is None:
            return JSONResponse([])

        def work() -> list[dict[str, Any]]:
            spans = periods(split, start, end) if split else [(start, end)]
            return [{"start": r["start"], "end": r["end"], "key": r[by], "kwh": r["kwh"]}
                    for r in energy_rows(config, spans, by=by, role=role)]
        return JSONResponse(await run_in_threadpool(work))

    async def curve(self, request: Request, caller: Caller | None) -> Response:
        q = request.query_params
        meter, unit, group = q.get("meter"), q.get("unit"), q.get("group")
        if sum(x is not None for x in (meter, unit, group)) != 1:
            raise ApiError(400, "give exactly one of the query parameters meter, unit, group")
        day = _query_day(request, "day", local_date(self.clock(), self.zone))
        try:
            step = parse_step(q.get("step", "15m"), name="query parameter step")
        except ConfigError as exc:
            raise ApiError(400, str(exc)) from None
        if not timedelta(minutes=1) <= step <= timedelta(days=1):
            raise ApiError(400, "query parameter step must be from 1m to 1d")

        def work() -> dict[str, Any]:
            if meter is not None:
                address = _meter_address(meter)
                if not self._meter_exists(address):
                    raise ApiError(404, f"unknown meter {address}")
                meters, subject = [address], f"meter {address}"
            else:
                if self.config is None or self.config.analytics is None or self.config.analytics.topology is None:
                    raise ApiError(404, "no topology configured: ask for a meter's curve")
                try:
                    meters = curve_meters(self.config, unit=unit, group=group)
                except ConfigError as exc:
                    raise ApiError(404, str(exc)) from None
                subject = f"unit {unit}" if unit is not None else f"group {group}"
            points = curve_points(self.where, meters, day, step, self.zone)
            return {"subject": subject, "day": day.isoformat(), "step_seconds": int(step.total_seconds()),
                    "meters": meters,
                    "points": [{"at": at.isoformat(), "kw": str(kw), "meters": n} for at, kw, n in points]}
        return JSONResponse(await run_in_threadpool(work))

    async def quality_report(self, request: Request, caller: Caller | None) -> Response:
        day = _query_day(request, "day", local_date(self.clock(), self.zone))
        area = request.query_params.get("area") or None
        report = await run_in_threadpool(lambda: self.quality.report(day, area, now=self.clock()))
        return JSONResponse(report.as_dict())

    async def terminals(self, request: Request, caller: Caller | None) -> Response:
        return JSONResponse(await run_in_threadpool(self._terminals))

    async def sync_status(self, request: Request, caller: Caller | None) -> Response:
        from meterd.billing_link.store import SyncStore

        schedules = self.config.sync.schedules if self.config is not None and self.config.sync else {}
        configured = [j.name for j in self.config.sync.jobs] if self.config is not None and self.config.sync else []

        def work() -> list[dict[str, Any]]:
            with SyncStore(self.where) as store:
                rows = {r["job"]: r for r in store.status()}
            out = []
            for name in sorted(set(rows) | set(configured)):
                r = rows.get(name, {})
                out.append({"job": name, "kind": r.get("kind") or job_kind(self.config, name),
                            "schedule": schedules.get(name), "watermark": r.get("watermark"),
                            "last_run": iso(r.get("last_run")), "last_status": r.get("last_status"),
                            "last_error": r.get("last_error"), "counts": r.get("counts", {}),
                            "files_unfinished": r.get("files_unfinished", 0),
                            "quarantined_total": r.get("quarantined_total", 0)})
            return out
        return JSONResponse(await run_in_threadpool(work))

    async def sync_run(self, request: Request, caller: Caller | None) -> Response:
        from meterd.billing_link.runtime import SyncBusy, run_named

        assert caller is not None
        config = self._need_config("a sync run")
        name = request.path_params["job"]
        if name not in {j.name for j in (config.sync.jobs if config.sync else ())}:
            raise ApiError(404, f"unknown sync job {name!r}")
        runtime = self.sync
        if name in self._syncing or (runtime is not None and runtime.is_running(name)):
            raise ApiError(409, f"sync job {name} is already running")
        self._audit(caller, "sync-run", name, {"state": "started"})
        self._syncing.add(name)
        try:
            if runtime is not None:
                result = await runtime.run_now(name)
            else:
                result = await run_in_threadpool(lambda: run_named(config, name, now=self.clock()))
        except SyncBusy as exc:
            raise ApiError(409, str(exc)) from None
        except MeterdError as exc:
            self._audit(caller, "sync-run", name, {"state": "failed", "error": str(exc)})
            raise ApiError(422, f"sync job {name} failed: {exc}") from None
        finally:
            self._syncing.discard(name)
        self._audit(caller, "sync-run", name, {"state": "done", "applied": result.applied})
        return JSONResponse({"job": name, "kind": result.kind.value, "applied": result.applied,
                             "duplicates": result.duplicates, "quarantined": result.quarantined})

    # --- technician: diagnostics and on-demand reads ---

    async def meter_attempts(self, request: Request, caller: Caller | None) -> Response:
        meter = _meter_address(request.path_params["address"])
        since = _query_time(request, "since") or self.clock() - timedelta(hours=24)
        limit = _query_limit(request, 200)

        def work() -> list[dict[str, Any]]:
            if not self._meter_exists(meter):
                raise ApiError(404, f"unknown meter {meter}")
            # only the newest `limit` are read: since=1970 over 600,000 attempts of a meter read them all
            # for 200 (4.6 s, the process +364 MiB)
            return [attempt_doc(a) for a in self.archive.attempts(meter=meter, since=since, last=limit)]
        return JSONResponse(await run_in_threadpool(work))

    async def diagnostics(self, request: Request, caller: Caller | None) -> Response:
        live = self._need_live("live channel diagnostics")
        records, size = live.spool_size() or (0, 0)
        return JSONResponse({"channels": [{"name": name, "stats": stats} for name, stats in live.stats().items()],
                             "listeners": live.listener_status(),
                             "spool": {"records": records, "bytes": size}})

    async def read_now(self, request: Request, caller: Caller | None) -> Response:
        assert caller is not None
        meter = _meter_address(request.path_params["address"])
        body = await _body(request, "ReadRequest")
        live = self._need_live("an on-demand read")
        if not self._meter_exists(meter):
            raise ApiError(404, f"unknown meter {meter}")
        try:
            readings, attempts = await live.read_now(meter, body["quantities"], now=self.clock())
        except ReadRefusedError as exc:
            raise ApiError(400, str(exc)) from None
        await run_in_threadpool(self._audit, caller, "read", meter,
                                {"quantities": body["quantities"], "readings": len(readings),
                                 "failed": sum(a.outcome != "ok" for a in attempts)})
        return JSONResponse({"meter": meter, "readings": [reading_doc(r) for r in readings],
                             "attempts": [attempt_doc(a) for a in attempts]})

    # --- admin: tokens and config ---

    async def tokens_list(self, request: Request, caller: Caller | None) -> Response:
        rows = await run_in_threadpool(self.tokens.list)
        return JSONResponse([{"id": t.id, "name": t.name, "role": t.role.value, "created": t.created.isoformat(),
                              "revoked": iso(t.revoked)} for t in rows])

    async def token_create(self, request: Request, caller: Caller | None) -> Response:
        assert caller is not None
        body = await _body(request, "TokenRequest")

        def work() -> tuple[str, str]:
            token_id, secret = self.tokens.create(body["name"], body["role"], self.clock())
            self._audit(caller, "token-create", token_id, {"name": body["name"].strip(), "new_role": body["role"]})
            return token_id, secret
        token_id, secret = await run_in_threadpool(work)
        return JSONResponse({"id": token_id, "name": body["name"].strip(), "role": body["role"], "secret": secret},
                            status_code=201)

    async def token_revoke(self, request: Request, caller: Caller | None) -> Response:
        assert caller is not None
        token_id = request.path_params["id"]

        def work() -> None:
            if token_id == caller.token_id:
                raise ApiError(409, "a token cannot revoke itself; use another admin token or the CLI")
            if not self.tokens.revoke(token_id, self.clock()):
                raise ApiError(404, f"no live token {token_id!r}")
            self._audit(caller, "token-revoke", token_id, {})
        await run_in_threadpool(work)
        return JSONResponse({"id": token_id, "revoked": True})

    async def config_summary(self, request: Request, caller: Caller | None) -> Response:
        config = self._need_config("the config summary")
        return JSONResponse(config_doc(config))

    # --- write endpoints ---

    async def post_command(self, request: Request, caller: Caller | None) -> Response:
        assert caller is not None
        body = await _body(request, "CommandRequest")
        meter, kind = _meter_address(body["meter"]), CommandKind(body["kind"])
        settings = getattr(getattr(self.config, "prepaid", None), "settings", None)
        ttl = settings.command_ttl if settings else timedelta(hours=2)
        hold = settings.manual_hold if settings else timedelta(hours=24)

        def work() -> Command:
            known = self._known_meters()
            if meter not in set(known) and meter not in self.control.meter_accounts():
                raise ApiError(404, f"unknown meter {meter}")
            try:
                command = queue_manual(self.control, meter, kind, operator=caller.name, reason=body["reason"],
                                       now=self.clock(), ttl=ttl, known_meters=known, manual_hold=hold)
            except LedgerError as exc:  # refused: queue_manual audited the refusal
                self._audit(caller, "command-refused", meter, {"kind": kind.value, "refusal": str(exc)})
                raise ApiError(422, str(exc)) from None
            self._audit(caller, "command", meter, {"id": command.id, "kind": kind.value, "reason": body["reason"]})
            return command
        command = await run_in_threadpool(work)
        return JSONResponse(command_doc(command), status_code=201)

    async def cancel_command(self, request: Request, caller: Caller | None) -> Response:
        assert caller is not None
        text = request.path_params["id"]
        if not (text.isascii() and text.isdigit()) or len(text) > 18:
            raise ApiError(400, f"command id {text!r} is not a number")
        command_id = int(text)
        body = await _body(request, "CancelRequest")

        def work() -> Command:
            if self.control.command(command_id) is None:
                raise ApiError(404, f"no command #{command_id}")
            try:
                command = self.control.cancel(command_id, now=self.clock(), actor=caller.name, reason=body["reason"])
            except LedgerError as exc:  # no longer queued
                raise ApiError(409, str(exc)) from None
            self._audit(caller, "cancel", command.meter, {"id": command_id, "reason": body["reason"]})
            return command
        return JSONResponse(command_doc(await run_in_threadpool(work)))

    async def _money(self, request: Request, caller: Caller | None, *, adjustment: bool) -> Response:
        assert caller is not None
        body = await _body(request, "AdjustmentRequest" if adjustment else "PaymentRequest")
        prepaid = getattr(self.config, "prepaid", None)
        amount = _amount(body["amount"], prepaid.amounts if prepaid is not None else AmountLimits(),
                         adjustment=adjustment)
        account, ref = body["account"], body["ref"]

        def work() -> Any:
            if self.control.account(account) is None:
                raise ApiError(404, f"unknown account {account}")
            try:
                if adjustment:
                    result = self.control.adjust(account, amount, ref, actor=caller.name, now=self.clock(),
                                                 reason=body["reason"])
                else:
                    result = self.control.pay(account, amount, ref, actor=caller.name, now=self.clock())
            except LedgerError as exc:
                raise ApiError(422, str(exc)) from None
            self._audit(caller, "adjustment" if adjustment else "payment", account,
                        {"ref": ref, "amount": str(amount), "applied": result.applied})
            return result
        result = await run_in_threadpool(work)
        return JSONResponse({"applied": result.applied, "balance": str(result.balance), "reason": result.reason,
                             "seq": result.seq}, status_code=201 if result.applied else 200)

    async def activate(self, request: Request, caller: Caller | None) -> Response:
        """A pending account activated with its opening balance (applied once, ``opening:ACCOUNT``);
        the token's name is the operator, as for payments."""
        assert caller is not None
        name = request.path_params["account"]
        body = await _body(request, "ActivationRequest")
        try:
            opening = parse_opening(amount_text(body["opening_balance"], what="field opening_balance",
                                                numbers=False), what="field opening_balance")
        except (AmountError, LedgerError) as exc:
            raise ApiError(422, str(exc)) from None

        def work() -> Any:
            if self.control.account(name) is None:
                raise ApiError(404, f"unknown account {name}")
            try:
                result = self.control.activate(name, opening, body["ref"], actor=caller.name, now=self.clock())
            except LedgerError as exc:
                raise ApiError(422, str(exc)) from None
            self._audit(caller, "activate", name, {"ref": body["ref"], "opening_balance": str(opening),
                                                   "applied": result.applied})
            return result
        result = await run_in_threadpool(work)
        return JSONResponse({"applied": result.applied, "balance": str(result.balance), "reason": result.reason,
                             "seq": None}, status_code=201 if result.applied else 200)

    async def payment(self, request: Request, caller: Caller | None) -> Response:
        return await self._money(request, caller, adjustment=False)

    async def adjustment(self, request: Request, caller: Caller | None) -> Response:
        return await self._money(request, caller, adjustment=True)


_AUTH_ERRORS: Final = (401, 403)
from meterd.api.console import CONSOLE_ENDPOINTS  # the console's pages: it uses Api and Endpoint above

ENDPOINTS: Final[tuple[Endpoint, ...]] = (
    Endpoint("GET", "/healthz", None, "liveness", Api.healthz, {200: ref("Health")}),
    Endpoint("GET", "/readyz", None, "readiness: the state store answers and the channels are started (503 "
             "with the reasons otherwise)", Api.readyz, {200: ref("Readiness"), 503: ref("Readiness")}),
    Endpoint("GET", "/api/v1/openapi.json", None, "this document", Api.openapi, {200: {"type": "object"}}),
    Endpoint("GET", "/api/v1/meters", Role.VIEWER, "the meter archive with each meter's latest readings, by "
             "address, a page at a time", Api.meters, {200: array("Meter")},
             query=(("after", STR, "the page after this address (the last one of the previous page)"),
                    LIMIT_PARAM), errors=(*_AUTH_ERRORS, 400)),
    Endpoint("GET", "/api/v1/meters/{address}", Role.VIEWER, "one meter with its latest reading of each quantity",
             Api.meter, {200: ref("Meter")}, path_params=("address",), errors=(*_AUTH_ERRORS, 404)),
    Endpoint("GET", "/api/v1/meters/{address}/readings", Role.VIEWER, "a meter's readings, oldest first",
             Api.readings, {200: ref("Readings")},
             query=(("quantity", STR, "only this quantity, e.g. energy.active.import.total"),
                    ("since", TIME, "from this time (ISO 8601 with zone), inclusive"),
                    ("until", TIME, "to this time, exclusive"), LIMIT_PARAM),
             path_params=("address",), errors=(*_AUTH_ERRORS, 400, 404, 422)),
    Endpoint("GET", "/api/v1/accounts", Role.VIEWER, "prepaid accounts by name, all or a page at a time",
             Api.accounts, {200: array("Account")},
             query=(("area", STR, "only this area"),
                    ("state", {"type": "string", "enum": list(ACCOUNT_STATES)}, "only this control state"),
                    ("after", STR, "the page after this account (the last one of the previous page)"),
                    LIMIT_PARAM),
             errors=(*_AUTH_ERRORS, 400)),
    Endpoint("GET", "/api/v1/accounts/{account}", Role.VIEWER, "one account: balance, state, why a trip is held",
             Api.account, {200: ref("Account")}, path_params=("account",), errors=(*_AUTH_ERRORS, 404)),
    Endpoint("GET", "/api/v1/accounts/{account}/ledger", Role.VIEWER, "the ledger with the running balance",
             Api.ledger, {200: ref("Ledger")}, query=(LIMIT_PARAM,), path_params=("account",),
             errors=(*_AUTH_ERRORS, 400, 404)),
    Endpoint("GET", "/api/v1/commands", Role.VIEWER, "the command queue and history, newest first", Api.commands,
             {200: array("Command")},
             query=(("state", {"type": "string", "enum": list(COMMAND_STATES)}, "only this state"),
                    ("meter", STR, "only this meter"), LIMIT_PARAM), errors=(*_AUTH_ERRORS, 400)),
    Endpoint("POST", "/api/v1/commands", Role.OPERATOR, "queue a manual command (the token's name is the operator)",
             Api.post_command, {201: ref("Command")}, body="CommandRequest",
             errors=(*_AUTH_ERRORS, 400, 404, 413, 422)),
    Endpoint("POST", "/api/v1/commands/{id}/cancel", Role.OPERATOR, "cancel a queued command", Api.cancel_command,
             {200: ref("Command")}, path_params=("id",), body="CancelRequest",
             errors=(*_AUTH_ERRORS, 400, 404, 409, 413)),
    Endpoint("POST", "/api/v1/accounts/{account}/activate", Role.OPERATOR, "activate a pending account with its "
             "opening balance (applied once; the token's name is the operator)", Api.activate,
             {201: ref("Applied"), 200: ref("Applied")}, path_params=("account",), body="ActivationRequest",
             errors=(*_AUTH_ERRORS, 400, 404, 413, 422)),
    Endpoint("POST", "/api/v1/payments", Role.OPERATOR, "a payment, applied once per ref", Api.payment,
             {201: ref("Applied"), 200: ref("Applied")}, body="PaymentRequest",
             errors=(*_AUTH_ERRORS, 400, 404, 413, 422)),
    Endpoint("POST", "/api/v1/adjustments", Role.OPERATOR, "a signed adjustment with its reason, once per ref",
             Api.adjustment, {201: ref("Applied"), 200: ref("Applied")}, body="AdjustmentRequest",
             errors=(*_AUTH_ERRORS, 400, 404, 413, 422)),
    Endpoint("GET", "/api/v1/anomalies", Role.VIEWER, "anomaly events, newest first", Api.anomalies_list,
             {200: array("Anomaly")},
             query=(("state", {"type": "string", "enum": ["open", "closed", "all"]}, "default: all"), LIMIT_PARAM),
             errors=(*_AUTH_ERRORS, 400)),
    Endpoint("GET", "/api/v1/outages", Role.VIEWER, "outages, latest first", Api.outages_list,
             {200: array("Outage")},
             query=(("open", {"type": "string", "enum": ["true", "false"]}, "only open outages"), LIMIT_PARAM),
             errors=(*_AUTH_ERRORS, 400)),
    Endpoint("GET", "/api/v1/overview", Role.VIEWER, "the district at a glance: meters, terminals online, today's "
             "collection rate against its target, accounts by state, commands, open anomalies and outages",
             Api.overview, {200: ref("Overview")}, errors=_AUTH_ERRORS),
    Endpoint("GET", "/api/v1/lineloss", Role.VIEWER, "line loss per area / line with completeness (empty without a "
             "topology)", Api.lineloss, {200: array("LineLoss")},
             query=(PERIOD_PARAM, ("unit", STR, "only this area / line / group"),
                    ("kind", {"type": "string", "enum": ["area", "line", "group"]}, "only units of this kind"),
                    ("include_estimated", {"type": "string", "enum": ["true", "false"]}, "use estimated registers")),
             errors=(*_AUTH_ERRORS, 400, 404, 422, 503)),
    Endpoint("GET", "/api/v1/energy", Role.VIEWER, "energy per area, industry or group and period", Api.energy,
             {200: array("Energy")},
             query=(PERIOD_PARAM, ("by", {"type": "string", "enum": ["unit", "industry", "group"]}, "default unit"),
                    ("split", {"type": "string", "enum": ["day", "month", "quarter"]}, "one row per sub-period"),
                    ("role", {"type": "string", "enum": ["sales", "supply", "auxiliary", "all"]}, "default sales")),
             errors=(*_AUTH_ERRORS, 400, 422, 503)),
    Endpoint("GET", "/api/v1/curve", Role.VIEWER, "the load curve (summed active power per bucket) of a meter, an "
             "area / line or a group for one day of the site's zone", Api.curve, {200: ref("Curve")},
             query=(("meter", STR, "one meter"), ("unit", STR, "an area / line (its sales points)"),
                    ("group", STR, "a topology group"), ("day", {"type": "string", "format": "date"},
                                                          "the site's day, default today"),
                    ("step", STR, "bucket size: 15m (default), 1h, 900")),
             errors=(*_AUTH_ERRORS, 400, 404, 422)),
    Endpoint("GET", "/api/v1/quality", Role.VIEWER, "collection quality per meter, channel and area for a day",
             Api.quality_report, {200: ref("Quality")},
             query=(("day", {"type": "string", "format": "date"}, "the site's day, default today"),
                    ("area", STR, "only this meter group")), errors=(*_AUTH_ERRORS, 400, 422)),
    Endpoint("GET", "/api/v1/reports/{kind}.xlsx", Role.VIEWER, "a report as an Excel workbook (application/vnd."
             "openxmlformats-officedocument.spreadsheetml.sheet): lineloss, energy, quality or balances for a period "
             "beside its base (环比 / 同比)", report_xlsx, {200: {"type": "string", "format": "binary"}},
             query=REPORT_QUERY, path_params=("kind",), errors=(*_AUTH_ERRORS, 400, 404, 422, 503)),
    Endpoint("GET", "/api/v1/terminals", Role.VIEWER, "DTUs and MQTT terminals with their online state",
             Api.terminals, {200: array("Terminal")}, errors=_AUTH_ERRORS),
    Endpoint("GET", "/api/v1/sync", Role.VIEWER, "billing sync jobs: last run, status, counts, quarantine",
             Api.sync_status, {200: array("SyncJob")}, errors=_AUTH_ERRORS),
    Endpoint("POST", "/api/v1/sync/{job}/run", Role.OPERATOR, "run a sync job now (waits for it to finish)",
             Api.sync_run, {200: ref("SyncRun")}, path_params=("job",), errors=(*_AUTH_ERRORS, 404, 409, 422, 503)),
    Endpoint("GET", "/api/v1/meters/{address}/attempts", Role.TECHNICIAN, "a meter's recent requests and how each "
             "ended (diagnostics)", Api.meter_attempts, {200: array("Attempt")},
             query=(("since", TIME, "from this time, default 24 h ago"), LIMIT_PARAM), path_params=("address",),
             errors=(*_AUTH_ERRORS, 400, 404, 422)),
    Endpoint("POST", "/api/v1/meters/{address}/read", Role.TECHNICIAN, "call now: read quantities of a meter at "
             "once, ahead of routine reads; the readings are stored", Api.read_now, {200: ref("OnDemandRead")},
             path_params=("address",), body="ReadRequest", errors=(*_AUTH_ERRORS, 400, 404, 413, 503)),
    Endpoint("GET", "/api/v1/diagnostics", Role.TECHNICIAN, "live channel statistics, listeners, spool",
             Api.diagnostics, {200: ref("Diagnostics")}, errors=(*_AUTH_ERRORS, 503)),
    Endpoint("GET", "/api/v1/tokens", Role.ADMIN, "API tokens (never their secrets)", Api.tokens_list,
             {200: array("Token")}, errors=_AUTH_ERRORS),
    Endpoint("POST", "/api/v1/tokens", Role.ADMIN, "create a token; its secret is in this answer only",
             Api.token_create, {201: ref("NewToken")}, body="TokenRequest", errors=(*_AUTH_ERRORS, 400, 413)),
    Endpoint("POST", "/api/v1/tokens/{id}/revoke", Role.ADMIN, "revoke a token", Api.token_revoke,
             {200: {"type": "object"}}, path_params=("id",), errors=(*_AUTH_ERRORS, 404, 409)),
    Endpoint("GET", "/api/v1/config", Role.ADMIN, "the running config: channels, meters, polls (no secrets)",
             Api.config_summary, {200: ref("ConfigSummary")}, errors=(*_AUTH_ERRORS, 503)),
    *CONSOLE_ENDPOINTS,
    *alarm_endpoints(Endpoint, _AUTH_ERRORS),
)

_ERROR_TEXT: Final = {400: "bad request", 401: "missing or bad token", 403: "role too low", 404: "not found",
                      409: "conflict", 413: "body over 64 KiB", 414: "path and query over 8 KiB", 422: "refused",
                      503: "needs the running daemon or the site config"}


def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for ep in ENDPOINTS:
        op: dict[str, Any] = {"summary": ep.summary, "operationId": ep.handler.__name__, "responses": {}}
        if ep.role is not None:
            op["security"] = [{"bearer": []}]
            op["x-role"] = str(ep.role)
        else:
            op["security"] = []
        params = [{"name": p, "in": "path", "required": True, "schema": STR} for p in ep.path_params]
        params += [{"name": n, "in": "query", "required": False, "schema": s, "description": d} for n, s, d in ep.query]
        if params:
            op["parameters"] = params
        if ep.body:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(ep.body)}}}
        for status, schema in ep.responses.items():
            op["responses"][str(status)] = {"description": "ok", "content": {"application/json": {"schema": schema}}}
        for status in sorted({*ep.errors, 413, 414}):  # every route: a body over 64 KiB, a path over 8 KiB (_wrap)
            op["responses"][str(status)] = {"description": _ERROR_TEXT[status],
                                            "content": {"application/json": {"schema": ref("Error")}}}
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "meterd", "version": "1", "description": "meterd master station API"},
        "paths": paths,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


# --- the app -----------------------------------------------------------------------------------


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, {"WWW-Authenticate": 'Bearer realm="meterd"'})


async def _drained(request: Request) -> bool:
    """Whether the request's body has been read to its end, reading and dropping what is left of it
    when that is at most :data:`MAX_DRAIN` bytes more; False: the connection must be closed."""
    if getattr(request.state, "body_read", False):
        return True
    if request.headers.get("content-length", "0") == "0" and "transfer-encoding" not in request.headers:
        return True
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or len(declared) > 12 or int(declared) > MAX_BODY + MAX_DRAIN):
        return False  # 100 MB announced: not a byte more is read
    left = MAX_BODY + MAX_DRAIN
    while left > 0:
        message = await request.receive()
        if message["type"] != "http.request":
            return False
        left -= len(message.get("body", b""))
        if not message.get("more_body", False):
            request.state.body_read = True
            return True
    return False


def _wrap(api: Api, ep: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        # An answer given before the request's body was read whole closes the connection: uvicorn
        # would otherwise go on reading and dropping the rest (1 GB after a 413 in 4.4 s, until the
        # header timeout).  A body at most MAX_DRAIN over what was read is read and dropped first,
        # so that a client sending a little too much gets its answer, not a reset.
        try:
            response = await checked(request)
        except ApiError as exc:
            if not await _drained(request):
                exc.headers = {**(exc.headers or {}), "Connection": "close"}
            raise
        if not await _drained(request):
            response.headers["Connection"] = "close"
        return response

    async def checked(request: Request) -> Response:
        target = len(request.scope.get("raw_path") or b"") + len(request.scope.get("query_string") or b"")
        if target > MAX_TARGET:
            raise ApiError(414, f"request path and query string are {target} bytes, at most {MAX_TARGET}")
        caller = None
        if ep.role is not None:
            scheme, _, secret = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not secret.strip():
                raise _unauthorized("a Bearer token is required")
            found = await run_in_threadpool(api.tokens.verify, secret.strip())
            if found is None:
                raise _unauthorized("unknown or revoked token")
            caller = Caller(*found)
            if not caller.role.allows(ep.role):
                raise ApiError(403, f"{ep.method} {ep.path} needs role {ep.role}; token {caller.token_id} "
                                    f"is {caller.role}")
        _declared_length(request)  # a body over MAX_BODY is 413 on every endpoint, whether it reads one or not
        return await ep.handler(api, request, caller)
    endpoint.__name__ = ep.handler.__name__
    return endpoint


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    _ERROR_LOG.log(log, logging.ERROR, f"API requests failed with {type(exc).__name__}",
                   "API %s %s failed: %r", request.method, request.url.path, exc)
    return JSONResponse({"error": "internal error"}, status_code=500)


async def _storage_error(request: Request, exc: Exception) -> Response:
    """A write refused for want of space is 503 with what cannot be written (the transaction was
    rolled back whole: nothing is half-written); any other database error is a 500 as before."""
    if not disk_full(exc):
        raise exc
    what = exc.what if isinstance(exc, StorageFullError) else "the database"
    _ERROR_LOG.log(log, logging.ERROR, "API requests refused: disk full", "API %s %s: %s", request.method,
                   request.url.path, exc)
    return JSONResponse({"error": f"{what} cannot be written: disk full"}, status_code=503,
                        headers={"Retry-After": "60"})


async def _database_unreachable(request: Request, exc: Exception) -> Response:
    """PostgreSQL down, restarting or failing over: 503 at once, never a 500; the statement was
    rolled back whole (nothing is half-written) and the request can be made again."""
    _ERROR_LOG.log(log, logging.ERROR, "API requests refused: the database is unreachable", "API %s %s: %s",
                   request.method, request.url.path, exc)
    return JSONResponse({"error": "the database is unreachable; try again shortly"}, status_code=503,
                        headers={"Retry-After": "10"})


def create_app(where: Location, *, clock: Clock, config: Any = None, live: LiveNode | None = None,
               sync: Any = None) -> Starlette:
    """The API over the stores at ``where`` (a data directory, or a PostgreSQL
    :class:`~meterd.storage.database.Database`).  ``clock`` gives the aware time of each write;
    ``config`` (a loaded site config, optional) supplies the known meters, command TTLs, topology
    and sync jobs; ``live`` (when the daemon serves it) the collector's on-demand reads and
    diagnostics -- without it those answer 503; ``sync`` the daemon's billing-link runtime (a
    scheduled run and an API run of one job never overlap)."""
    api = Api(where if isinstance(where, Database) else Path(where), clock, config, live, sync)

    @asynccontextmanager
    async def lifespan(app: Starlette):  # type: ignore[no-untyped-def]
        try:
            async with watching(api):  # the daemon's alarm list synced in the background
                yield
        finally:
            api.close()

    from meterd.api.dashboard import dashboard_routes

    routes = [Route(ep.path, _wrap(api, ep), methods=[ep.method]) for ep in ENDPOINTS] + dashboard_routes()
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ApiError: _api_error, HTTPException: _http_error, StorageFullError: _storage_error,
                                        sqlite3.Error: _storage_error, OSError: _storage_error,
                                        psycopg.OperationalError: _database_unreachable,
                                        PoolTimeout: _database_unreachable, Exception: _server_error})
    app.state.api = api
    return app
