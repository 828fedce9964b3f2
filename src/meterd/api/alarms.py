"""Alarms to work, and 保电 from the API: ``/api/v1/alarms`` and ``/api/v1/accounts/{account}/protect``.

One alarm list (:mod:`meterd.storage.alarms`) made of open anomaly events, failed and stuck-relay
commands, outages, terminals offline and a growing spool.  :class:`AlarmWatch` gathers the
conditions from the stores (and, in the daemon, the spool's size) and syncs them into the alarm
store: when the list or the overview is asked for (at most every :data:`REFRESH_EVERY`), and in
the daemon every :data:`WATCH_EVERY` in the background (:func:`watching`), so the spool is
sampled and alarms are raised even while nobody looks.

Failed commands.  For each meter and command kind the newest command that ended (confirmed,
failed or expired; cancelled and dry-run ones are no outcome) decides: failed or expired is a
condition, keyed ``command:<meter>:<kind>`` -- a trip that fails three times is one alarm, its
detail naming the latest command -- and a later confirmed command deciding the same (the relay, the
pre-trip alarm or 保电: a reclose after a failed trip, not an alarm) clears it, and so does the meter's
relay state read since (a poll, a read-back) showing it where the failed command wanted it.  A
failed command whose read-back shows the relay where it was (:data:`~meterd.protocols.relay.EXPECTED`
not met) is ``relay_stuck`` (critical); other failures are ``command_failed`` (major for a trip or
reclose, minor otherwise and for an expired command).

Handlers follow :mod:`meterd.api.app`: token, role, body (at most 64 KiB, a JSON object with the
operation's fields only; 400 otherwise), the subject (404), the alarm's state (409).  The
operator is the token's name; each step is audited in the same transaction as the step, with
the token's id and role.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from meterd.analytics.alarms import (
    anomaly_conditions,
    outage_conditions,
    spool_condition,
    spool_key,
    terminal_conditions,
)
from meterd.analytics.outages import OutageStore
from meterd.api.schemas import MONEY, OPT_STR, SCHEMAS, STR, TIME, array, obj, ref
from meterd.api.tokens import Role
from meterd.control.command_store import Command
from meterd.control.commands import intent_met, relay_stuck
from meterd.control.model import MAX_REASON, CommandKind, CommandState
from meterd.control.state import ControlStore
from meterd.errors import LedgerError
from meterd.storage.alarms import (
    MAX_COMMENT,
    MAX_NAME,
    Action,
    Alarm,
    AlarmConflictError,
    AlarmInputError,
    AlarmKind,
    AlarmNotFoundError,
    AlarmSeverity,
    AlarmState,
    AlarmStore,
    Condition,
    alarm_doc,
)
from meterd.storage.anomalies import AnomalyStore
from meterd.storage.database import Location
from meterd.storage.quality import QualityStore

if TYPE_CHECKING:
    from meterd.api.app import Api, Caller, Endpoint

log = logging.getLogger(__name__)

REFRESH_EVERY: Final = timedelta(seconds=10)  # a list or overview asked for more often reads the store as it is
WATCH_EVERY: Final = 15.0  # seconds between background syncs in the daemon (and spool samples)
COMMAND_WINDOW: Final = 500  # newest failed (and expired) commands looked at per sync
MAX_PAGE: Final = 1000
_SPOOL_SAMPLES: Final = 200

_ENDED: Final = (CommandState.CONFIRMED, CommandState.FAILED, CommandState.EXPIRED)
_BIG_COMMANDS: Final = (CommandKind.TRIP, CommandKind.RECLOSE, CommandKind.RECLOSE_ALLOWED)


# --- failed commands as conditions (pure) ----------------------------------------------------------


def command_key(meter: str, kind: CommandKind | str) -> str:
    return f"command:{meter}:{CommandKind(kind).value}"


def command_condition(cmd: Command, failures: int = 1) -> Condition:
    """The alarm condition of failed or expired command ``cmd`` (the newest of its meter and kind)."""
    stuck = relay_stuck(cmd)
    if stuck:
        kind, severity = AlarmKind.RELAY_STUCK, AlarmSeverity.CRITICAL
        title = f"meter {cmd.meter}: relay did not move after {cmd.kind.value} (command #{cmd.id})"
    else:
        kind = AlarmKind.COMMAND_FAILED
        severity = (AlarmSeverity.MAJOR if cmd.state is CommandState.FAILED and cmd.kind in _BIG_COMMANDS
                    else AlarmSeverity.MINOR)
        title = f"meter {cmd.meter}: {cmd.kind.value} command #{cmd.id} {cmd.state.value}"
    return Condition(command_key(cmd.meter, cmd.kind), kind, cmd.meter, severity, title, cmd.finished or cmd.created,
                     {"command_id": cmd.id, "command_kind": cmd.kind.value, "command_state": cmd.state.value,
                      "account": cmd.account, "reason": cmd.reason[:300], "requested_by": cmd.requested_by,
                      "result": cmd.detail[:500], "read_back": dict(cmd.read_back), "tries": cmd.tries,
                      "failures_in_a_row": failures})


def command_state(history: Iterable[Command], kind: CommandKind) -> tuple[Command | None, int]:
    """From one meter's commands, newest first: the newest of ``kind`` that ended, if it failed or
    expired (else None), and how many ended that way in a row.  A later confirmed command deciding
    the same (:attr:`CommandKind.decides`: a reclose after a failed trip) ends the condition too."""
    failing: Command | None = None
    count = 0
    for cmd in history:
        if cmd.state is CommandState.CONFIRMED and cmd.kind.decides == kind.decides:
            break
        if cmd.kind is not kind or cmd.state not in _ENDED:
            continue
        failing = failing or cmd
        count += 1
    return failing, count


# --- gathering ----------------------------------------------------------------------------------


def terminal_list(config: Any, quality: Any) -> list[dict[str, Any]]:
    """The config's terminals (DTU, MQTT and 1376.1 channels) with their online state, as
    ``GET /api/v1/terminals`` lists them (for the CLI, which has no :class:`Api`)."""
    from meterd.config.model import DtuLink, GdwLink, MqttLink

    online = quality.online_since()
    out = []
    for ch in config.channels:
        if isinstance(ch.link, (DtuLink, MqttLink, GdwLink)):
            kind = "dtu" if isinstance(ch.link, DtuLink) else "mqtt" if isinstance(ch.link, MqttLink) else "gdw1376"
            out.append({"id": ch.link.terminal, "channel": ch.name, "kind": kind, "online": ch.name in online,
                        "meters": len(config.meters_on(ch.name))})
    return out


def terminal_offline_since(quality: QualityStore) -> dict[str, datetime]:
    """Channel -> since when its terminal is offline, for the terminals the master has polled and
    that are not online now: the end of its last online interval, or when it was first polled if
    it never was online."""
    watched = quality.watched_since()
    online = quality.online_since()
    ended = quality.last_online_end()
    return {t: max(since, ended.get(t, since)) for t, since in watched.items() if t not in online}


class AlarmWatch:
    """Gathers the conditions from the stores and syncs the alarm store (thread-safe; one sync at a
    time, a caller that finds one running reads the store as it is).  ``terminals``: the terminals
    as the API lists them (None: not judged -- no site config); ``offline``: since when each
    terminal's channel is offline (:func:`terminal_offline_since`); ``spool``: the running node's spool size (records, bytes);
    ``node``: its name among collector nodes (each watches its own spool)."""

    def __init__(self, where: Location, *, control: ControlStore, anomalies: AnomalyStore, outages: OutageStore,
                 terminals: Callable[[], list[dict[str, Any]]] | None = None,
                 offline: Callable[[], dict[str, datetime]] | None = None,
                 spool: Callable[[], tuple[int, int] | None] | None = None, node: str | None = None) -> None:
        self.store = AlarmStore(where)
        self.control, self.anomalies, self.outages = control, anomalies, outages
        self.terminals, self.offline, self.spool, self.node = terminals, offline, spool, node
        self._lock = threading.Lock()
        self._last: datetime | None = None  # the ``now`` of the last sync
        self._spool: deque[tuple[datetime, int, int]] = deque(maxlen=_SPOOL_SAMPLES)
        self.background = False  # synced by :func:`watching`: requests read the store as it is

    @classmethod
    def of(cls, api: Api) -> AlarmWatch:
        """The watch over the API's own stores (terminals judged with a site config, the spool in the daemon)."""
        cluster = getattr(api.config, "cluster", None)
        node = None if cluster is None else cluster.node or socket.gethostname()
        return cls(api.where, control=api.control, anomalies=api.anomalies, outages=api.outages,
                   terminals=api._terminals if api.config is not None else None,
                   offline=lambda: terminal_offline_since(api.quality),
                   spool=api.live.spool_size if api.live is not None else None, node=node)

    def idle(self) -> None:
        """Return once no sync is running (the stores it reads may be closed then)."""
        with self._lock:
            pass

    def close(self) -> None:
        self.idle()
        self.store.close()

    def refresh(self, now: datetime, *, force: bool = False) -> tuple[list[int], list[int]] | None:
        """Sync the alarms with what holds at ``now``; None when skipped (not ``force``d and synced
        in the background, or synced within :data:`REFRESH_EVERY`; or one is running)."""
        if not force and (self.background or self._last is not None
                          and timedelta(0) <= now - self._last < REFRESH_EVERY):
            return None
        if not self._lock.acquire(blocking=force):
            return None
        try:
            conditions, checked = self.gather(now)
            raised, resolved = self.store.sync(conditions, checked, now)
            self._last = now
        finally:
            self._lock.release()
        if raised or resolved:
            log.info("alarms: %d raised, %d resolved", len(raised), len(resolved))
        return raised, resolved

    def gather(self, now: datetime) -> tuple[list[Condition], set[str]]:
        """Every condition holding at ``now`` and every key checked (an ongoing alarm whose key was
        checked and has no condition is resolved)."""
        ongoing = self.store.ongoing_keys()
        conditions = anomaly_conditions(self.anomalies.open_events())
        conditions += outage_conditions(self.outages.outages(True, limit=1_000_000))
        checked = {k for k, kind in ongoing.items() if kind in (AlarmKind.ANOMALY, AlarmKind.OUTAGE)}
        if self.terminals is not None:
            conditions += terminal_conditions(self.terminals(), now, self.offline() if self.offline else {})
            checked |= {k for k, kind in ongoing.items() if kind is AlarmKind.TERMINAL_OFFLINE}
        if self.spool is not None:
            size = self.spool()
            if size is not None:
                self._spool.append((now, size[0], size[1]))
                found = spool_condition(list(self._spool), now, node=self.node)
                if found is not None:
                    conditions.append(found)
                checked.add(spool_key(self.node))
        found_commands, keys = self._commands(ongoing)
        return conditions + found_commands, checked | keys

    def _commands(self, ongoing: dict[str, AlarmKind]) -> tuple[list[Condition], set[str]]:
        control = self.control
        pairs: set[tuple[str, CommandKind]] = set()
        for state in (CommandState.FAILED, CommandState.EXPIRED):
            pairs |= {(c.meter, c.kind) for c in control.commands(state=state.value, limit=COMMAND_WINDOW)}
        for key, kind in ongoing.items():
            if kind in (AlarmKind.COMMAND_FAILED, AlarmKind.RELAY_STUCK):
                _, meter, command = key.split(":", 2)
                pairs.add((meter, CommandKind(command)))
        conditions = []
        for meter in sorted({m for m, _ in pairs}):
            history = control.commands(meter=meter, limit=100)
            relay: tuple[datetime, dict[str, bool]] | None = None
            for command in sorted(k for m, k in pairs if m == meter):
                failing, count = command_state(history, command)
                if failing is None:
                    continue
                relay = relay or control.relay_state(meter)
                since = failing.finished or failing.created
                if relay is not None and relay[0] > since and intent_met(failing.kind, relay[1]) is not None:
                    continue  # read since where the failed command wanted it (the customer pressed the button)
                conditions.append(command_condition(failing, count))
        return conditions, {command_key(m, k) for m, k in pairs}

    def active_counts(self, now: datetime) -> dict[str, int]:
        """Open and acknowledged alarms (the overview's tile), synced first if due."""
        self.refresh(now)
        counts = self.store.counts()
        return {"open": counts["open"], "acknowledged": counts["acknowledged"]}


