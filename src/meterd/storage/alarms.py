"""Alarms operators work, in the state database: one row per alarm, its history, and the audit
line of every operator's step written in the same transaction.

An alarm is raised for a *condition* -- an open anomaly event, a relay command that failed, an
outage, a terminal offline, a spool that keeps growing -- named by a key (``anomaly:17``,
``command:000000000001:trip``, ``terminal:dtu-7``, ``spool``).  :meth:`AlarmStore.sync` is fed
the conditions that hold now and the keys that were checked; it raises an alarm for a condition
that has none, refreshes the one it has, and resolves the alarms whose condition was checked and
is gone.  So the same ongoing condition is one alarm however often it is checked: a partial
unique index allows one *ongoing* alarm per key.  An alarm closed by an operator while its
condition goes on stays closed (and ongoing): it is not raised again until the condition has
cleared and come back.  A cleared condition resolves its alarm (closed, ``resolved`` in the
history by ``meterd``); nothing is deleted, so the history stays.

Operators' steps (:meth:`AlarmStore.act`): ``acknowledge`` (open -> acknowledged), ``assign``
(sets the assignee; the state is unchanged) and ``close`` (open or acknowledged -> closed, a
comment required).  A step the alarm's state does not allow raises :class:`AlarmConflictError`;
each step is one transaction with its history row and its ``audit`` row.

Kept in ``storage`` beside the anomaly events, so that the API and the CLI use one store.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from meterd.errors import MeterdError
from meterd.storage.sqlite import from_ms, to_ms
from meterd.storage.statedb import StateDatabase

MAX_COMMENT: Final = 2000  # characters of an operator's comment
MAX_NAME: Final = 64  # characters of an operator's or assignee's name
MAX_TITLE: Final = 300
MAX_DETAIL_JSON: Final = 8000  # bytes of an alarm's detail document
SYSTEM: Final = "meterd"  # who raises and resolves alarms


class AlarmKind(enum.StrEnum):
    ANOMALY = "anomaly"
    COMMAND_FAILED = "command_failed"
    RELAY_STUCK = "relay_stuck"
    OUTAGE = "outage"
    TERMINAL_OFFLINE = "terminal_offline"
    SPOOL_GROWING = "spool_growing"


class AlarmSeverity(enum.StrEnum):
    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"


class AlarmState(enum.StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    CLOSED = "closed"


class Action(enum.StrEnum):
    RAISED = "raised"
    ACKNOWLEDGED = "acknowledged"
    ASSIGNED = "assigned"
    CLOSED = "closed"
    RESOLVED = "resolved"


class AlarmError(MeterdError):
    """An operator's step refused; nothing was written."""


class AlarmNotFoundError(AlarmError, LookupError):
    pass


class AlarmConflictError(AlarmError):
    """The step does not fit the alarm's state (acknowledging twice, closing a closed alarm)."""


class AlarmInputError(AlarmError, ValueError):
    """A comment, name or assignee that is missing, too long or not text."""


@dataclass(frozen=True, slots=True)
class Condition:
    """What holds now: ``key`` names the condition (one ongoing alarm per key), ``since`` is when
    it began as far as its source knows."""

    key: str
    kind: AlarmKind
    subject: str
    severity: AlarmSeverity
    title: str
    since: datetime
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Step:
    at: datetime
    by: str
    action: Action
    comment: str | None


@dataclass(frozen=True, slots=True)
class Alarm:
    id: int
    key: str
    kind: AlarmKind
    subject: str
    severity: AlarmSeverity
    title: str
    detail: dict[str, Any]
    raised_at: datetime
    state: AlarmState
    assignee: str | None
    ongoing: bool
    closed_at: datetime | None
    history: tuple[Step, ...] = ()


