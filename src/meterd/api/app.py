"""The HTTP API: JSON under ``/api/v1``, Bearer tokens with roles, and its own OpenAPI document.

Strategy: one table, :data:`ENDPOINTS`, names every operation once -- method, path, the least
role, query parameters, request body and response schemas -- and both the Starlette routes and
``/api/v1/openapi.json`` are built from it, so the document cannot drift from what is served.

Requests are checked in this order, and the first failure answers:

1. the token (missing, malformed, unknown or revoked: 401 with ``WWW-Authenticate: Bearer``);
2. the role (403);
3. the body (over 64 KiB: 413; not JSON, not an object, a missing field or a wrong type: 400) and
   query parameters (400);
4. the subject (unknown meter, account or command: 404);
5. the store's own rules (a refused command: 422; a command no longer queued: 409).

Nothing is written before step 5, so a 4xx from steps 1-4 leaves the database as it was.  Money
travels as strings ("88.50"), never floats.  Blocking store calls run in the thread pool.  The
secret in ``Authorization`` is never logged; an audit row names the token by its id.
"""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Awaitable, Callable, Final

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meterd.analytics.anomalies import AnomalyStore, Event
from meterd.analytics.outages import Outage, OutageStore
from meterd.api.tokens import Role, TokenStore
from meterd.control.engine import queue_manual
from meterd.control.model import CommandKind, CommandState
from meterd.control.state import Account, Command, ControlStore, LedgerError, LedgerRow, to_fen
from meterd.storage.sqlite import MeterRecord, SqliteStore, encode_value

log = logging.getLogger(__name__)

MAX_BODY: Final = 64 * 1024
MAX_LIMIT: Final = 10_000
MANUAL_KINDS: Final = ("trip", "reclose", "reclose-allowed", "alarm", "alarm-release")
COMMAND_STATES: Final = tuple(s.value for s in CommandState)
ACCOUNT_STATES: Final = ("normal", "reminded", "alarmed", "tripped")
Clock = Callable[[], datetime]


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


@dataclass(frozen=True, slots=True)
class Caller:
    token_id: str
    name: str
    role: Role


# --- schemas -----------------------------------------------------------------------------------

_STR: Final = {"type": "string"}
_OPT_STR: Final = {"type": ["string", "null"]}
_TIME: Final = {"type": "string", "format": "date-time"}
_OPT_TIME: Final = {"type": ["string", "null"], "format": "date-time"}
_MONEY: Final = {"type": "string", "pattern": r"^-?\d+(\.\d{1,2})?$", "description": "yuan, exact"}


def _obj(props: dict[str, Any], required: tuple[str, ...] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props if required is None else required),
            **extra}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


