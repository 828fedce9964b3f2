"""Anomaly events in the state database: what the detectors found, what the door refused, what a
prepaid pass could not do -- one table, at most one open event per (meter, kind).

The detectors (:mod:`meterd.analytics.anomalies`) open, keep and close their kinds by checking;
the door (:mod:`meterd.plausibility`, through the collector) and the prepaid engine record theirs
as they happen (:meth:`AnomalyStore.record`), and those stay open until an operator has seen them
or the condition is gone.  Kept in ``storage`` so that every layer above may write to it.
"""

from __future__ import annotations

import enum
import hashlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any, Final

from meterd.storage.sqlite import from_ms, to_ms
from meterd.storage.statedb import StateDatabase

EVIDENCE_PER_EVENT: Final = 50  # an open event keeps how it started and its latest evidence
#: How often a detection round adds to an open event's evidence at most (the usual collection
#: round): a meter read every minute does not make its chronic event's evidence rewritten every check.
EVIDENCE_EVERY: Final = timedelta(minutes=15)


class Kind(enum.StrEnum):
    VOLTAGE = "voltage_out_of_limits"  # 电压回路异常: 电压越限, 失压, 断相
    IMBALANCE = "current_imbalance"  # 电流回路异常: 三相负荷不平衡, CT open or shorted
    NO_DATA = "no_data"  # 电能表故障: 无数据
    REVERSE = "reverse_energy"  # 反向电量: wiring error or tampering on a consumer's meter
    CLOCK = "clock_drift"  # 时钟超差
    RELAY_OPEN_ENERGY = "energy_while_relay_open"  # 跳闸后仍有电量: stuck relay or bypass
    # recorded as they happen, not by the detectors:
    IMPLAUSIBLE = "implausible_reading"  # a value the meter cannot have produced (meterd.plausibility)
    PREPAID_FAILED = "prepaid_failed"  # charging or deciding the meter's account failed; skipped
    IMPLAUSIBLE_ADVANCE = "implausible_advance"  # ahead of the last charged value by more than it can carry: held
    COMMAND_FAILED = "command_failed"  # 控制失败: a relay command failed (a stuck relay: critical); control records it

    @classmethod
    def _missing_(cls, value: object) -> Kind | None:
        # A Q/GDW 1376.1 terminal's event record, one kind per ERC: "terminal.erc31" (the collector
        # records them, meterd.collector.gdw1376.events); a member made on first use.
        if isinstance(value, str) and value.startswith("terminal.erc") and value[12:].isdigit() and len(value) <= 15:
            member = str.__new__(cls, value)
            member._name_ = value.upper().replace(".", "_")
            member._value_ = value
            known = cls._value2member_map_.setdefault(value, member)
            assert isinstance(known, Kind)
            return known
        return None


# The kinds the detectors judge by checking (a check that finds nothing closes the event); the
# others are recorded by whoever met them and closed by them.
DETECTED: Final = (Kind.VOLTAGE, Kind.IMBALANCE, Kind.NO_DATA, Kind.REVERSE, Kind.CLOCK, Kind.RELAY_OPEN_ENERGY)


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


_RANK: Final = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}
#: Up to this many meters a write reads only their open events; past it, every open event at once.
_BY_METER: Final = 500


@dataclass(frozen=True)
class Finding:
    meter: str
    kind: Kind
    severity: Severity
    at: datetime  # when the condition began (as far as the readings show)
    detail: str
    evidence: tuple[dict[str, str], ...]  # {meter, quantity, timestamp (ISO), value}