def alarm_doc(a: Alarm) -> dict[str, Any]:
    """The alarm as the API and ``meterd alarms --json`` give it (times ISO 8601, UTC)."""
    return {"id": a.id, "kind": a.kind.value, "subject": a.subject, "severity": a.severity.value, "title": a.title,
            "detail": a.detail, "raised_at": a.raised_at.isoformat(), "state": a.state.value, "assignee": a.assignee,
            "history": [{"at": s.at.isoformat(), "by": s.by, "action": s.action.value, "comment": s.comment}
                        for s in a.history]}


# Version 1 of the alarm tables (see meterd.storage.statedb: a new database is migrated from 0 like
# an old one).  ``audit`` is the prepaid store's table (meterd.control.state), created here too,
# identically, so that a step and its audit line are one transaction whichever store came first.
_V1: Final = (
    """CREATE TABLE IF NOT EXISTS alarms (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    cond_key    TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    severity    TEXT    NOT NULL,
    title       TEXT    NOT NULL,
    detail      TEXT    NOT NULL DEFAULT '{}',
    raised_ts   INTEGER NOT NULL,
    updated_ts  INTEGER NOT NULL,
    state       TEXT    NOT NULL,
    assignee    TEXT,
    ongoing     INTEGER NOT NULL DEFAULT 1,
    closed_ts   INTEGER
)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS alarms_ongoing ON alarms (cond_key) WHERE ongoing = 1",
    "CREATE INDEX IF NOT EXISTS alarms_state ON alarms (state, id)",
    "CREATE INDEX IF NOT EXISTS alarms_subject ON alarms (subject, id)",
    """CREATE TABLE IF NOT EXISTS alarm_history (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    alarm    INTEGER NOT NULL,
    ts       INTEGER NOT NULL,
    actor    TEXT    NOT NULL,
    action   TEXT    NOT NULL,
    comment  TEXT
)""",
    "CREATE INDEX IF NOT EXISTS alarm_history_alarm ON alarm_history (alarm, id)",
    """CREATE TABLE IF NOT EXISTS audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail  TEXT NOT NULL DEFAULT '{}'
)""",
    "CREATE INDEX IF NOT EXISTS audit_subject ON audit (subject, id)",
)

_COLUMNS: Final = ("id, cond_key, kind, subject, severity, title, detail, raised_ts, state, assignee, ongoing, "
                   "closed_ts")
_ACTIVE: Final = (AlarmState.OPEN.value, AlarmState.ACKNOWLEDGED.value)


def _alarm(row: Sequence[Any], history: tuple[Step, ...] = ()) -> Alarm:
    id_, key, kind, subject, severity, title, detail, raised, state, assignee, ongoing, closed = row
    return Alarm(int(id_), key, AlarmKind(kind), subject, AlarmSeverity(severity), title, json.loads(detail),
                 from_ms(raised), AlarmState(state), assignee, bool(ongoing), None if closed is None else from_ms(closed),
                 history)


def _detail_json(detail: Mapping[str, Any]) -> str:
    text = json.dumps(dict(detail), default=str, ensure_ascii=False, sort_keys=True)
    if len(text) > MAX_DETAIL_JSON:  # a source's detail is bounded: a runaway text must not make a huge row
        text = json.dumps({"truncated": text[:MAX_DETAIL_JSON - 200]}, ensure_ascii=False)
    return text


def _looks(row: Sequence[Any]) -> tuple[Any, ...]:
    """What a sync may change of an ongoing alarm (a row of ``AlarmStore._ONGOING``): severity,
    title, detail, kind (a failed command's alarm becomes ``relay_stuck`` when the relay is found stuck)."""
    return row[2], row[3], row[4], row[6]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def clean_text(value: object, what: str, *, limit: int, required: bool) -> str | None:
    """An operator's comment or name: text, stripped, at most ``limit`` characters, no control
    characters but newline and tab; None when not given and not ``required``."""
    if value is None:
        if required:
            raise AlarmInputError(f"{what} is required")
        return None
    if not isinstance(value, str):
        raise AlarmInputError(f"{what} must be text, not {type(value).__name__}")
    text = value.strip()
    if not text:
        if required:
            raise AlarmInputError(f"{what} is required and must not be empty")
        return None
    if len(text) > limit:
        raise AlarmInputError(f"{what} has {len(text)} characters, at most {limit}")
    bad = next((c for c in text if (ord(c) < 32 and c not in "\n\t") or ord(c) == 127), None)
    if bad is not None:
        raise AlarmInputError(f"{what} holds a control character (U+{ord(bad):04X})")
    return text


class AlarmStore(StateDatabase):
    """The alarms and their history (see the module docstring)."""

    STORE = "alarms"
    MIGRATIONS = (_V1,)
    ROWS = False

    # --- conditions in, alarms raised and resolved ------------------------------------------------

    _ONGOING: Final = "SELECT id, cond_key, severity, title, detail, state, kind FROM alarms WHERE ongoing = 1"

    def sync(self, conditions: Iterable[Condition], checked: Iterable[str], now: datetime
             ) -> tuple[list[int], list[int]]:
        """Apply what the sources found: an alarm raised for each condition without an ongoing one
        (its title, severity and detail refreshed otherwise), and the ongoing alarm of each key in
        ``checked`` that has no condition resolved.  Returns (ids raised, ids resolved).

        The changes are worked out from a plain read first; only when there are some is the write
        transaction taken (and the read done again inside it), so a sync that finds everything as
        it was -- the usual case, every 15 s -- holds no write lock."""
        found: dict[str, tuple[Condition, str, str]] = {}
        for c in conditions:
            if c.key not in found:
                found[c.key] = (c, _clip(c.title, MAX_TITLE), _detail_json(c.detail))
        quiet = set(checked) - found.keys()
        if not self._changes(self._read(self._ONGOING), found, quiet):
            return [], []
        with self._write() as conn:
            return self._apply(conn, conn.execute(self._ONGOING).fetchall(), found, quiet, to_ms(now))

    @staticmethod
    def _changes(rows: Iterable[Sequence[Any]], found: Mapping[str, tuple[Condition, str, str]],
                 quiet: set[str]) -> bool:
        ongoing = {r[1]: r for r in rows}
        if any(key in ongoing for key in quiet):
            return True
        for key, (c, title, detail) in found.items():
            current = ongoing.get(key)
            if current is None or _looks(current) != (c.severity.value, title, detail, c.kind.value):
                return True
        return False

    def _apply(self, conn: Any, rows: Iterable[Sequence[Any]], found: Mapping[str, tuple[Condition, str, str]],
               quiet: set[str], now_ms: int) -> tuple[list[int], list[int]]:
        """The changes as a few batches (PostgreSQL pipelines a batch: one wait, not one per alarm)."""
        ongoing = {r[1]: r for r in rows}  # key -> (id, key, severity, title, detail, state, kind)
        new: list[tuple[Any, ...]] = []
        changed: list[tuple[Any, ...]] = []
        for key, (c, title, detail) in found.items():
            current = ongoing.get(key)
            if current is None:
                new.append((key, c.kind.value, c.subject, c.severity.value, title, detail,
                            min(to_ms(c.since), now_ms), now_ms, AlarmState.OPEN.value))
            elif _looks(current) != (c.severity.value, title, detail, c.kind.value):
                changed.append((c.severity.value, title, detail, c.kind.value, now_ms, current[0]))
        history: list[tuple[Any, ...]] = []
        raised: list[int] = []
        if new:
            conn.executemany("INSERT INTO alarms (cond_key, kind, subject, severity, title, detail, raised_ts, "
                             "updated_ts, state, ongoing) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)", new)
            ids = {key: i for i, key in conn.execute(  # the new ones among them: one ongoing alarm per key
                "SELECT id, cond_key FROM alarms WHERE ongoing = 1 AND updated_ts = ?", (now_ms,))}
            for key, *_, since, _updated, _state in new:
                raised.append(ids[key])
                history.append((ids[key], since, SYSTEM, Action.RAISED.value, None))
        if changed:
            conn.executemany("UPDATE alarms SET severity = ?, title = ?, detail = ?, kind = ?, updated_ts = ? "
                             "WHERE id = ?", changed)
        resolved = [ongoing[key] for key in quiet if key in ongoing]
        if resolved:
            conn.executemany("UPDATE alarms SET ongoing = 0, updated_ts = ? WHERE id = ?",
                             [(now_ms, r[0]) for r in resolved if r[5] == AlarmState.CLOSED])
            conn.executemany("UPDATE alarms SET ongoing = 0, state = ?, closed_ts = ?, updated_ts = ? WHERE id = ?",
                             [(AlarmState.CLOSED.value, now_ms, now_ms, r[0]) for r in resolved
                              if r[5] != AlarmState.CLOSED])
            history += [(r[0], now_ms, SYSTEM, Action.RESOLVED.value, "the condition cleared") for r in resolved]
        if history:
            conn.executemany("INSERT INTO alarm_history (alarm, ts, actor, action, comment) VALUES (?, ?, ?, ?, ?)",
                             history)
        return sorted(raised), sorted(r[0] for r in resolved)

    def ongoing_keys(self, kinds: Iterable[AlarmKind] | None = None) -> dict[str, AlarmKind]:
        """The keys of the ongoing alarms (their condition not seen to clear), with their kind."""
        wanted = None if kinds is None else {AlarmKind(k).value for k in kinds}
        return {key: AlarmKind(kind) for key, kind in self._read("SELECT cond_key, kind FROM alarms WHERE ongoing = 1")
                if wanted is None or kind in wanted}

    # --- operators' steps ----------------------------------------------------------------------------

    def act(self, alarm_id: int, action: Action | str, *, actor: str, now: datetime, comment: object = None,
            to: object = None, audit: Mapping[str, Any] | None = None) -> Alarm:
        """``acknowledge``, ``assign`` (``to``) or ``close`` (``comment`` required) alarm
        ``alarm_id`` as ``actor``; the history row and an ``alarm-<action>`` audit line (with
        ``audit`` merged into its detail) in one transaction.  Returns the alarm as it is now."""
        action = Action(action)
        if action not in (Action.ACKNOWLEDGED, Action.ASSIGNED, Action.CLOSED):
            raise AlarmInputError(f"{action} is not an operator's step (acknowledged, assigned, closed)")
        who = clean_text(actor, "the operator", limit=MAX_NAME, required=True)
        note = clean_text(comment, "comment", limit=MAX_COMMENT, required=action is Action.CLOSED)
        assignee = clean_text(to, "to (the assignee)", limit=MAX_NAME, required=action is Action.ASSIGNED)
        if assignee is not None and "\n" in assignee:
            raise AlarmInputError("to (the assignee) must be one line")
        assert who is not None
        if not 0 < alarm_id < 2**63:  # no such row; and SQLite cannot even bind a larger number
            raise AlarmNotFoundError(f"no alarm #{alarm_id}")
        now_ms = to_ms(now)
        with self._write() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM alarms WHERE id = ?", (alarm_id,)).fetchone()
            if row is None:
                raise AlarmNotFoundError(f"no alarm #{alarm_id}")
            alarm = _alarm(row)
            if alarm.state is AlarmState.CLOSED:
                raise AlarmConflictError(f"alarm #{alarm_id} is closed already"
                                         + (" (its condition cleared)" if not alarm.ongoing else ""))
            if action is Action.ACKNOWLEDGED:
                if alarm.state is AlarmState.ACKNOWLEDGED:
                    raise AlarmConflictError(f"alarm #{alarm_id} is acknowledged already")
                conn.execute("UPDATE alarms SET state = ?, updated_ts = ? WHERE id = ?",
                             (AlarmState.ACKNOWLEDGED.value, now_ms, alarm_id))
            elif action is Action.ASSIGNED:
                if alarm.assignee == assignee:
                    raise AlarmConflictError(f"alarm #{alarm_id} is assigned to {assignee} already")
                conn.execute("UPDATE alarms SET assignee = ?, updated_ts = ? WHERE id = ?", (assignee, now_ms, alarm_id))
            else:
                conn.execute("UPDATE alarms SET state = ?, closed_ts = ?, updated_ts = ? WHERE id = ?",
                             (AlarmState.CLOSED.value, now_ms, now_ms, alarm_id))
            conn.execute("INSERT INTO alarm_history (alarm, ts, actor, action, comment) VALUES (?, ?, ?, ?, ?)",
                         (alarm_id, now_ms, who, action.value, note))
            detail = {"id": alarm_id, "kind": alarm.kind.value, "key": alarm.key, "from": alarm.state.value,
                      "comment": note, **({"to": assignee, "before": alarm.assignee} if assignee is not None else {}),
                      **(audit or {})}
            verb = {Action.ACKNOWLEDGED: "acknowledge", Action.ASSIGNED: "assign", Action.CLOSED: "close"}[action]
            conn.execute("INSERT INTO audit (ts, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)",
                         (now_ms, who, f"alarm-{verb}", alarm.subject,
                          json.dumps(detail, default=str, ensure_ascii=False)))
            return self._with_history(conn, [conn.execute(f"SELECT {_COLUMNS} FROM alarms WHERE id = ?",
                                                          (alarm_id,)).fetchone()])[0]

    # --- reading ---------------------------------------------------------------------------------------

    @staticmethod
    def _with_history(conn: Any, rows: Sequence[Sequence[Any]]) -> list[Alarm]:
        ids = [int(r[0]) for r in rows]
        steps: dict[int, list[Step]] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            for alarm, ts, actor, action, comment in conn.execute(
                    f"SELECT alarm, ts, actor, action, comment FROM alarm_history WHERE alarm IN "
                    f"({','.join('?' * len(chunk))}) ORDER BY id", chunk):
                steps.setdefault(int(alarm), []).append(Step(from_ms(ts), actor, Action(action), comment))
        return [_alarm(r, tuple(steps.get(int(r[0]), ()))) for r in rows]

    def alarm(self, alarm_id: int) -> Alarm | None:
        with self._lock:
            rows = self._conn.execute(f"SELECT {_COLUMNS} FROM alarms WHERE id = ?", (alarm_id,)).fetchall()
            return self._with_history(self._conn, rows)[0] if rows else None

    @staticmethod
    def _where(kind: AlarmKind | str | None, subject: str | None) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if kind is not None:
            where.append("kind = ?")
            params.append(AlarmKind(kind).value)
        if subject is not None:
            where.append("subject = ?")
            params.append(subject)
        return where, params

    def alarms(self, *, state: AlarmState | str | None = None, kind: AlarmKind | str | None = None,
               subject: str | None = None, limit: int = 100, before: int | None = None) -> tuple[list[Alarm], int | None]:
        """Alarms, the newest raised first, with their history; ``before``: only ids below it (the
        next page).  Returns (alarms, the ``before`` of the next page or None)."""
        where, params = self._where(kind, subject)
        if state is not None:
            where.append("state = ?")
            params.append(AlarmState(state).value)
        if before is not None:
            where.append("id < ?")
            params.append(before)
        sql = f"SELECT {_COLUMNS} FROM alarms" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY id DESC LIMIT ?"
        with self._lock:
            rows = self._conn.execute(sql, (*params, limit + 1)).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            found = self._with_history(self._conn, rows)
        return found, (found[-1].id if more and found else None)

    def counts(self, *, kind: AlarmKind | str | None = None, subject: str | None = None) -> dict[str, int]:
        """Alarms per state (every state named, 0 when none)."""
        where, params = self._where(kind, subject)
        sql = "SELECT state, COUNT(*) FROM alarms" + (" WHERE " + " AND ".join(where) if where else "")
        out = {s.value: 0 for s in AlarmState}
        out.update({str(s): int(n) for s, n in self._read(sql + " GROUP BY state", params)})
        return out