@contextlib.asynccontextmanager
async def watching(api: Api) -> AsyncIterator[None]:
    """In the daemon (``api.live`` set): sync the alarms every :data:`WATCH_EVERY` in the background
    while the app runs."""
    if api.live is None:
        yield
        return

    async def loop() -> None:
        while True:
            try:
                await run_in_threadpool(lambda: api.alarms.refresh(api.clock(), force=True))
            except Exception:  # a store hiccup must not end the watch; said, and tried again
                log.exception("alarms: syncing the alarm list failed; trying again in %g s", WATCH_EVERY)
            await asyncio.sleep(WATCH_EVERY)

    task = asyncio.create_task(loop(), name="alarm-watch")
    api.alarms.background = True
    try:
        yield
    finally:
        api.alarms.background = False
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await run_in_threadpool(api.alarms.idle)  # a sync cancelled while in its thread has ended


# --- documents ----------------------------------------------------------------------------------


_COMMENT: Final = {"type": "string", "maxLength": MAX_COMMENT}
_COUNTS: Final = obj({s.value: {"type": "integer"} for s in AlarmState})
ALARM_SCHEMAS: Final[dict[str, Any]] = {
    "Alarm": obj({"id": {"type": "integer"}, "kind": {"type": "string", "enum": [k.value for k in AlarmKind]},
                  "subject": STR, "severity": {"type": "string", "enum": [s.value for s in AlarmSeverity]},
                  "title": STR, "detail": {"type": "object"}, "raised_at": TIME,
                  "state": {"type": "string", "enum": [s.value for s in AlarmState]}, "assignee": OPT_STR,
                  "history": {"type": "array", "items": obj({
                      "at": TIME, "by": STR, "action": {"type": "string", "enum": [a.value for a in Action]},
                      "comment": {"type": ["string", "null"]}})}}),
    "AlarmList": obj({"alarms": array("Alarm"), "next": {"type": ["string", "null"],
                                                         "description": "the cursor of the next page; null at the end"},
                      "counts": _COUNTS}),
    "AlarmAcknowledgeRequest": obj({"comment": _COMMENT}, required=(), additionalProperties=False),
    "AlarmAssignRequest": obj({"to": {"type": "string", "maxLength": MAX_NAME}, "comment": _COMMENT},
                              required=("to",), additionalProperties=False),
    "AlarmCloseRequest": obj({"comment": _COMMENT}, additionalProperties=False),
    "ProtectRequest": obj({"protect": {"type": "boolean"}, "reason": {"type": "string", "maxLength": MAX_REASON}},
                          additionalProperties=False),
    "Protection": obj({"account": STR, "changed": {"type": "boolean"}, "protected": {"type": "boolean"},
                       "archive_protected": {"type": "boolean"},
                       "protection_override": {"type": ["object", "null"]}, "message": STR, "state": STR,
                       "balance": MONEY, "held": OPT_STR}),
}
SCHEMAS.update(ALARM_SCHEMAS)