SCHEMAS: Final[dict[str, Any]] = {
    "Error": _obj({"error": _STR}),
    "Health": _obj({"status": {"type": "string", "enum": ["ok"]}}),
    "Reading": _obj({"meter": _STR, "quantity": _STR, "timestamp": _TIME, "value": _STR,
                     "kind": {"type": "string", "enum": ["decimal", "datetime", "int", "str", "bool"]},
                     "unit": _STR, "quality": {"type": "string", "enum": ["good", "suspect", "estimated"]}}),
    "Meter": _obj({"address": _STR, "channel": _STR, "protocol": _STR, "ct": _STR, "pt": _STR, "name": _STR,
                   "group": _STR, "latest": {"type": "object", "additionalProperties": _ref("Reading")}}),
    "Readings": _obj({"meter": _STR, "readings": {"type": "array", "items": _ref("Reading")}}),
    "Account": _obj({"account": _STR, "customer": _STR, "area": _STR, "tariff": _STR,
                     "protected": {"type": "boolean"}, "balance": _MONEY,
                     "state": {"type": "string", "enum": list(ACCOUNT_STATES)}, "held": _OPT_STR,
                     "meters": {"type": "object", "additionalProperties": _STR}, "opened": _TIME,
                     "manual_hold_until": _OPT_TIME}),
    "LedgerEntry": _obj({"seq": {"type": "integer"}, "key": _STR, "kind": _STR, "amount": _MONEY, "at": _TIME,
                         "recorded": _TIME, "actor": _STR, "detail": _STR, "meter": _OPT_STR, "rate": _OPT_STR,
                         "kwh": _OPT_STR, "price": _OPT_STR, "balance": _MONEY}),
    "Ledger": _obj({"account": _STR, "balance": _MONEY, "entries": {"type": "array", "items": _ref("LedgerEntry")}}),
    "Command": _obj({"id": {"type": "integer"}, "meter": _STR, "account": _OPT_STR,
                     "kind": {"type": "string", "enum": [k.value for k in CommandKind]},
                     "state": {"type": "string", "enum": list(COMMAND_STATES)}, "reason": _STR,
                     "requested_by": _STR, "manual": {"type": "boolean"}, "created": _TIME, "expires": _TIME,
                     "sent": _OPT_TIME, "finished": _OPT_TIME, "tries": {"type": "integer"}, "detail": _STR,
                     "read_back": {"type": "object", "additionalProperties": {"type": "boolean"}}}),
    "Applied": _obj({"applied": {"type": "boolean"}, "balance": _MONEY, "reason": _STR,
                     "seq": {"type": ["integer", "null"]}}),
    "Anomaly": _obj({"id": {"type": "integer"}, "meter": _STR, "kind": _STR,
                     "severity": _STR, "opened": _TIME, "last_seen": _TIME, "closed": _OPT_TIME, "detail": _STR,
                     "evidence": {"type": "array", "items": {"type": "object"}}}),
    "Outage": _obj({"id": {"type": "integer"}, "unit": _STR, "started": _TIME, "ended": _OPT_TIME,
                    "meters": {"type": "array", "items": _STR}, "accounts": {"type": "array", "items": _STR}}),
    "CommandRequest": _obj({"meter": _STR, "kind": {"type": "string", "enum": list(MANUAL_KINDS)},
                            "reason": _STR}, additionalProperties=False),
    "CancelRequest": _obj({"reason": _STR}, additionalProperties=False),
    "PaymentRequest": _obj({"account": _STR, "amount": _MONEY, "ref": _STR}, additionalProperties=False),
    "AdjustmentRequest": _obj({"account": _STR, "amount": _MONEY, "ref": _STR, "reason": _STR},
                              additionalProperties=False),
}


