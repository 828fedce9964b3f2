"""A 1376.1 terminal's event records as meterd's own anomalies.

ERC14 (the terminal lost power) feeds outage detection as readings (:func:`.archive.read_events`);
every other record becomes an anomaly of kind ``terminal.erc<N>`` (the anomaly store keeps one open
event per subject and kind):

- the subject is the meter the record names (its pn, mapped through the channel's meters), else
  the terminal (``RRRR-TTTT``) -- a pn the master has no meter for stays with the terminal and says
  so;
- the detail is the record described (and the terminal that reported it), the evidence the decoded
  fields, one per field; a record meterd does not decode keeps its raw bytes in hex;
- a record that says its condition *ended* (ERC10, ERC13, ERC31 with D15 = 0) closes the open event
  of that subject and kind instead of opening one.

Severity: voltage loss or phase break and the terminal's own faults are critical, a meter that
stops answering or reports a fault a warning, initialisation and parameter changes information;
an ERC meterd does not decode is a warning (someone should look at it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, tzinfo
from typing import Final

from meterd.clock import CST
from meterd.protocols.gdw1376.events import (
    ERC_POWER,
    EventRecord,
    InitVersionChange,
    MeterFault,
    ParameterChange,
    ReadFailure,
    TerminalEvent,
    TerminalFault,
    VoltageFault,
    erc_name,
)
from meterd.storage.anomalies import Finding, Kind, Severity

SEVERITY: Final[dict[type, Severity]] = {
    InitVersionChange: Severity.INFO,
    ParameterChange: Severity.INFO,
    VoltageFault: Severity.CRITICAL,
    MeterFault: Severity.WARNING,
    TerminalFault: Severity.CRITICAL,
    ReadFailure: Severity.WARNING,
    EventRecord: Severity.WARNING,
}


def event_kind(erc: int) -> Kind:
    """The anomaly kind of a terminal's event ``erc`` (``terminal.erc31``)."""
    return Kind(f"terminal.erc{erc}")


def event_findings(
    records: Sequence[TerminalEvent],
    terminal: str,
    pns: Mapping[str, int],
    now: datetime,
    *,
    zone: tzinfo = CST,
) -> tuple[list[Finding], list[tuple[str, Kind]]]:
    """The anomalies ``records`` (read from ``terminal``, whose meters are ``pns``: address -> pn)
    open, and the (subject, kind) pairs whose condition their last record says has ended -- to be
    closed *after* the findings are recorded (a condition that began and ended between two reads is
    seen, then closed).  ERC14 is left out."""
    meter_of = {pn: address for address, pn in pns.items()}
    findings: list[Finding] = []
    last: dict[tuple[str, Kind], bool] = {}  # (subject, kind) -> its last record ended it
    for record in records:
        if record.erc == ERC_POWER:
            continue
        kind = event_kind(record.erc)
        pn = record.pn
        subject = meter_of.get(pn, terminal) if pn else terminal
        where = f"terminal {terminal}" + (f", {_point(pn, meter_of)}" if pn else "")
        if getattr(record, "began", True) is False:
            last[(subject, kind)] = True
            continue
        last[(subject, kind)] = False
        at = _aware(record.at, zone) or now
        detail = f"ERC{record.erc} {erc_name(record.erc)}: {record.describe()} ({where})"
        evidence = tuple({"meter": subject, "quantity": f"erc{record.erc}.{name}", "timestamp": at.isoformat(),
                          "value": value[:200]} for name, value in record.fields().items())
        findings.append(Finding(subject, kind, SEVERITY.get(type(record), Severity.WARNING), min(at, now),
                                detail, evidence))
    return findings, [pair for pair, ended in last.items() if ended]


def _point(pn: int, meter_of: dict[int, str]) -> str:
    meter = meter_of.get(pn)
    return f"p{pn} (meter {meter})" if meter else f"p{pn} (no meter of meterd's at that pn)"


def _aware(naive: datetime | None, zone: tzinfo) -> datetime | None:
    """A record's time (the terminal's clock, site local) as an instant."""
    return naive.replace(tzinfo=zone) if naive is not None else None