# --- input --------------------------------------------------------------------------------------


def _error(status: int, message: str) -> Exception:
    from meterd.api.app import ApiError

    return ApiError(status, message)


async def _object(request: Request, schema: str, *, empty_ok: bool = False) -> dict[str, Any]:
    """The body as a JSON object with only the fields of ``schema`` (each of the declared JSON type,
    the required ones present); an empty body is ``{}`` where ``empty_ok``."""
    from meterd.api.app import json_object

    doc = await json_object(request, schema, empty_ok=empty_ok)
    spec = SCHEMAS[schema]
    for name, value in doc.items():
        wanted = spec["properties"][name]["type"]
        ok = isinstance(value, bool) if wanted == "boolean" else isinstance(value, str)
        if not ok:
            raise _error(400, f"field {name} must be a {wanted}, not {type(value).__name__}")
    return doc


_ID: Final = re.compile(r"[0-9]{1,18}")


def _alarm_id(request: Request) -> int:
    from meterd.checking import shown

    text = request.path_params["id"]
    if not _ID.fullmatch(text):
        raise _error(400, f"alarm id {shown(text)} is not a number")
    return int(text)


def _page(request: Request) -> tuple[AlarmState | None, AlarmKind | None, str | None, int, int | None]:
    from meterd.checking import shown, small_int

    q = request.query_params
    state_text = q.get("state", "all")
    if state_text not in ("all", *(s.value for s in AlarmState)):
        raise _error(400, f"query parameter state={shown(state_text)} must be one of open, acknowledged, closed, all")
    kind_text = q.get("kind") or None
    if kind_text is not None and kind_text not in {k.value for k in AlarmKind}:
        raise _error(400, f"query parameter kind={shown(kind_text)} must be one of {', '.join(k.value for k in AlarmKind)}")
    subject = q.get("subject") or None
    if subject is not None and len(subject) > 200:
        raise _error(400, f"query parameter subject has {len(subject)} characters, at most 200")
    limit_text = q.get("limit", "100")
    limit = small_int(limit_text, 1, MAX_PAGE)
    if limit is None:
        raise _error(400, f"query parameter limit={shown(limit_text)} must be an integer from 1 to {MAX_PAGE}")
    cursor = q.get("cursor") or None
    if cursor is not None and not _ID.fullmatch(cursor):
        raise _error(400, f"query parameter cursor={shown(cursor)} is not a cursor this API gave (the 'next' of a page)")
    return (None if state_text == "all" else AlarmState(state_text), None if kind_text is None else AlarmKind(kind_text),
            subject, limit, None if cursor is None else int(cursor))


