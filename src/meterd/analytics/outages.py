"""Outages (停电) for the service desk (95598): which areas are dark, since when, whose accounts.

The source text (SOURCES.md, the 95598 section) asks for outage information to reach the service
desk without waiting for a repair crew to phone in.  The acquisition system already knows: when an
area loses power, its meters go silent together (or report power-down, 停电事件), while a meter
that fails on its own goes silent alone.

Detection (:func:`detect_outages`, pure): for each area, a meter is *down* when it reports
power-down (now: the caller passes the meter's latest power event) or its last good reading is
older than ``silent_after``.  The silent meters' last good readings are grouped by time; the
largest group whose readings all fall within ``silent_after`` of each other goes with the meters
reporting power-down -- meters that died days earlier stay single-meter faults (they are
:mod:`meterd.analytics.anomalies`' no-data events) and are not part of the outage.  The area is
out when that group holds at least ``min_meters`` meters and ``min_share`` of the area's meters.  Meters never read (no last good reading, no power-down report) tell nothing and are left
out of the share.  ``started`` is the latest good reading in the group: power was lost after it.

An area whose concentrator or its mobile link fails also goes silent as a whole; a power-down
report is what tells an outage from a communication failure, and ``reported`` says how many
meters sent one.  ``silent_after`` must be longer than the area's polling interval, or a meter
between two polls looks silent.

:class:`OutageStore` keeps one open outage per area with the affected accounts, and closes it
when a check no longer finds the area out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final

from meterd.analytics.topology import Topology
from meterd.storage.sqlite import from_ms, to_ms
from meterd.storage.statedb import StateDatabase

_SHARE_PLACES: Final = Decimal("0.0001")


@dataclass(frozen=True)
class OutageFinding:
    unit: str
    started: datetime  # the latest good reading among the affected meters
    meters: tuple[str, ...]  # the meters that went dark together, sorted
    share: Decimal  # of the area's meters with anything known, 0..1 to 4 places
    reported: int = 0  # how many of them reported power-down (vs. merely silent)


def _largest_group(times: list[tuple[datetime, str]], window: timedelta) -> list[tuple[datetime, str]]:
    """The most meters whose times lie within ``window`` of each other (ties: the latest group)."""
    times.sort()
    best: list[tuple[datetime, str]] = []
    lo = 0
    for hi in range(len(times)):
        while times[hi][0] - times[lo][0] > window:
            lo += 1
        if hi - lo + 1 >= len(best):
            best = times[lo:hi + 1]
    return best


def detect_outages(
    topology: Topology,
    unit_status: Mapping[str, tuple[datetime | None, bool]],
    now: datetime,
    *,
    silent_after: timedelta = timedelta(minutes=30),
    min_share: Decimal = Decimal("0.6"),
    min_meters: int = 3,
    kinds: Collection[str] = ("area",),
) -> list[OutageFinding]:
    """Areas (units of ``kinds``) that are out at ``now``; ``unit_status`` maps a meter to (its
    last good reading, whether it reported power-down).  See the module docstring."""
    out = []
    for name, unit in sorted(topology.units.items()):
        if unit.kind not in kinds:
            continue
        known = 0
        silent: list[tuple[datetime, str]] = []
        reported: dict[str, datetime | None] = {}
        for meter in sorted({p.meter for p in topology.points_of(name)}):
            last, power_down = unit_status.get(meter, (None, False))
            if power_down:
                known += 1
                reported[meter] = last
            elif last is not None:  # never read and no report: nothing known, left out
                known += 1
                if now - last > silent_after:
                    silent.append((last, meter))
        group = _largest_group(silent, silent_after)
        meters = sorted([m for _, m in group] + list(reported))
        if not known or len(meters) < min_meters:
            continue
        share = (Decimal(len(meters)) / Decimal(known)).quantize(_SHARE_PLACES, ROUND_HALF_UP)
        if share < min_share:
            continue
        times = [t for t, _ in group] + [t for t in reported.values() if t is not None]
        started = max(times, default=now)
        out.append(OutageFinding(name, started, tuple(meters), share, len(reported)))
    return out


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS outages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    unit       TEXT    NOT NULL,
    started_ts INTEGER NOT NULL,
    ended_ts   INTEGER,
    meters     TEXT    NOT NULL,
    accounts   TEXT    NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS outages_open ON outages (unit) WHERE ended_ts IS NULL;
CREATE INDEX IF NOT EXISTS outages_started ON outages (started_ts);
"""


