"""The command half of the prepaid state database: relay commands and their lifecycle, the
relay states read back, and the audit log, in ``state.sqlite3``.

:class:`CommandStore` is the base of :class:`~meterd.control.state.ControlStore` (which owns the
schema of every prepaid table and is what callers open): a policy pass updates account states and
queues commands in one transaction, so both halves share one connection, one lock and the
:class:`~meterd.storage.statedb.StateDatabase` way of writing (``BEGIN IMMEDIATE``, audit row in
the same transaction).

A command is marked ``sent`` and committed *before* its bytes go out; after a crash a ``sent``
command is never sent again but settled by reading the relay back (:mod:`meterd.control.commands`).
Queuing a command identical to one still queued or sent is a no-op; queuing one that undoes a
queued command (:data:`OPPOSITE`) cancels it.  A transition from a state it cannot leave raises
:class:`~meterd.errors.LedgerError`.

Several nodes on one PostgreSQL database (see DESIGN.md, Scale-out).  Each sends the commands of
the meters on the channels it holds (``meters=`` of :meth:`CommandStore.due_commands`,
:meth:`~CommandStore.in_flight` and :meth:`~CommandStore.claim_due`).  A claim (queued -> sent)
records the node and asks the node's ``fence`` inside the claiming write transaction: a node
whose channel lease was taken over meanwhile is refused and the command stays queued for the new
holder.  Claims serialise on the write lock (an advisory lock on PostgreSQL, ``BEGIN IMMEDIATE``
on SQLite), so two nodes racing for one command claim it once; :meth:`~CommandStore.claim_due`
also takes its rows ``FOR UPDATE SKIP LOCKED`` on PostgreSQL.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final

from meterd.control.model import CommandKind, CommandRequest, CommandState
from meterd.errors import LedgerError
from meterd.storage.database import Location
from meterd.storage.sqlite import from_ms, to_ms
from meterd.storage.statedb import StateDatabase

ACTIVE_STATES: Final = (CommandState.QUEUED.value, CommandState.SENT.value)
# An audit line's detail as :meth:`CommandStore._audit` writes it, by one encoder made once (batches
# of audit lines: ``json.dumps`` with these options would build an encoder per line).
_AUDIT_JSON: Final = json.JSONEncoder(default=str, ensure_ascii=False)
# Commands that undo each other: queuing one cancels the other if it has not gone out yet.
OPPOSITE: Final = {
    CommandKind.TRIP: (CommandKind.RECLOSE, CommandKind.RECLOSE_ALLOWED),
    CommandKind.RECLOSE: (CommandKind.TRIP,),
    CommandKind.RECLOSE_ALLOWED: (CommandKind.TRIP,),
    CommandKind.ALARM: (CommandKind.ALARM_RELEASE,),
    CommandKind.ALARM_RELEASE: (CommandKind.ALARM,),
    CommandKind.PROTECT: (CommandKind.PROTECT_RELEASE,),
    CommandKind.PROTECT_RELEASE: (CommandKind.PROTECT,),
}


@dataclass(frozen=True, slots=True)
class Command:
    id: int
    meter: str
    account: str | None
    kind: CommandKind
    state: CommandState
    reason: str
    requested_by: str
    manual: bool
    created: datetime
    expires: datetime
    next_try: datetime
    sent: datetime | None
    finished: datetime | None
    tries: int
    detail: str
    read_back: dict[str, bool]
    node: str | None = None  # the node that claimed (sent) it last, where nodes share the database


# A node's check that it still holds the lease of the channel a command goes out on, called with
# the claiming transaction's connection (so it reads the lease in the same transaction).
Fence = Callable[[Any], bool]


@dataclass(frozen=True, slots=True)
class RelayChange:
    """A relay state a regular poll saw change with no command of the meter under way (the customer
    pressed the button, someone switched the relay by hand): audited as ``relay-observed``."""

    meter: str
    at: datetime  # when the poll read the newest flag
    before: dict[str, bool]
    after: dict[str, bool]
    account: str | None = None  # the meter's account, when it has one

    @property
    def changed(self) -> list[str]:
        return sorted(f for f, v in self.after.items() if f in self.before and self.before[f] != v)


# Relay flags read by the regular polls, per meter: flag -> (when read, value).
ObservedRelays = Mapping[str, Mapping[str, tuple[datetime, bool]]]
# How long a stored relay state may go unwritten while the polls keep reading the same flags
# (:meth:`CommandStore.observe_relays`): its time is when the flags were last *confirmed*, at most
# this much before the newest poll that read them.  An hour keeps the time a person sees close to
# the truth (the archive's latest readings have the exact time of each poll), while polls every
# 15 minutes rewrite about 30 % of a district's unchanged states per round on average (half in some
# rounds, none in others; benchmarks/bench_prepaid.py --relays), polls every minute 2 to 3 %.
RELAY_REFRESH: Final = timedelta(hours=1)
_MS: Final = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    at: datetime
    actor: str
    action: str
    subject: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AccountHit:
    """An account as a search lists it (:meth:`CommandStore.search_accounts`)."""

    account: str
    customer: str
    area: str
    state: str


def _opt_ms(at: datetime | None) -> int | None:
    return None if at is None else to_ms(at)


def _opt_dt(ms: int | None) -> datetime | None:
    return None if ms is None else from_ms(ms)


class CommandStore(StateDatabase):
    """Commands, relay states and the audit log (see the module docstring); opened as
    :class:`~meterd.control.state.ControlStore`."""

    def __init__(self, data_dir: Location) -> None:
        super().__init__(data_dir)
        # meter -> the newest read time (ms) of polls that found its stored relay flags unchanged
        # and wrote nothing (observe_relays): no older flag is taken after it, as if it were stored
        self._relays_seen: dict[str, int] = {}

    def _tuples(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """:meth:`_read` as plain tuples: for whole-district reads, where Row objects cost."""
        with self._lock:
            if self.postgres:  # rows are tuples already (read by name as well)
                return self._conn.execute(sql, params).fetchall()
            cur = self._conn.cursor()
            cur.row_factory = None
            return cur.execute(sql, params).fetchall()

    def _among(self, column: str, values: Collection[Any]) -> tuple[str, Any]:
        """SQL and its one parameter: ``column`` is one of ``values`` (any number of them)."""
        if self.postgres:
            return f"{column} = ANY(?::text[])", list(values)
        return f"{column} IN (SELECT value FROM json_each(?))", json.dumps(list(values))

    def _audit(self, conn: sqlite3.Connection, now: datetime, actor: str, action: str, subject: str,
               detail: Mapping[str, Any]) -> None:
        conn.execute(
            "INSERT INTO audit (ts, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)",
            (to_ms(now), actor, action, subject, json.dumps(detail, default=str, ensure_ascii=False)),
        )

    @staticmethod
    def _audit_row(now: datetime, actor: str, action: str, subject: str, detail: Mapping[str, Any]
                   ) -> tuple[Any, ...]:
        """An audit line for :meth:`_audit_many`, as :meth:`_audit` writes it."""
        return (to_ms(now), actor, action, subject, _AUDIT_JSON.encode(detail))

    def _audit_many(self, conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Audit lines in order, as one batch (PostgreSQL pipelines them: one wait, not one per line)."""
        if rows:
            conn.executemany("INSERT INTO audit (ts, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)", rows)

    # --- commands ------------------------------------------------------------------------------

    def _command(self, r: sqlite3.Row) -> Command:
        return Command(
            id=r["id"], meter=r["meter"], account=r["account"], kind=CommandKind(r["kind"]),
            state=CommandState(r["state"]), reason=r["reason"], requested_by=r["requested_by"],
            manual=bool(r["manual"]), created=from_ms(r["created_ts"]), expires=from_ms(r["expires_ts"]),
            next_try=from_ms(r["next_try_ts"]), sent=_opt_dt(r["sent_ts"]), finished=_opt_dt(r["finished_ts"]),
            tries=r["tries"], detail=r["detail"], read_back=json.loads(r["read_back"]), node=r["node"],
        )

    def queue_commands(self, requests: Sequence[CommandRequest], *, now: datetime, ttl: timedelta,
                       dry_run: bool = False) -> list[Command]:
        """Queue commands (one transaction).  A request identical in meter and kind to a command
        still queued or sent is not queued again; one that undoes a queued command cancels it
        (superseded).  In dry-run mode the commands are recorded as ``dry-run`` and never sent."""
        with self._write() as conn:
            created = self._queue(conn, requests, now, ttl, dry_run)
        return self._read_commands(created)

    def _queue(self, conn: sqlite3.Connection, requests: Sequence[CommandRequest], now: datetime, ttl: timedelta,
               dry_run: bool) -> list[int]:
        if self.postgres:
            return self._queue_pg(conn, requests, now, ttl, dry_run)
        created: list[int] = []
        for req in requests:
            active = conn.execute(
                "SELECT id, kind, state FROM commands WHERE meter = ? AND state IN (?, ?) ORDER BY id",
                (req.meter, *ACTIVE_STATES)).fetchall()
            if any(r["kind"] == req.kind.value for r in active):
                continue
            for r in active:
                if r["state"] == CommandState.QUEUED and CommandKind(r["kind"]) in OPPOSITE[req.kind]:
                    conn.execute("UPDATE commands SET state = ?, finished_ts = ?, detail = ? WHERE id = ?",
                                 (CommandState.CANCELLED.value, to_ms(now),
                                  f"superseded by {req.kind} ({req.reason})", r["id"]))
                    self._audit(conn, now, req.requested_by, "command-cancelled", req.meter,
                                {"id": r["id"], "reason": f"superseded by {req.kind}"})
            state = CommandState.DRY_RUN if dry_run else CommandState.QUEUED
            sql = ("INSERT INTO commands (meter, account, kind, state, reason, requested_by, manual, created_ts, "
                   "expires_ts, next_try_ts, finished_ts, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
            params = (req.meter, req.account, req.kind.value, state.value, req.reason, req.requested_by,
                      int(req.manual), to_ms(now), to_ms(now + ttl), to_ms(now),
                      to_ms(now) if dry_run else None, "dry run: not sent" if dry_run else "")
            if self.postgres:  # RETURNING: lastval() would cost a savepoint and two round trips
                command_id = conn.execute(sql + " RETURNING id", params).fetchone()[0]
            else:
                command_id = conn.execute(sql, params).lastrowid
            assert command_id is not None  # an INSERT that went in has a row id
            created.append(command_id)
            self._audit(conn, now, req.requested_by, "command-queued", req.meter,
                        {"id": command_id, "kind": req.kind.value, "account": req.account,
                         "reason": req.reason, "dry_run": dry_run, **req.extra})
        return created

    def _queue_pg(self, conn: sqlite3.Connection, requests: Sequence[CommandRequest], now: datetime, ttl: timedelta,
                  dry_run: bool) -> list[int]:
        """:meth:`_queue` in a few round trips, not three or more per command (a policy pass queues
        thousands): the meters' active commands read at once, the same rules applied in order in
        memory, the ids drawn from the table's sequence in one query, and the rows and audit lines
        written as batches."""
        if not requests:
            return []
        queued, cancelled = CommandState.QUEUED.value, CommandState.CANCELLED.value
        active: dict[str, list[list[Any]]] = {}  # meter -> [id, kind, state] of its queued or sent commands
        for command_id, meter, kind, state in conn.execute(
                "SELECT id, meter, kind, state FROM commands WHERE meter = ANY(?::text[]) AND state IN (?, ?) "
                "ORDER BY id", (list({r.meter for r in requests}), *ACTIVE_STATES)):
            active.setdefault(meter, []).append([command_id, kind, state])
        ids = iter([r[0] for r in conn.execute(  # in request order, as the inserts one by one would draw them
            "SELECT nextval(pg_get_serial_sequence('commands', 'id')) FROM generate_series(1, ?) ORDER BY 1",
            (len(requests),))])
        state = CommandState.DRY_RUN if dry_run else CommandState.QUEUED
        now_ms, until_ms = to_ms(now), to_ms(now + ttl)
        rows: list[tuple[Any, ...]] = []
        cancels: list[tuple[Any, ...]] = []
        audits: list[tuple[Any, ...]] = []
        created: list[int] = []
        for req in requests:
            mine = active.setdefault(req.meter, [])
            if any(kind == req.kind.value for _, kind, _ in mine):
                continue
            for row in mine:
                if row[2] == queued and CommandKind(row[1]) in OPPOSITE[req.kind]:
                    cancels.append((cancelled, now_ms, f"superseded by {req.kind} ({req.reason})", row[0]))
                    audits.append(self._audit_row(now, req.requested_by, "command-cancelled", req.meter,
                                                  {"id": row[0], "reason": f"superseded by {req.kind}"}))
                    row[2] = cancelled
            mine[:] = [row for row in mine if row[2] != cancelled]
            command_id = next(ids)
            rows.append((command_id, req.meter, req.account, req.kind.value, state.value, req.reason, req.requested_by,
                         int(req.manual), now_ms, until_ms, now_ms, now_ms if dry_run else None,
                         "dry run: not sent" if dry_run else ""))
            created.append(command_id)
            audits.append(self._audit_row(now, req.requested_by, "command-queued", req.meter,
                                          {"id": command_id, "kind": req.kind.value, "account": req.account,
                                           "reason": req.reason, "dry_run": dry_run, **req.extra}))
            if not dry_run:  # a dry-run command is not active: never in the way of the next one
                mine.append([command_id, req.kind.value, queued])
        if rows:
            conn.executemany(
                "INSERT INTO commands (id, meter, account, kind, state, reason, requested_by, manual, created_ts, "
                "expires_ts, next_try_ts, finished_ts, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        if cancels:  # after the inserts: a command may be superseded in the batch that queued it
            conn.executemany("UPDATE commands SET state = ?, finished_ts = ?, detail = ? WHERE id = ?", cancels)
        self._audit_many(conn, audits)
        return created

    def _read_commands(self, created: list[int]) -> list[Command]:
        found: dict[int, Command] = {}
        for i in range(0, len(created), 500):  # read back in a few queries, not one per command
            chunk = created[i:i + 500]
            found.update((r["id"], self._command(r)) for r in self._read(
                f"SELECT * FROM commands WHERE id IN ({','.join('?' * len(chunk))})", chunk))
        return [found[i] for i in created]

    def command(self, command_id: int) -> Command | None:
        rows = self._read("SELECT * FROM commands WHERE id = ?", (command_id,))
        return self._command(rows[0]) if rows else None

    def commands(self, *, state: str | None = None, meter: str | None = None, account: str | None = None,
                 before: int | None = None, limit: int = 200) -> list[Command]:
        """Commands newest first (by id), at most ``limit``: all, or those of one state, meter
        and/or account; with ``before``, only those with a smaller id (a page after one that
        ended with that id)."""
        sql, params = "SELECT * FROM commands WHERE 1 = 1", list[Any]()
        for column, value in (("state", state), ("meter", meter), ("account", account)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        if before is not None:
            sql += " AND id < ?"
            params.append(before)
        return [self._command(r) for r in self._read(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))]

    def due_commands(self, now: datetime, *, limit: int = 1000, meters: Collection[str] | None = None
                     ) -> list[Command]:
        """Queued commands whose time has come, oldest first; only those for ``meters`` when given
        (a node's: the meters on the channels it holds)."""
        sql, params = "SELECT * FROM commands WHERE state = ? AND next_try_ts <= ?", [CommandState.QUEUED.value,
                                                                                    to_ms(now)]
        if meters is not None:
            if not meters:
                return []
            clause, values = self._among("meter", meters)
            sql += " AND " + clause
            params.append(values)
        rows = self._read(sql + " ORDER BY id LIMIT ?", (*params, limit))
        return [self._command(r) for r in rows]

    def next_due(self) -> datetime | None:
        rows = self._read("SELECT MIN(next_try_ts) FROM commands WHERE state = ?", (CommandState.QUEUED.value,))
        return _opt_dt(rows[0][0])

    def in_flight(self, *, meters: Collection[str] | None = None) -> list[Command]:
        """Commands marked sent whose outcome was never recorded (the daemon died mid-command); only
        those for ``meters`` when given (a node settles the orphans on the channels it holds)."""
        sql, params = "SELECT * FROM commands WHERE state = ?", [CommandState.SENT.value]
        if meters is not None:
            if not meters:
                return []
            clause, values = self._among("meter", meters)
            sql += " AND " + clause
            params.append(values)
        return [self._command(r) for r in self._read(sql + " ORDER BY id", params)]

    def _transition(self, command_id: int, to: CommandState, *, now: datetime, actor: str, detail: str,
                    expect: Sequence[CommandState], read_back: Mapping[str, bool] | None = None,
                    next_try: datetime | None = None, node: str | None = None,
                    fence: Fence | None = None) -> Command:
        with self._write() as conn:
            row = conn.execute("SELECT * FROM commands WHERE id = ?", (command_id,)).fetchone()
            if row is None:
                raise LedgerError(f"no command #{command_id}")
            current = CommandState(row["state"])
            if current not in expect:
                raise LedgerError(f"command #{command_id} is {current}, not {' or '.join(map(str, expect))}")
            if fence is not None and not fence(conn):
                raise LedgerError(f"command #{command_id} not sent: node {node}'s lease of the meter's channel is "
                                  "lost (the command stays queued for the channel's holder)")
            sets: dict[str, Any] = {"state": to.value, "detail": detail}
            if node is not None:
                sets["node"] = node
            if to is CommandState.SENT:
                sets |= {"sent_ts": to_ms(now), "tries": row["tries"] + 1}
            elif to.final:
                sets["finished_ts"] = to_ms(now)
            if read_back is not None:
                sets["read_back"] = json.dumps(dict(read_back))
            if next_try is not None:
                sets["next_try_ts"] = to_ms(next_try)
            conn.execute("UPDATE commands SET " + ", ".join(f"{k} = ?" for k in sets) + " WHERE id = ?",
                         (*sets.values(), command_id))
            self._audit(conn, now, actor, f"command-{to.value}", row["meter"],
                        {"id": command_id, "kind": row["kind"], "from": current.value, "detail": detail,
                         **({"read_back": dict(read_back)} if read_back else {}),
                         **({"node": node} if node is not None else {})})
            row = conn.execute("SELECT * FROM commands WHERE id = ?", (command_id,)).fetchone()
        return self._command(row)

    def mark_sent(self, command_id: int, *, now: datetime, node: str | None = None,
                  fence: Fence | None = None) -> Command:
        """Claim a queued command for sending; committed before any byte goes out.  ``node``: who
        claims it (recorded).  ``fence``: called with the claiming transaction's connection; when it
        returns False (the node's channel lease is lost) nothing changes and LedgerError is raised."""
        return self._transition(command_id, CommandState.SENT, now=now, actor="daemon", detail="sending",
                                expect=(CommandState.QUEUED,), node=node, fence=fence)

    def claim_due(self, now: datetime, *, node: str, meters: Collection[str] | None = None, limit: int = 100,
                  fence: Fence | None = None) -> list[Command]:
        """:meth:`mark_sent` for the due commands (oldest first, at most ``limit``, only those for
        ``meters`` when given) in one transaction; returns the commands claimed, now ``sent``.
        Claim only what goes out right away: a claimed command whose node dies is settled by
        read-back, never sent (:meth:`in_flight`).  ``fence`` is asked once, for the whole claim."""
        if meters is not None and not meters:
            return []
        where, params = "state = ? AND next_try_ts <= ?", [CommandState.QUEUED.value, to_ms(now)]
        if meters is not None:
            clause, values = self._among("meter", meters)
            where += " AND " + clause
            params.append(values)
        sent = (CommandState.SENT.value, to_ms(now), node)
        set_sent = "state = ?, sent_ts = ?, node = ?, tries = tries + 1, detail = 'sending'"
        with self._write() as conn:
            if fence is not None and not fence(conn):
                raise LedgerError(f"node {node}: the lease of its channels is lost; no command claimed")
            if self.postgres:
                rows = conn.execute(f"UPDATE commands SET {set_sent} WHERE id IN (SELECT id FROM commands WHERE "
                                    f"{where} ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED) RETURNING *",
                                    (*sent, *params, limit)).fetchall()
            else:
                ids = [r[0] for r in conn.execute(f"SELECT id FROM commands WHERE {where} ORDER BY id LIMIT ?",
                                                  (*params, limit))]
                if not ids:
                    return []
                claimed, ids_json = self._among("id", ids)
                conn.execute(f"UPDATE commands SET {set_sent} WHERE {claimed}", (*sent, ids_json))
                rows = conn.execute(f"SELECT * FROM commands WHERE {claimed}", (ids_json,)).fetchall()
            commands = sorted((self._command(r) for r in rows), key=lambda c: c.id)
            for cmd in commands:
                self._audit(conn, now, "daemon", "command-sent", cmd.meter,
                            {"id": cmd.id, "kind": cmd.kind.value, "from": CommandState.QUEUED.value,
                             "detail": "sending", "node": node})
        return commands

    def finish(self, command_id: int, state: CommandState, *, now: datetime, detail: str,
               read_back: Mapping[str, bool] | None = None, actor: str = "daemon") -> Command:
        return self._transition(command_id, state, now=now, actor=actor, detail=detail, read_back=read_back,
                                expect=(CommandState.SENT, CommandState.QUEUED))

    def retry_later(self, command_id: int, *, now: datetime, next_try: datetime, detail: str) -> Command:
        """Back to the queue: the meter did not answer (offline); tried again at ``next_try``."""
        return self._transition(command_id, CommandState.QUEUED, now=now, actor="daemon", detail=detail,
                                expect=(CommandState.SENT,), next_try=next_try)

    def cancel(self, command_id: int, *, now: datetime, actor: str, reason: str) -> Command:
        if not reason or not reason.strip():
            raise LedgerError("cancelling a command needs a reason")
        return self._transition(command_id, CommandState.CANCELLED, now=now, actor=actor,
                                detail=f"cancelled by {actor}: {reason}", expect=(CommandState.QUEUED,))

    def expire(self, now: datetime) -> list[Command]:
        """Queued commands whose validity ran out (an offline meter): expired, never sent late."""
        rows = self._read("SELECT id FROM commands WHERE state = ? AND expires_ts <= ?",
                          (CommandState.QUEUED.value, to_ms(now)))
        done = []
        for r in rows:
            try:
                done.append(self._transition(r[0], CommandState.EXPIRED, now=now, actor="daemon",
                                             detail="expired before the meter could be reached",
                                             expect=(CommandState.QUEUED,)))
            except LedgerError:
                continue  # taken meanwhile
        return done

    def area_trips_since(self, since: datetime) -> dict[str, int]:
        """Automatic trips per area (queued, sent or confirmed) since ``since``: the hourly cap's count."""
        rows = self._read(
            "SELECT a.area, COUNT(*) FROM commands c JOIN accounts a ON a.account = c.account "
            "WHERE c.kind = 'trip' AND c.manual = 0 AND c.created_ts >= ? AND c.state IN "
            "('queued', 'sent', 'confirmed') GROUP BY a.area", (to_ms(since),))
        return {r[0]: r[1] for r in rows}

    # --- relay states and audit ----------------------------------------------------------------

    def record_relay(self, meter: str, flags: Mapping[str, bool], *, now: datetime) -> None:
        with self._write() as conn:
            conn.execute("INSERT INTO relay_states (meter, ts, flags) VALUES (?, ?, ?) ON CONFLICT (meter) DO "
                         "UPDATE SET ts = excluded.ts, flags = excluded.flags",
                         (meter, to_ms(now), json.dumps(dict(flags))))

    def observe_relays(self, observed: ObservedRelays, *, now: datetime,
                       refresh: timedelta = RELAY_REFRESH) -> list[RelayChange]:
        """Merge relay flags read by the regular polls into the stored relay states, in one
        transaction for the lot (one read, one batch of upserts, one of audit lines).

        A flag is taken only when it was read later than the stored state (a state is never moved
        back in time: a command's read-back recorded meanwhile wins) and than the newest poll of
        the same flags this store skipped (below); flags a poll did not read keep their stored
        values, and the state's time becomes that of the newest flag taken.  A flag that changes
        while the meter has no command under way (sent, or queued again after a try) is a change
        nobody commanded: audited as ``relay-observed`` with the states before and after, and
        returned.  A meter's first state is not a change.

        A poll that finds the stored flags unchanged writes nothing until its read time is
        ``refresh`` after the stored time (from half of it on for some meters, spread by the
        meter's address so the refreshes of a district are not all in one pass), or until it is
        the first read after a command of the meter failed: the stored time is when the flags
        were last confirmed, at most ``refresh`` before the newest poll that read them (see :data:`RELAY_REFRESH`; ``timedelta(0)`` writes every newer poll).  An
        unchanged state costs its share of the one read, no write: the stored flags are parsed
        once per distinct text, not once per row."""
        if not observed:
            return []
        changes: list[RelayChange] = []
        whole = refresh // _MS
        half = whole // 2
        seen = self._relays_seen
        confirmed: list[tuple[str, int]] = []
        with self._write() as conn:
            clause, values = self._among("meter", list(observed))
            sql = f"SELECT meter, ts, flags FROM relay_states WHERE {clause}"
            if self.postgres:  # rows are tuples already
                found = conn.execute(sql, (values,)).fetchall()
            else:  # plain tuples: 100,000 Row objects cost
                cur = conn.cursor()
                cur.row_factory = None
                found = cur.execute(sql, (values,)).fetchall()
            stored = {meter: (ts, text) for meter, ts, text in found}
            # meter -> when its last command failed, if since its oldest stored state: a state
            # confirmed after that is written, so its time shows the relay was read after the
            # failure (the alarm list settles a failed command by such a read)
            failed: dict[str, int] = dict(conn.execute(
                "SELECT meter, MAX(finished_ts) FROM commands WHERE state = ? AND finished_ts >= ? GROUP BY meter",
                (CommandState.FAILED.value, min(ts for ts, _ in stored.values())))) if stored else {}
            parsed: dict[str, dict[str, bool]] = {}  # a district's rows hold a handful of distinct texts
            rows: list[tuple[str, int, str]] = []
            moved: dict[str, RelayChange] = {}
            for meter, flags in observed.items():
                since, text = stored.get(meter, (None, None))
                before: dict[str, bool] = {}
                if since is None:
                    floor = -(1 << 63)
                else:
                    floor = max(since, seen.get(meter, since))  # a read-back may have been recorded since
                    if (known := parsed.get(text)) is None:
                        known = parsed[text] = json.loads(text)
                    before = known
                newest, same, last, ms = floor, True, None, 0
                for f, (at, v) in flags.items():
                    if at is not last:  # the flags of one status word share their time
                        last, ms = at, to_ms(at)
                        newest = max(newest, ms)
                    if ms > floor and same and before.get(f) != v:  # a flag not stored before is new
                        same = False
                if newest == floor:
                    continue  # nothing read later than the state
                if same and since is not None:  # confirmed: written only when its stored time is old
                    age = newest - since
                    if (age < half or age < whole - zlib.crc32(meter.encode()) % (half or 1)) and not (
                            since <= failed.get(meter, newest) < newest):
                        confirmed.append((meter, newest))
                        continue
                after = {**before, **{f: v for f, (at, v) in flags.items() if to_ms(at) > floor}}
                rows.append((meter, newest, json.dumps(after)))
                if not same and any(f in before and before[f] != v for f, v in after.items()):
                    moved[meter] = RelayChange(meter, from_ms(newest), dict(before), after)
            if rows:
                conn.executemany("INSERT INTO relay_states (meter, ts, flags) VALUES (?, ?, ?) ON CONFLICT (meter) "
                                 "DO UPDATE SET ts = excluded.ts, flags = excluded.flags", rows)
            if moved:
                clause, values = self._among("meter", list(moved))
                commanded = {r[0] for r in conn.execute(
                    f"SELECT DISTINCT meter FROM commands WHERE {clause} AND (state = ? OR (state = ? AND tries > 0))",
                    (values, CommandState.SENT.value, CommandState.QUEUED.value))}
                accounts = dict(conn.execute(f"SELECT meter, account FROM account_meters WHERE {clause}", (values,)))
                changes = [replace(c, account=accounts.get(meter)) for meter, c in moved.items()
                           if meter not in commanded]
                self._audit_many(conn, [self._audit_row(
                    now, "daemon", "relay-observed", c.meter,
                    {"account": c.account, "before": c.before, "after": c.after, "changed": c.changed, "read_at": c.at.isoformat(),
                     "reason": "changed with no command under way"}) for c in changes])
        seen.update(confirmed)  # once committed
        for meter, _, _ in rows:
            seen.pop(meter, None)  # the stored time is the newest read
        return changes

    def relay_state(self, meter: str) -> tuple[datetime, dict[str, bool]] | None:
        """The meter's stored relay state: (when its flags were last confirmed, flags), or None
        before the first read.  The time is that of a command's read-back or of a poll; polls
        that read the same flags again write nothing until it is :data:`RELAY_REFRESH` old, so
        it may be up to that much older than the newest poll (:meth:`observe_relays`)."""
        rows = self._read("SELECT ts, flags FROM relay_states WHERE meter = ?", (meter,))
        return (from_ms(rows[0][0]), json.loads(rows[0][1])) if rows else None

    # --- reads for the operator's console (meterd.api.console) --------------------------------

    def meter_owners(self, meters: Collection[str]) -> dict[str, str]:
        """meter -> its account, for these meters only (a page of them, not the district's
        table); a meter with no account is left out."""
        if not meters:
            return {}
        marks = ", ".join("?" for _ in meters)
        return {r[0]: r[1] for r in self._read(f"SELECT meter, account FROM account_meters WHERE meter IN ({marks})",
                                               list(meters))}

    def search_accounts(self, words: str, *, limit: int) -> list[AccountHit]:
        """Accounts whose number or customer's name contains ``words`` (case-insensitively for
        ASCII letters), by account number, at most ``limit``.  ``%`` and ``_`` are characters to
        find, not LIKE's wildcards."""
        like = "%" + words.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._read("SELECT account, customer, area, state FROM accounts WHERE LOWER(account) LIKE ? "
                          "ESCAPE '\\' OR LOWER(customer) LIKE ? ESCAPE '\\' ORDER BY account LIMIT ?",
                          (like, like, limit))
        return [AccountHit(r[0], r[1], r[2], r[3]) for r in rows]

    def audit_page(self, subjects: Collection[str], *, before: int | None = None, limit: int = 100) -> list[AuditRow]:
        """The audit lines about any of ``subjects``, newest first, at most ``limit``; with
        ``before``, only those with a smaller id (a page after one that ended with that id).  A
        detail that is not JSON comes as ``{"text": detail}``."""
        if not subjects:
            return []
        marks = ", ".join("?" for _ in subjects)
        sql = f"SELECT id, ts, actor, action, subject, detail FROM audit WHERE subject IN ({marks})"
        params: list[Any] = list(subjects)
        if before is not None:
            sql += " AND id < ?"
            params.append(before)
        out = []
        for r in self._read(sql + " ORDER BY id DESC LIMIT ?", (*params, limit)):
            try:
                detail = json.loads(r[5])
            except ValueError:
                detail = {"text": r[5]}
            out.append(AuditRow(r[0], from_ms(r[1]), r[2], r[3], r[4], detail))
        return out

    def audit(self, actor: str, action: str, subject: str, detail: Mapping[str, Any], *, now: datetime) -> None:
        with self._write() as conn:
            self._audit(conn, now, actor, action, subject, detail)

    def audit_log(self, *, subject: str | None = None, limit: int = 100) -> list[AuditRow]:
        sql, params = "SELECT * FROM audit", []
        if subject is not None:
            sql += " WHERE subject = ?"
            params.append(subject)
        rows = self._read(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
        return [AuditRow(r["id"], from_ms(r["ts"]), r["actor"], r["action"], r["subject"], json.loads(r["detail"]))
                for r in reversed(rows)]