# --- handlers -----------------------------------------------------------------------------------


async def alarms_list(api: Api, request: Request, caller: Caller | None) -> Response:
    state, kind, subject, limit, before = _page(request)

    def work() -> dict[str, Any]:
        api.alarms.refresh(api.clock())
        found, more = api.alarms.store.alarms(state=state, kind=kind, subject=subject, limit=limit, before=before)
        return {"alarms": [alarm_doc(a) for a in found], "next": None if more is None else str(more),
                "counts": api.alarms.store.counts(kind=kind, subject=subject)}
    return JSONResponse(await run_in_threadpool(work))


async def _step(api: Api, request: Request, caller: Caller | None, action: Action, schema: str) -> Response:
    assert caller is not None
    alarm_id = _alarm_id(request)
    body = await _object(request, schema, empty_ok=action is Action.ACKNOWLEDGED)

    def work() -> Alarm:
        try:
            return api.alarms.store.act(alarm_id, action, actor=caller.name, now=api.clock(),
                                        comment=body.get("comment"), to=body.get("to"),
                                        audit={"token_id": caller.token_id, "role": str(caller.role), "via": "api"})
        except AlarmNotFoundError as exc:
            raise _error(404, str(exc)) from None
        except AlarmConflictError as exc:
            raise _error(409, str(exc)) from None
        except AlarmInputError as exc:
            raise _error(400, str(exc)) from None
    return JSONResponse(alarm_doc(await run_in_threadpool(work)))