def _array(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


# --- documents ---------------------------------------------------------------------------------


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _reading_doc(r: Any) -> dict[str, Any]:
    text, kind = encode_value(r.value)
    return {"meter": r.meter, "quantity": r.quantity, "timestamp": r.timestamp.isoformat(), "value": text,
            "kind": kind, "unit": r.unit, "quality": str(r.quality)}


def _meter_doc(m: MeterRecord, latest: dict[str, Any]) -> dict[str, Any]:
    return {"address": m.address, "channel": m.channel, "protocol": m.protocol, "ct": str(m.ct), "pt": str(m.pt),
            "name": m.name, "group": m.group, "latest": {q: _reading_doc(r) for q, r in latest.items()}}


def _account_doc(a: Account) -> dict[str, Any]:
    return {"account": a.account, "customer": a.customer, "area": a.area, "tariff": a.tariff,
            "protected": a.protected, "balance": str(a.balance), "state": a.state, "held": a.held,
            "meters": {m: str(k) for m, k in a.meters.items()}, "opened": a.opened.isoformat(),
            "manual_hold_until": _iso(a.manual_until)}


def _ledger_doc(r: LedgerRow, balance: Decimal) -> dict[str, Any]:
    return {"seq": r.seq, "key": r.key, "kind": str(r.kind), "amount": str(r.amount), "at": r.at.isoformat(),
            "recorded": r.recorded.isoformat(), "actor": r.actor, "detail": r.detail, "meter": r.meter,
            "rate": r.rate, "kwh": None if r.kwh is None else str(r.kwh),
            "price": None if r.price is None else str(r.price), "balance": str(balance)}


def _command_doc(c: Command) -> dict[str, Any]:
    return {"id": c.id, "meter": c.meter, "account": c.account, "kind": c.kind.value, "state": c.state.value,
            "reason": c.reason, "requested_by": c.requested_by, "manual": c.manual,
            "created": c.created.isoformat(), "expires": c.expires.isoformat(), "sent": _iso(c.sent),
            "finished": _iso(c.finished), "tries": c.tries, "detail": c.detail, "read_back": dict(c.read_back)}


def _anomaly_doc(e: Event) -> dict[str, Any]:
    return {"id": e.id, "meter": e.meter, "kind": str(e.kind), "severity": str(e.severity),
            "opened": e.opened.isoformat(), "last_seen": e.last_seen.isoformat(), "closed": _iso(e.closed),
            "detail": e.detail, "evidence": [dict(x) for x in e.evidence]}


def _outage_doc(o: Outage) -> dict[str, Any]:
    return {"id": o.id, "unit": o.unit, "started": o.started.isoformat(), "ended": _iso(o.ended),
            "meters": list(o.meters), "accounts": list(o.accounts)}


# --- input -------------------------------------------------------------------------------------


async def _body(request: Request, schema: str) -> dict[str, Any]:
    """The JSON object body, at most :data:`MAX_BODY` bytes, with the fields of ``schema``:
    each required, each a string (and in its enum), no others."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise ApiError(400, "Content-Length is not a number")
        if int(declared) > MAX_BODY:
            raise ApiError(413, f"request body over 64 KiB ({MAX_BODY} bytes)")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise ApiError(413, f"request body over 64 KiB ({MAX_BODY} bytes)")
    try:
        doc = json.loads(raw.decode("utf-8"))
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
    for name, value in doc.items():
        if not isinstance(value, str):
            raise ApiError(400, f"field {name} must be a string, not {type(value).__name__}")
        if not value.strip():
            raise ApiError(400, f"field {name} must not be empty")
        enum = spec["properties"][name].get("enum")
        if enum and value not in enum:
            raise ApiError(400, f"field {name} must be one of {', '.join(enum)}, not {value!r}")
    return doc


def _money(text: str, *, positive: bool) -> Decimal:
    try:
        fen = to_fen(text)
    except LedgerError as exc:
        raise ApiError(400, f"field amount: {exc}") from None
    if positive and fen <= 0:
        raise ApiError(400, f"field amount must be positive, not {text}")
    if fen == 0:
        raise ApiError(400, "field amount must not be zero")
    return Decimal(fen).scaleb(-2)


def _query_time(request: Request, name: str) -> datetime | None:
    text = request.query_params.get(name)
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(400, f"query parameter {name}={text!r} is not an ISO 8601 time") from None
    if at.tzinfo is None:
        raise ApiError(400, f"query parameter {name}={text!r} needs a time zone, e.g. {text}+08:00")
    return at


def _query_limit(request: Request, default: int) -> int:
    text = request.query_params.get("limit")
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise ApiError(400, f"query parameter limit={text!r} must be an integer from 1 to {MAX_LIMIT}")
    return int(text)


def _query_enum(request: Request, name: str, choices: tuple[str, ...]) -> str | None:
    text = request.query_params.get(name)
    if text is not None and text not in choices:
        raise ApiError(400, f"query parameter {name}={text!r} must be one of {', '.join(choices)}")
    return text


def _meter_address(text: str) -> str:
    text = text.strip()
    return text.zfill(12) if text.isdigit() else text


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


class Api:
    """The handlers, over the stores of one data directory."""

    def __init__(self, data_dir: Path, clock: Clock, config: Any) -> None:
        self.data_dir, self.clock, self.config = data_dir, clock, config
        self.tokens = TokenStore(data_dir)
        self.control = ControlStore(data_dir)
        self.archive = SqliteStore(data_dir)
        self.anomalies = AnomalyStore(data_dir)
        self.outages = OutageStore(data_dir)

    def close(self) -> None:
        for store in (self.tokens, self.control, self.archive, self.anomalies, self.outages):
            store.close()

    def _audit(self, caller: Caller, action: str, subject: str, detail: dict[str, Any]) -> None:
        self.control.audit(caller.name, f"api-{action}", subject,
                           {"token_id": caller.token_id, "role": str(caller.role), **detail}, now=self.clock())

    def _known_meters(self) -> list[str]:
        if self.config is not None:
            return [m.address for m in self.config.meters]
        return [m.address for m in self.archive.meters()]

    def _meter_exists(self, address: str) -> bool:
        return address in set(self._known_meters()) or address in self.control.meter_accounts()

    # --- read endpoints ---

    async def healthz(self, request: Request, caller: Caller | None) -> Response:
        return JSONResponse({"status": "ok"})

    async def openapi(self, request: Request, caller: Caller | None) -> Response:
        return JSONResponse(openapi_document())

    async def meters(self, request: Request, caller: Caller | None) -> Response:
        def work() -> list[dict[str, Any]]:
            return [_meter_doc(m, self.archive.latest(m.address)) for m in self.archive.meters()]
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
            return {"meter": meter, "readings": [_reading_doc(r) for r in rows]}
        return JSONResponse(await run_in_threadpool(work))

    async def accounts(self, request: Request, caller: Caller | None) -> Response:
        area = request.query_params.get("area") or None
        state = _query_enum(request, "state", ACCOUNT_STATES)

        def work() -> list[dict[str, Any]]:
            return [_account_doc(a) for a in self.control.accounts(area=area) if state is None or a.state == state]
        return JSONResponse(await run_in_threadpool(work))

    async def account(self, request: Request, caller: Caller | None) -> Response:
        name = request.path_params["account"]
        found = await run_in_threadpool(self.control.account, name)
        if found is None:
            raise ApiError(404, f"unknown account {name}")
        return JSONResponse(_account_doc(found))

    async def ledger(self, request: Request, caller: Caller | None) -> Response:
        name = request.path_params["account"]
        limit = _query_limit(request, MAX_LIMIT) if "limit" in request.query_params else None

        def work() -> dict[str, Any]:
            if self.control.account(name) is None:
                raise ApiError(404, f"unknown account {name}")
            running, docs = Decimal("0.00"), []
            for r in self.control.ledger(name):
                running += r.amount
                docs.append(_ledger_doc(r, running))
            return {"account": name, "balance": str(self.control.balance(name)),
                    "entries": docs[-limit:] if limit else docs}
        return JSONResponse(await run_in_threadpool(work))

    async def commands(self, request: Request, caller: Caller | None) -> Response:
        state = _query_enum(request, "state", COMMAND_STATES)
        meter = request.query_params.get("meter")
        limit = _query_limit(request, 200)
        rows = await run_in_threadpool(lambda: self.control.commands(
            state=state, meter=_meter_address(meter) if meter else None, limit=limit))
        return JSONResponse([_command_doc(c) for c in rows])

    async def anomalies_list(self, request: Request, caller: Caller | None) -> Response:
        state = _query_enum(request, "state", ("open", "closed", "all"))
        limit = _query_limit(request, 1000)
        rows = await run_in_threadpool(lambda: self.anomalies.events(
            state=None if state in (None, "all") else state, limit=limit))
        return JSONResponse([_anomaly_doc(e) for e in rows])

    async def outages_list(self, request: Request, caller: Caller | None) -> Response:
        open_only = _query_enum(request, "open", ("true", "false")) == "true"
        limit = _query_limit(request, 1000)
        rows = await run_in_threadpool(lambda: self.outages.outages(open_only, limit=limit))
        return JSONResponse([_outage_doc(o) for o in rows])

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
        return JSONResponse(_command_doc(command), status_code=201)

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
        return JSONResponse(_command_doc(await run_in_threadpool(work)))

    async def _money(self, request: Request, caller: Caller | None, *, adjustment: bool) -> Response:
        assert caller is not None
        body = await _body(request, "AdjustmentRequest" if adjustment else "PaymentRequest")
        amount = _money(body["amount"], positive=not adjustment)
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

    async def payment(self, request: Request, caller: Caller | None) -> Response:
        return await self._money(request, caller, adjustment=False)

    async def adjustment(self, request: Request, caller: Caller | None) -> Response:
        return await self._money(request, caller, adjustment=True)


_AUTH_ERRORS: Final = (401, 403)
ENDPOINTS: Final[tuple[Endpoint, ...]] = (
    Endpoint("GET", "/healthz", None, "liveness", Api.healthz, {200: _ref("Health")}),
    Endpoint("GET", "/api/v1/openapi.json", None, "this document", Api.openapi, {200: {"type": "object"}}),
    Endpoint("GET", "/api/v1/meters", Role.VIEWER, "the meter archive with each meter's latest readings",
             Api.meters, {200: _array("Meter")}, errors=_AUTH_ERRORS),
    Endpoint("GET", "/api/v1/meters/{address}/readings", Role.VIEWER, "a meter's readings, oldest first",
             Api.readings, {200: _ref("Readings")},
             query=(("quantity", _STR, "only this quantity, e.g. energy.active.import.total"),
                    ("since", _TIME, "from this time (ISO 8601 with zone), inclusive"),
                    ("until", _TIME, "to this time, exclusive"), LIMIT_PARAM),
             path_params=("address",), errors=(*_AUTH_ERRORS, 400, 404)),
    Endpoint("GET", "/api/v1/accounts", Role.VIEWER, "prepaid accounts", Api.accounts, {200: _array("Account")},
             query=(("area", _STR, "only this area"),
                    ("state", {"type": "string", "enum": list(ACCOUNT_STATES)}, "only this control state")),
             errors=(*_AUTH_ERRORS, 400)),
    Endpoint("GET", "/api/v1/accounts/{account}", Role.VIEWER, "one account: balance, state, why a trip is held",
             Api.account, {200: _ref("Account")}, path_params=("account",), errors=(*_AUTH_ERRORS, 404)),
    Endpoint("GET", "/api/v1/accounts/{account}/ledger", Role.VIEWER, "the ledger with the running balance",
             Api.ledger, {200: _ref("Ledger")}, query=(LIMIT_PARAM,), path_params=("account",),
             errors=(*_AUTH_ERRORS, 400, 404)),
    Endpoint("GET", "/api/v1/commands", Role.VIEWER, "the command queue and history, newest first", Api.commands,
             {200: _array("Command")},
             query=(("state", {"type": "string", "enum": list(COMMAND_STATES)}, "only this state"),
                    ("meter", _STR, "only this meter"), LIMIT_PARAM), errors=(*_AUTH_ERRORS, 400)),
    Endpoint("POST", "/api/v1/commands", Role.OPERATOR, "queue a manual command (the token's name is the operator)",
             Api.post_command, {201: _ref("Command")}, body="CommandRequest",
             errors=(*_AUTH_ERRORS, 400, 404, 413, 422)),
    Endpoint("POST", "/api/v1/commands/{id}/cancel", Role.OPERATOR, "cancel a queued command", Api.cancel_command,
             {200: _ref("Command")}, path_params=("id",), body="CancelRequest",
             errors=(*_AUTH_ERRORS, 400, 404, 409, 413)),
    Endpoint("POST", "/api/v1/payments", Role.OPERATOR, "a payment, applied once per ref", Api.payment,
             {201: _ref("Applied"), 200: _ref("Applied")}, body="PaymentRequest",
             errors=(*_AUTH_ERRORS, 400, 404, 413, 422)),
    Endpoint("POST", "/api/v1/adjustments", Role.OPERATOR, "a signed adjustment with its reason, once per ref",
             Api.adjustment, {201: _ref("Applied"), 200: _ref("Applied")}, body="AdjustmentRequest",
             errors=(*_AUTH_ERRORS, 400, 404, 413, 422)),
    Endpoint("GET", "/api/v1/anomalies", Role.VIEWER, "anomaly events, newest first", Api.anomalies_list,
             {200: _array("Anomaly")},
             query=(("state", {"type": "string", "enum": ["open", "closed", "all"]}, "default: all"), LIMIT_PARAM),
             errors=(*_AUTH_ERRORS, 400)),
    Endpoint("GET", "/api/v1/outages", Role.VIEWER, "outages, latest first", Api.outages_list,
             {200: _array("Outage")},
             query=(("open", {"type": "string", "enum": ["true", "false"]}, "only open outages"), LIMIT_PARAM),
             errors=(*_AUTH_ERRORS, 400)),
)

_ERROR_TEXT: Final = {400: "bad request", 401: "missing or bad token", 403: "role too low", 404: "not found",
                      409: "conflict", 413: "body over 64 KiB", 422: "refused"}


def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for ep in ENDPOINTS:
        op: dict[str, Any] = {"summary": ep.summary, "operationId": ep.handler.__name__, "responses": {}}
        if ep.role is not None:
            op["security"] = [{"bearer": []}]
            op["x-role"] = str(ep.role)
        else:
            op["security"] = []
        params = [{"name": p, "in": "path", "required": True, "schema": _STR} for p in ep.path_params]
        params += [{"name": n, "in": "query", "required": False, "schema": s, "description": d} for n, s, d in ep.query]
        if params:
            op["parameters"] = params
        if ep.body:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(ep.body)}}}
        for status, schema in ep.responses.items():
            op["responses"][str(status)] = {"description": "ok", "content": {"application/json": {"schema": schema}}}
        for status in ep.errors:
            op["responses"][str(status)] = {"description": _ERROR_TEXT[status],
                                            "content": {"application/json": {"schema": _ref("Error")}}}
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


def _wrap(api: Api, ep: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
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
    log.error("API %s %s failed: %r", request.method, request.url.path, exc)
    return JSONResponse({"error": "internal error"}, status_code=500)


def create_app(data_dir: Path, *, clock: Clock, config: Any = None) -> Starlette:
    """The API over ``data_dir``'s stores.  ``clock`` gives the aware time of each write;
    ``config`` (a loaded site config, optional) supplies the known meters and command TTLs."""
    api = Api(Path(data_dir), clock, config)

    @asynccontextmanager
    async def lifespan(app: Starlette):  # type: ignore[no-untyped-def]
        try:
            yield
        finally:
            api.close()

    routes = [Route(ep.path, _wrap(api, ep), methods=[ep.method]) for ep in ENDPOINTS]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _server_error})
    app.state.api = api
    return app