# --- the event store ---------------------------------------------------------------------------

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS anomalies (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    meter        TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    severity     TEXT    NOT NULL,
    opened_ts    INTEGER NOT NULL,
    last_seen_ts INTEGER NOT NULL,
    closed_ts    INTEGER,
    detail       TEXT    NOT NULL,
    evidence     TEXT    NOT NULL DEFAULT '[]'
);
CREATE UNIQUE INDEX IF NOT EXISTS anomalies_open ON anomalies (meter, kind) WHERE closed_ts IS NULL;
CREATE INDEX IF NOT EXISTS anomalies_meter ON anomalies (meter, opened_ts);
CREATE INDEX IF NOT EXISTS anomalies_opened ON anomalies (opened_ts);
"""
# Each step after _SCHEMA (see meterd.storage.statedb).  1: an event's evidence in a table of its own,
# one row per event, so that a check touching ``last_seen`` of every open event does not rewrite
# every evidence with it (SQLite writes a whole row on any update); ``anomalies.evidence`` stays,
# empty ('[]').  ``evidence_seen``: a digest of the (quantity, timestamp) keys of the last evidence
# merged when all of them are in the event's evidence (then the same keys again change nothing and
# the evidence is neither read nor written), NULL when unknown.
_V1: Final = (
    "CREATE TABLE IF NOT EXISTS anomaly_evidence (event_id INTEGER NOT NULL PRIMARY KEY, evidence TEXT NOT NULL)",
    # rows already there belong to no event of this table: a PostgreSQL backup from before this step,
    # restored (pg_restore --clean) over a database after it, leaves the newer events' evidence behind
    "DELETE FROM anomaly_evidence",
    "INSERT INTO anomaly_evidence (event_id, evidence) SELECT id, evidence FROM anomalies WHERE evidence <> '[]'",
    "UPDATE anomalies SET evidence = '[]' WHERE evidence <> '[]'",
    "ALTER TABLE anomalies ADD COLUMN evidence_seen TEXT",
)
# 2: when an event's evidence was last written (``update(..., evidence_every=)``), NULL when unknown.
_V2: Final = ("ALTER TABLE anomalies ADD COLUMN evidence_ts INTEGER",)


@dataclass(frozen=True)
class Event:
    id: int
    meter: str
    kind: Kind
    severity: Severity
    opened: datetime
    last_seen: datetime
    closed: datetime | None
    detail: str
    evidence: tuple[dict[str, str], ...]


def _event(row: sqlite3.Row | tuple[Any, ...]) -> Event:
    id_, meter, kind, severity, opened, last_seen, closed, detail, evidence = row
    return Event(id_, meter, Kind(kind), Severity(severity), from_ms(opened), from_ms(last_seen),
                 None if closed is None else from_ms(closed), detail, tuple(json.loads(evidence)))


def _digest(evidence: Iterable[dict[str, str]]) -> str:
    """The (quantity, timestamp) keys of ``evidence`` as a short digest (order and repeats aside)."""
    keys = [f"{e['quantity']}\t{e['timestamp']}" for e in evidence]
    if len(keys) > 1:
        keys = sorted(set(keys))
    return hashlib.blake2b("\n".join(keys).encode(), digest_size=16).hexdigest()


def _seen(merged: Sequence[dict[str, str]], new: Sequence[dict[str, str]]) -> str | None:
    """The :func:`_digest` of ``new`` if every entry of it is in ``merged`` (the cap may have dropped
    some), else None: what ``evidence_seen`` keeps."""
    keys = {(e["quantity"], e["timestamp"]) for e in merged}
    return _digest(new) if all((e["quantity"], e["timestamp"]) in keys for e in new) else None


def _kind(kind: Kind | str) -> Kind:
    """``kind`` as a :class:`Kind` (``Kind(kind)`` costs more than the rest of a check's pair)."""
    return kind if type(kind) is Kind else Kind(kind)


def _due(event_id: int, written_ms: int, now_ms: int, every_ms: int) -> bool:
    """Whether ``now_ms`` is in a later window of ``every_ms`` than ``written_ms``, the event's windows
    shifted by a phase of its own (so that events opened together do not all take evidence in the
    same check)."""
    phase = event_id * 2654435761 % every_ms
    return (now_ms + phase) // every_ms > (written_ms + phase) // every_ms


def _merge_evidence(old: Sequence[dict[str, str]], new: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    seen = {(e["quantity"], e["timestamp"]) for e in old}
    out = list(old)
    for e in new:
        if (e["quantity"], e["timestamp"]) not in seen:
            seen.add((e["quantity"], e["timestamp"]))
            out.append(e)
    if len(out) > EVIDENCE_PER_EVENT:
        half = EVIDENCE_PER_EVENT // 2
        out = out[:half] + out[-(EVIDENCE_PER_EVENT - half):]
    return out


MAX_DETAIL: Final = 2000  # characters of an event's detail; the evidence keeps the values


def _detail(findings: Sequence[Finding]) -> str:
    """The findings' details joined, bounded: a meter flagged a thousand times in one batch
    must not make a megabyte row."""
    text = "; ".join(f.detail for f in findings[:10])
    if len(findings) > 10:
        text += f"; and {len(findings) - 10} more"
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL - 3] + "..."


_COLUMNS: Final = ("a.id, a.meter, a.kind, a.severity, a.opened_ts, a.last_seen_ts, a.closed_ts, a.detail, "
                   "COALESCE(e.evidence, '[]')")
_FROM: Final = "anomalies AS a LEFT JOIN anomaly_evidence AS e ON e.event_id = a.id"


class AnomalyStore(StateDatabase):
    """Anomaly events in the state database: at most one open event per (meter, kind)
    (a partial unique index says so), opened, kept up to date and closed by :meth:`update`."""

    SCHEMA = _SCHEMA
    STORE = "anomalies"
    MIGRATIONS = (_V1, _V2)
    ROWS = False  # plain tuples

    def open_count(self) -> int:
        """Anomaly events open now."""
        return sum(self._count_by("anomalies", "kind", "closed_ts IS NULL").values())

    def open_events(self) -> list[Event]:
        """The events open now, oldest first, *without* their evidence (``evidence`` is empty): for
        lists of thousands (the alarm list), where decoding every event's evidence would dominate."""
        rows = self._read("SELECT id, meter, kind, severity, opened_ts, last_seen_ts, detail FROM anomalies "
                          "WHERE closed_ts IS NULL ORDER BY id")
        return [Event(i, m, Kind(k), Severity(s), from_ms(o), from_ms(seen), None, d, ())
                for i, m, k, s, o, seen, d in rows]

    def record(self, findings: Iterable[Finding], now: datetime, *,
               resolved: Iterable[tuple[str, Kind]] = ()) -> tuple[list[Event], list[Event]]:
        """Open (or bring up to date) an event per finding, and close the open events of
        ``resolved`` (meter, kind) pairs that have no finding here; nothing else is touched.
        For the kinds recorded as they happen (not in :data:`DETECTED`)."""
        findings = list(findings)
        resolved = set(resolved) - {(f.meter, Kind(f.kind)) for f in findings}
        if not findings and not resolved:
            return [], []
        return self.update(findings, resolved, now)

    def settle(self, finding: Finding, now: datetime) -> Event | None:
        """Note ``finding`` in the open event of its (meter, kind) and close that event, in one
        transaction (a crash leaves the event open and un-noted, or noted and closed, never noted
        and open); the event closed, or None when none was open (nothing is written then)."""
        _, closed = self.update([finding], (), now, closing=True)
        return closed[0] if closed else None

    def update(
        self, findings: Iterable[Finding], checked: Iterable[tuple[str, Kind]], now: datetime, *,
        closing: bool = False, evidence_every: timedelta | None = None,
    ) -> tuple[list[Event], list[Event]]:
        """Apply one round of checks; returns (events opened, events closed).

        A finding opens an event unless one is open for its (meter, kind), which is then updated
        (severity and detail of the latest finding, ``last_seen`` = now, evidence appended up to a
        cap).  Every (meter, kind) in ``checked`` without a finding has its open event closed at
        ``now``.  Pairs of findings count as checked.  With ``closing`` the findings are the last
        word on open events: each open one is updated and closed, and none is opened.  With
        ``evidence_every`` (a detection round: :data:`EVIDENCE_EVERY`) an open event's evidence takes
        new entries once in a window of that length at most, the windows of events staggered (its
        severity, detail and last_seen are brought up to date every time).  All in one transaction.
        """
        grouped: dict[tuple[str, Kind], list[Finding]] = {}
        for f in findings:
            grouped.setdefault((f.meter, _kind(f.kind)), []).append(f)
        # A detection round checks every kind of every meter (600,000 pairs): set operations, each
        # kind named checked once (a Kind is equal to its value, and hashes alike)
        quiet = set(grouped) if closing else {*checked} - grouped.keys()
        for k in set(map(itemgetter(1), quiet)):
            _kind(k)
        meters = {m for m, _ in grouped} | set(map(itemgetter(0), quiet))
        now_ms = to_ms(now)
        every_ms = int(evidence_every.total_seconds() * 1000) if evidence_every else 0
        opened_ids: list[int] = []
        closed_ids: list[int] = []
        # What a check writes is what changed: an open event's severity, detail and last_seen in
        # one batch; its evidence read, merged and written only when the finding's evidence keys
        # are not the ones last merged in full (``evidence_seen``), and written only when changed.
        kept: list[tuple[str, str, int, int]] = []  # (severity, detail, last_seen, id)
        merging: dict[int, tuple[str, str, list[dict[str, str]]]] = {}  # id -> (severity, detail, evidence)
        with self._write() as conn:
            open_now = self._open_of(conn, meters)
            for (meter, kind), fs in grouped.items():
                severity = (Severity(fs[0].severity) if len(fs) == 1
                            else max((Severity(f.severity) for f in fs), key=_RANK.__getitem__)).value
                detail = _detail(fs)
                evidence = [e for f in fs for e in f.evidence]
                current = open_now.get((meter, kind))
                if current is None and closing:
                    continue
                if current is None:
                    merged = _merge_evidence([], evidence)
                    cur = conn.execute(
                        "INSERT INTO anomalies (meter, kind, severity, opened_ts, last_seen_ts, detail, evidence_seen,"
                        " evidence_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (meter, kind.value, severity, min(to_ms(min(f.at for f in fs)), now_ms), now_ms, detail,
                         _seen(merged, evidence) if evidence else None, now_ms if merged else None),
                    )
                    assert cur.lastrowid is not None
                    opened_ids.append(cur.lastrowid)
                    if merged:
                        conn.execute("INSERT INTO anomaly_evidence (event_id, evidence) VALUES (?, ?)",
                                     (cur.lastrowid, json.dumps(merged, ensure_ascii=False)))
                    continue
                event_id, seen, written = current
                if not evidence or seen == _digest(evidence):
                    kept.append((severity, detail, now_ms, event_id))  # the evidence has all of it already
                elif every_ms and written is not None and not closing and not _due(event_id, written, now_ms, every_ms):
                    kept.append((severity, detail, now_ms, event_id))  # its evidence took some in this window
                else:
                    merging[event_id] = (severity, detail, evidence)
            conn.executemany("UPDATE anomalies SET severity = ?, detail = ?, last_seen_ts = ? WHERE id = ?", kept)
            if merging:
                self._merge(conn, merging, now_ms)
            closed_ids += sorted(v[0] for key, v in open_now.items() if key in quiet)
            conn.executemany("UPDATE anomalies SET closed_ts = ? WHERE id = ?", [(now_ms, i) for i in closed_ids])
            opened = self._by_ids(conn, opened_ids)
            closed = self._by_ids(conn, closed_ids)
        return opened, closed

    @staticmethod
    def _merge(conn: sqlite3.Connection, merging: dict[int, tuple[str, str, list[dict[str, str]]]],
               now_ms: int) -> None:
        """Merge new evidence into these open events (id -> severity, detail, new evidence), bringing
        their severity, detail and last_seen up to date; an evidence is written only if it changed."""
        ids = sorted(merging)
        stored: dict[int, str] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            stored.update(conn.execute(f"SELECT event_id, evidence FROM anomaly_evidence WHERE event_id IN "
                                       f"({','.join('?' * len(chunk))})", chunk).fetchall())
        rows: list[tuple[str, str, int, str | None, int]] = []
        written: list[tuple[int, str]] = []
        for event_id in ids:
            severity, detail, new = merging[event_id]
            old = json.loads(stored.get(event_id, "[]"))
            merged = _merge_evidence(old, new)
            if merged != old:
                written.append((event_id, json.dumps(merged, ensure_ascii=False)))
            rows.append((severity, detail, now_ms, _seen(merged, new), event_id))
        conn.executemany("UPDATE anomalies SET severity = ?, detail = ?, last_seen_ts = ?, evidence_seen = ? "
                         "WHERE id = ?", rows)
        conn.executemany("UPDATE anomalies SET evidence_ts = ? WHERE id = ?", [(now_ms, i) for i, _ in written])
        conn.executemany("INSERT INTO anomaly_evidence (event_id, evidence) VALUES (?, ?) ON CONFLICT (event_id) "
                         "DO UPDATE SET evidence = excluded.evidence", written)

    @staticmethod
    def _open_of(conn: sqlite3.Connection, meters: set[str]) -> dict[tuple[str, str], tuple[int, str | None, int | None]]:
        """The open events (id, evidence_seen, evidence_ts) of ``meters`` by (meter, kind), without their
        evidence: read by meter for a few (a failed command, a settled one), whole for a detection
        round."""
        sql = "SELECT id, meter, kind, evidence_seen, evidence_ts FROM anomalies WHERE closed_ts IS NULL"
        if not meters:
            return {}
        if len(meters) > _BY_METER:
            rows = conn.execute(sql).fetchall()
        else:
            rows = conn.execute(f"{sql} AND meter IN ({','.join('?' * len(meters))})", sorted(meters)).fetchall()
        return {(m, k): (i, seen, ts) for i, m, k, seen, ts in rows}

    @staticmethod
    def _by_ids(conn: sqlite3.Connection, ids: Sequence[int]) -> list[Event]:
        out = []
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            out += conn.execute(
                f"SELECT {_COLUMNS} FROM {_FROM} WHERE a.id IN ({','.join('?' * len(chunk))}) ORDER BY a.id", chunk
            ).fetchall()
        return [_event(r) for r in out]

    def events(
        self,
        state: str | None = None,
        meter: str | None = None,
        kind: Kind | str | None = None,
        limit: int = 1000,
    ) -> list[Event]:
        """Events, newest first; ``state`` is "open", "closed" or None (both)."""
        where, params = [], []
        if state == "open":
            where.append("a.closed_ts IS NULL")
        elif state == "closed":
            where.append("a.closed_ts IS NOT NULL")
        elif state is not None:
            raise ValueError(f"state must be 'open', 'closed' or None, not {state!r}")
        if meter is not None:
            where.append("a.meter = ?")
            params.append(meter)
        if kind is not None:
            where.append("a.kind = ?")
            params.append(Kind(kind).value)
        sql = f"SELECT {_COLUMNS} FROM {_FROM}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY a.opened_ts DESC, a.id DESC LIMIT ?"
        return [_event(r) for r in self._read(sql, (*params, limit))]