async def alarm_acknowledge(api: Api, request: Request, caller: Caller | None) -> Response:
    return await _step(api, request, caller, Action.ACKNOWLEDGED, "AlarmAcknowledgeRequest")


async def alarm_assign(api: Api, request: Request, caller: Caller | None) -> Response:
    return await _step(api, request, caller, Action.ASSIGNED, "AlarmAssignRequest")


async def alarm_close(api: Api, request: Request, caller: Caller | None) -> Response:
    return await _step(api, request, caller, Action.CLOSED, "AlarmCloseRequest")


async def account_protect(api: Api, request: Request, caller: Caller | None) -> Response:
    """保电 set or released by an admin: :meth:`ControlStore.set_protection`, as ``meterd protect``
    (without ``--until`` / ``--meters``); the store audits the change with the token's name as the
    operator, and the API audits the call with the token."""
    from meterd.api.app import ApiError

    assert caller is not None
    name = request.path_params["account"]
    body = await _object(request, "ProtectRequest")
    reason = body["reason"].strip()
    if not reason:
        raise ApiError(400, "field reason must not be empty")
    if len(reason) > MAX_REASON:
        raise ApiError(400, f"field reason has {len(reason)} characters, at most {MAX_REASON}")

    def work() -> dict[str, Any]:
        if api.control.account(name) is None:
            raise ApiError(404, f"unknown account {name}")
        now = api.clock()
        try:
            change = api.control.set_protection(name, body["protect"], reason=reason, actor=caller.name, now=now)
        except LedgerError as exc:
            raise ApiError(422, str(exc)) from None
        api._audit(caller, "protect", name, {"protect": body["protect"], "reason": reason, "changed": change.changed})
        account = api.control.account(name)
        assert account is not None
        o = change.override
        return {"account": name, "changed": change.changed, "protected": change.protected,
                "archive_protected": change.archive,
                "protection_override": None if o is None else {
                    "protected": o.protected, "operator": o.operator, "reason": o.reason, "at": o.at.isoformat(),
                    "until": None if o.until is None else o.until.isoformat()},
                "message": change.message, "state": account.state, "balance": str(account.balance),
                "held": account.held}
    return JSONResponse(await run_in_threadpool(work))