@dataclass(frozen=True)
class Outage:
    id: int
    unit: str
    started: datetime
    ended: datetime | None
    meters: tuple[str, ...]
    accounts: tuple[str, ...]


def _outage(row: tuple[Any, ...]) -> Outage:
    id_, unit, started, ended, meters, accounts = row
    return Outage(id_, unit, from_ms(started), None if ended is None else from_ms(ended),
                  tuple(json.loads(meters)), tuple(json.loads(accounts)))


_COLUMNS: Final = "id, unit, started_ts, ended_ts, meters, accounts"


class OutageStore(StateDatabase):
    """Outages in the state database; never two open for one unit (a partial unique index)."""

    SCHEMA = _SCHEMA
    ROWS = False  # plain tuples

    def open_count(self) -> int:
        """Outages going on now."""
        return sum(self._count_by("outages", "unit", "ended_ts IS NULL").values())

    def update(
        self,
        findings: Iterable[OutageFinding],
        now: datetime,
        accounts_of: Callable[[str], str | None],
    ) -> tuple[list[Outage], list[Outage]]:
        """Apply one full :func:`detect_outages` result; returns (outages opened, outages closed).

        A unit found out gets an outage opened (started as found, affected accounts listed via
        ``accounts_of``, meters without an account skipped), or its open one updated as more
        meters go dark (meters and accounts only grow; the start stays).  Every open outage whose
        unit is not among ``findings`` ended at ``now``: its meters are back.
        """
        found = {f.unit: f for f in findings}
        opened_ids, closed_ids = [], []
        with self._write() as conn:
            open_now = {unit: (i, json.loads(m), json.loads(a)) for i, unit, m, a in conn.execute(
                "SELECT id, unit, meters, accounts FROM outages WHERE ended_ts IS NULL")}
            for unit, f in sorted(found.items()):
                accounts = {a for a in map(accounts_of, f.meters) if a}
                if unit in open_now:
                    event_id, meters, known = open_now[unit]
                    conn.execute("UPDATE outages SET meters = ?, accounts = ? WHERE id = ?",
                                 (json.dumps(sorted(set(meters) | set(f.meters))),
                                  json.dumps(sorted(set(known) | accounts)), event_id))
                    continue
                cur = conn.execute(
                    "INSERT INTO outages (unit, started_ts, meters, accounts) VALUES (?, ?, ?, ?)",
                    (unit, to_ms(f.started), json.dumps(sorted(f.meters)), json.dumps(sorted(accounts))),
                )
                assert cur.lastrowid is not None
                opened_ids.append(cur.lastrowid)
            for unit, (event_id, _, _) in sorted(open_now.items()):
                if unit not in found:
                    closed_ids.append(event_id)
            conn.executemany("UPDATE outages SET ended_ts = ? WHERE id = ?", [(to_ms(now), i) for i in closed_ids])
            ids = opened_ids + closed_ids
            rows = {r[0]: _outage(r) for r in conn.execute(
                f"SELECT {_COLUMNS} FROM outages WHERE id IN ({','.join('?' * len(ids))})", ids)} if ids else {}
        return [rows[i] for i in opened_ids], [rows[i] for i in closed_ids]

    def outages(self, open_only: bool = False, *, limit: int = 1000) -> list[Outage]:
        """Outages, the latest start first."""
        sql = f"SELECT {_COLUMNS} FROM outages"
        if open_only:
            sql += " WHERE ended_ts IS NULL"
        sql += " ORDER BY started_ts DESC, id DESC LIMIT ?"
        return [_outage(r) for r in self._read(sql, (limit,))]
