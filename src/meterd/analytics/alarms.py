"""What becomes an alarm (pure): anomaly events, outages, terminals offline and a growing spool
turned into :class:`~meterd.storage.alarms.Condition` values for :meth:`AlarmStore.sync`.

Each builder takes what its source says holds *now* and returns the conditions with their keys;
the caller also tells the store which keys it checked, so an alarm whose condition is gone is
resolved (see :mod:`meterd.storage.alarms`).  Keys name the ongoing condition, not the poll:
``anomaly:<event id>`` (the event store keeps one open event per meter and kind),
``outage:<outage id>``, ``terminal:<channel>``, ``spool``.  Failed relay commands are built by
the API (:mod:`meterd.api.alarms`), which may read prepaid control's commands.

Anomaly events of kind ``command_failed`` are left out here: the command itself is the alarm
(``command_failed`` or ``relay_stuck``), not a second one beside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any, Final

from meterd.storage.alarms import AlarmKind, AlarmSeverity, Condition
from meterd.storage.anomalies import Event, Severity

__all__ = ["SPOOL_WINDOW", "TERMINAL_GRACE", "anomaly_conditions", "outage_conditions", "spool_condition", "spool_key",
           "terminal_conditions"]

SEVERITY: Final = {Severity.CRITICAL: AlarmSeverity.CRITICAL, Severity.WARNING: AlarmSeverity.MAJOR,
                   Severity.INFO: AlarmSeverity.MINOR}
SKIPPED_ANOMALIES: Final = frozenset({"command_failed"})  # the command's own alarm stands for it

# Words operators read in a title, per anomaly kind (the kind's value stays in the detail).
ANOMALY_TITLES: Final = {
    "voltage_out_of_limits": "voltage out of limits (电压越限)",
    "current_imbalance": "three-phase current imbalance (三相不平衡)",
    "no_data": "no data (无数据)",
    "reverse_energy": "reverse energy (反向电量)",
    "clock_drift": "meter clock drift (时钟超差)",
    "energy_while_relay_open": "energy while the relay is open (跳闸后有电量)",
    "implausible_reading": "implausible reading",
    "prepaid_failed": "prepaid charging failed",
    "implausible_advance": "implausible register advance (held)",
}

# A spool (readings waiting for a store that is down) is growing when, over the samples of the
# last SPOOL_WINDOW (at least SPOOL_MIN_SAMPLES), it never shrank and ended larger than it began.
SPOOL_WINDOW: Final = timedelta(minutes=5)
SPOOL_MIN_SAMPLES: Final = 3
# A terminal offline this long is an alarm: a DTU redials within a minute or two, and a daemon
# restart drops every link for a moment.
TERMINAL_GRACE: Final = timedelta(minutes=5)


def anomaly_conditions(events: Iterable[Event]) -> list[Condition]:
    """One condition per open anomaly event (closed events are no condition).  The detail leaves out
    what changes at every check (``last_seen``), so a sync rewrites an alarm only when it changed."""
    out = []
    for e in events:
        if e.closed is not None or str(e.kind) in SKIPPED_ANOMALIES:
            continue
        words = ANOMALY_TITLES.get(str(e.kind), str(e.kind).replace("_", " "))
        out.append(Condition(
            f"anomaly:{e.id}", AlarmKind.ANOMALY, e.meter, SEVERITY.get(Severity(e.severity), AlarmSeverity.MAJOR),
            f"meter {e.meter}: {words}", e.opened,
            {"anomaly_id": e.id, "anomaly_kind": str(e.kind), "text": e.detail, "opened": e.opened.isoformat()}))
    return out


def outage_conditions(outages: Iterable[Any]) -> list[Condition]:
    """One condition per outage going on (:class:`~meterd.analytics.outages.Outage`); critical,
    customers are without power."""
    out = []
    for o in outages:
        if o.ended is not None:
            continue
        out.append(Condition(
            f"outage:{o.id}", AlarmKind.OUTAGE, o.unit, AlarmSeverity.CRITICAL,
            f"outage in {o.unit} (停电): {len(o.meters)} meters silent", o.started,
            {"outage_id": o.id, "started": o.started.isoformat(), "meters": len(o.meters),
             "first_meters": list(o.meters[:20]), "accounts": len(o.accounts), "first_accounts": list(o.accounts[:20])}))
    return out


def terminal_conditions(terminals: Iterable[Mapping[str, Any]], now: datetime,
                        offline_since: Mapping[str, datetime], grace: timedelta = TERMINAL_GRACE) -> list[Condition]:
    """One condition per terminal offline for at least ``grace``: ``terminals`` as the API lists
    them (``id``, ``channel``, ``kind``, ``online``, ``meters``), ``offline_since`` channel -> since
    when it is offline (its last online interval's end, or since the master first polled it).  A
    terminal never polled is not known to be down; one that reconnects within ``grace`` (a DTU's
    redial, the daemon's own restart) is no alarm."""
    out = []
    for t in terminals:
        since = offline_since.get(t["channel"])
        if t["online"] or since is None or now - since < grace:
            continue
        out.append(Condition(
            f"terminal:{t['channel']}", AlarmKind.TERMINAL_OFFLINE, str(t["id"]), AlarmSeverity.MAJOR,
            f"terminal {t['id']} ({t['kind']}, channel {t['channel']}) offline: {t['meters']} meters unreachable",
            since, {"channel": t["channel"], "terminal_kind": t["kind"], "meters": t["meters"],
                    "offline_since": since.isoformat()}))
    return out


def spool_condition(samples: Sequence[tuple[datetime, int, int]], now: datetime, *,
                    node: str | None = None) -> Condition | None:
    """The spool's (time, records, bytes) samples, oldest first: a condition when, over the last
    :data:`SPOOL_WINDOW` (at least :data:`SPOOL_MIN_SAMPLES` samples), it never shrank and ended
    larger than it began.  A spool that drains, or stays as it is for a whole window, clears it.
    ``node``: among collector nodes, whose spool (each node has its own: key ``spool:<node>``)."""
    recent = [s for s in samples if s[0] >= now - SPOOL_WINDOW]
    if len(recent) < SPOOL_MIN_SAMPLES:
        return None
    first, last = recent[0], recent[-1]
    if last[1] <= first[1] or any(b[1] < a[1] for a, b in pairwise(recent)):
        return None
    key = spool_key(node)
    return Condition(key, AlarmKind.SPOOL_GROWING, key.replace(":", " "), AlarmSeverity.MAJOR,
                     f"the readings spool{'' if node is None else ' of node ' + node} keeps growing: {last[1]} records ({last[2]} bytes) waiting for the store",
                     first[0], {"records": last[1], "bytes": last[2], "records_before": first[1],
                                "since": first[0].isoformat()})


def spool_key(node: str | None = None) -> str:
    return "spool" if node is None else f"spool:{node}"