def endpoints(endpoint: type[Endpoint], errors: tuple[int, ...]) -> tuple[Endpoint, ...]:
    """This module's rows of the endpoint table (``errors``: the auth errors every row has)."""
    kinds = {"type": "string", "enum": [k.value for k in AlarmKind]}
    step_errors = (*errors, 400, 404, 409, 413)
    return (
        endpoint("GET", "/api/v1/alarms", Role.VIEWER, "the alarm list to work: anomalies, failed and stuck-relay "
                 "commands, outages, terminals offline, a growing spool; the newest first, with history and counts",
                 alarms_list, {200: ref("AlarmList")},
                 query=(("state", {"type": "string", "enum": ["open", "acknowledged", "closed", "all"]},
                         "default all"),
                        ("kind", kinds, "only this kind"),
                        ("subject", STR, "only this subject (a meter address, area, terminal id or 'spool')"),
                        ("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, "at most this many (default 100)"),
                        ("cursor", STR, "the next page: the 'next' of the previous answer")),
                 errors=(*errors, 400)),
        endpoint("POST", "/api/v1/alarms/{id}/acknowledge", Role.OPERATOR, "acknowledge an open alarm (the token's "
                 "name is the operator; audited)", alarm_acknowledge, {200: ref("Alarm")}, path_params=("id",),
                 body="AlarmAcknowledgeRequest", errors=step_errors),
        endpoint("POST", "/api/v1/alarms/{id}/assign", Role.OPERATOR, "assign an alarm that is not closed to someone "
                 "(audited)", alarm_assign, {200: ref("Alarm")}, path_params=("id",), body="AlarmAssignRequest",
                 errors=step_errors),
        endpoint("POST", "/api/v1/alarms/{id}/close", Role.OPERATOR, "close an alarm with a comment (audited)",
                 alarm_close, {200: ref("Alarm")}, path_params=("id",), body="AlarmCloseRequest", errors=step_errors),
        endpoint("POST", "/api/v1/accounts/{account}/protect", Role.ADMIN, "set or release the account's 保电 over "
                 "the archive's flag, as meterd protect (audited; the token's name is the operator)",
                 account_protect, {200: ref("Protection")}, path_params=("account",), body="ProtectRequest",
                 errors=(*errors, 400, 404, 413, 422)),
    )


__all__ = ["ALARM_SCHEMAS", "AlarmWatch", "alarm_doc", "endpoints", "terminal_list", "terminal_offline_since",
           "watching"]
