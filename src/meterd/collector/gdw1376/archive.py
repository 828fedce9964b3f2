"""After a login: the terminal's meter archive checked and downloaded (AFN 0A / 04 F10); events read
by pointer (AFN 0E F1), ERC14 as power-down reports, the others as anomalies (:mod:`.events`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, tzinfo
from typing import Any, Final

from meterd.clock import CST, local_text
from meterd.collector.channel import (
    URGENT,
    TransactionError,
)
from meterd.collector.gdw1376.channel import GdwChannel
from meterd.collector.gdw1376.events import event_findings
from meterd.collector.gdw1376.rounds import _local
from meterd.errors import MeterdError, ProtocolError
from meterd.protocols.gdw1376.catalogue import (
    PROTOCOL_645_1997,
    PROTOCOL_645_2007,
    ArchiveQuery,
    EventLog,
    EventPointers,
    MeterArchive,
    MeterEntry,
)
from meterd.protocols.gdw1376.events import PowerOnOff, TerminalEvent
from meterd.protocols.gdw1376.frame import (
    Afn,
    EventCounter,
)
from meterd.protocols.gdw1376.messages import (
    unit,
)
from meterd.protocols.readspec import DLT645_1997
from meterd.readings import Quality, Reading
from meterd.storage.anomalies import Finding, Kind

log = logging.getLogger(__name__)

EventSink = Callable[[list[Finding], list[tuple[str, Kind]]], None]
"""Where a terminal's events go as anomalies: (findings to record, (subject, kind) pairs ended)."""

# --- after login: the meter archive, events ----------------------------------------------------------

BAUD_OF: Final = {DLT645_1997: 1200}
EVENT_READ_TRIES: Final = 3  # failed reads of the same events before they are skipped
DEFAULT_BAUD: Final = 2400
# ERC14 records of one read that become power-down reports (the newest): each is a reading per meter
# behind the terminal, and a terminal whose counters claim 255 new events at every read would make
# 2 x 255 x its meters readings a round.  The rest are logged (once a minute), not reported.
MAX_POWER_RECORDS: Final = 16
# A power-off/on time later than this past the master's clock is not a power-down report (a
# terminal's clock in 2099); logged once a minute.
POWER_CLOCK_SLACK: Final = timedelta(days=1)


def archive_entries(channel: GdwChannel, protocols: Mapping[str, str]) -> list[MeterEntry]:
    """The archive the config says the terminal should hold: one entry per meter, seq = pn."""
    out = []
    for address, pn in sorted(channel.pns.items(), key=lambda kv: kv[1]):
        protocol = protocols.get(address, "dlt645-2007")
        out.append(MeterEntry(seq=pn, pn=pn, port=channel.port, baud=BAUD_OF.get(protocol, DEFAULT_BAUD),
                              protocol=PROTOCOL_645_1997 if protocol == DLT645_1997 else PROTOCOL_645_2007,
                              address=address))
    return out


def _same(a: MeterEntry, b: MeterEntry) -> bool:
    return (a.pn, a.port, a.baud, a.protocol, a.address) == (b.pn, b.port, b.baud, b.protocol, b.address)


def _show(e: MeterEntry | None) -> str:
    if e is None:
        return "none"
    return f"pn {e.pn} meter {e.address} protocol {e.protocol} port {e.port} baud {e.baud or 'default'}"


ARCHIVE_QUERY_BATCH: Final = 16


async def sync_archive(channel: GdwChannel, protocols: Mapping[str, str], *,
                       audit: Callable[[str, str, dict[str, Any]], None] | None = None) -> list[tuple[int, str, str]]:
    """Query the terminal's archive (AFN 0A F10) for the configured meters, download what differs
    (AFN 04 F10).  The differences as (pn, terminal's entry, config's entry)."""
    wanted = archive_entries(channel, protocols)
    held: dict[int, MeterEntry] = {}
    for i in range(0, len(wanted), ARCHIVE_QUERY_BATCH):
        seqs = tuple(e.seq for e in wanted[i:i + ARCHIVE_QUERY_BATCH])
        reply = await channel.request(Afn.QUERY_PARAMETERS, [unit(0, 10, ArchiveQuery(seqs))])
        for _, fn, value in reply.items():
            if fn == 10 and isinstance(value, MeterArchive):
                held.update({e.seq: e for e in value.entries})
    diffs = [(e.pn, _show(held.get(e.seq)), _show(e)) for e in wanted
             if e.seq not in held or not _same(held[e.seq], e)]
    if not diffs:
        log.info("channel %s: terminal %s holds the configured meter archive (%d meters)", channel.name,
                 channel.address.key, len(wanted))
        return []
    for pn, theirs, ours in diffs:
        log.warning("channel %s: terminal %s archive differs at pn %d: terminal has %s, config says %s; downloading",
                    channel.name, channel.address.key, pn, theirs, ours)
    changed = [e for e in wanted if e.seq not in held or not _same(held[e.seq], e)]
    for i in range(0, len(changed), ARCHIVE_QUERY_BATCH):
        await channel.request(Afn.SET_PARAMETERS, [unit(0, 10, MeterArchive(tuple(changed[i:i + ARCHIVE_QUERY_BATCH])))],
                              pw=channel.pw("AFN 04"), priority=URGENT)
    if audit is not None:
        audit("archive_download", f"terminal {channel.address.key}",
              {"channel": channel.name, "differences": [{"pn": pn, "terminal": t, "config": c} for pn, t, c in diffs]})
    return diffs


async def read_events(channel: GdwChannel, now: datetime, *, zone: tzinfo = CST,
                      anomalies: EventSink | None = None) -> list[Reading]:
    """The events the terminal has since the last pointer read: the important ones (AFN 0E F1)
    when EC says they are waiting, the general ones (AFN 0E F2) when the counters read now and then
    (AFN 0C F7, :attr:`GdwChannel.general_every`) show new ones.  ERC14 power off/on becomes
    ``event.power_down.start`` / ``.end`` readings of every meter behind the terminal; the other
    records are handed to ``anomalies`` as (findings, ended pairs) (:mod:`.events`)."""
    records: list[TerminalEvent] = []
    failure: MeterdError | None = None
    if channel.important_waiting:
        try:
            records += await _read_important(channel)
        except (TransactionError, ProtocolError) as exc:
            failure = exc
    if channel.general_due():
        channel.general_checked()
        try:
            records += await _read_general(channel)
        except (TransactionError, ProtocolError) as exc:  # tried again at the next check
            log.warning("channel %s: terminal %s: general events not read: %s", channel.name, channel.address.key,
                        exc)
    out = _power_readings(channel, records, now, zone)
    others = [r for r in records if not isinstance(r, PowerOnOff)]
    if others and anomalies is not None:
        findings, ended = event_findings(others, channel.address.key, channel.pns, now, zone=zone)
        anomalies(findings, ended)
    if failure is not None:
        raise failure
    return out


async def _read_important(channel: GdwChannel) -> list[TerminalEvent]:
    ec = channel.ec
    channel.events_waiting = False
    if ec is None:
        return []
    end = ec.important
    start = channel.event_pointer if channel.event_pointer is not None else (end - 1) & 0xFF
    if start == end:
        return []
    try:
        records = await _read_range(channel, 1, start, end)
    except (TransactionError, ProtocolError) as exc:
        # tried again after the next round (a link that failed once loses no events); records the
        # terminal cannot send must not cost every round a timeout for ever: after a few tries they
        # are skipped, loudly
        channel.event_failures += 1
        if channel.event_failures < EVENT_READ_TRIES:
            channel.events_waiting = True
            raise
        log.error("channel %s: terminal %s: important events %d..%d not read in %d tries (%s): skipped",
                  channel.name, channel.address.key, start, end, channel.event_failures, exc)
        channel.event_pointer, channel.event_failures = end, 0
        return []
    channel.event_pointer, channel.event_failures = end, 0
    return records


async def _read_general(channel: GdwChannel) -> list[TerminalEvent]:
    """General events: the counters first (AFN 0C F7), then the new records (AFN 0E F2).  The first
    time (after the master started) the newest record only, as for important events."""
    reply = await channel.request(Afn.CLASS1_DATA, [unit(0, 7)], priority=URGENT)
    counters = reply.value(7, 0)
    if not isinstance(counters, EventCounter):
        return []
    end = counters.general
    if channel.general_pointer is None and end == 0:
        channel.general_pointer = 0  # none ever
        return []
    start = channel.general_pointer if channel.general_pointer is not None else (end - 1) & 0xFF
    if start == end:
        return []
    records = await _read_range(channel, 2, start, end)
    channel.general_pointer = end
    return records


async def _read_range(channel: GdwChannel, fn: int, start: int, end: int) -> list[TerminalEvent]:
    reply = await channel.request(Afn.CLASS3_DATA, [unit(0, fn, EventPointers(start, end))], priority=URGENT)
    records: list[TerminalEvent] = []
    for _, item, value in reply.items():
        if item == fn and isinstance(value, EventLog):
            records += value.records
    for record in records:
        if not isinstance(record, PowerOnOff):  # once a minute per ERC and terminal (a count after)
            channel._log.log(log, logging.INFO, f"event ERC{record.erc}", "channel %s: terminal %s event ERC%d: %s",
                             channel.name, channel.address.key, record.erc, record.describe())
    return records


def _power_readings(channel: GdwChannel, records: list[TerminalEvent], now: datetime,
                    zone: tzinfo) -> list[Reading]:
    """ERC14 records as power-down reports of every meter behind the terminal: the newest
    :data:`MAX_POWER_RECORDS` distinct ones of the read, none later than ``now`` + a day."""
    # distinct (a record sent twice is one report), each where it came last
    power = list(dict.fromkeys((r.off, r.on) for r in reversed(records) if isinstance(r, PowerOnOff)))[::-1]
    key = channel.address.key
    if len(power) > MAX_POWER_RECORDS:
        left = power[:-MAX_POWER_RECORDS]
        channel._log.log(log, logging.WARNING, "ERC14 many",
                         "channel %s: terminal %s sent %d power off/on records (ERC14) in one read; the newest %d "
                         "are power-down reports, the %d before (%s .. %s) are not", channel.name, key, len(power),
                         MAX_POWER_RECORDS, len(left), left[0][0] or left[0][1], left[-1][1] or left[-1][0])
        power = power[-MAX_POWER_RECORDS:]
    out: list[Reading] = []
    latest = now + POWER_CLOCK_SLACK
    for naive_off, naive_on in power:
        off, on = _local(naive_off, zone), _local(naive_on, zone)
        text = f"off at {local_text(off, zone) if off else '?'}" + (f", on at {local_text(on, zone)}" if on else "")
        if (off is not None and off > latest) or (on is not None and on > latest):
            channel._log.log(log, logging.WARNING, "ERC14 future",
                             "channel %s: terminal %s reports power %s (ERC14), after the master's clock (%s): "
                             "not a power-down report (the terminal's clock?)", channel.name, key, text,
                             local_text(now, zone))
            continue
        channel._log.log(log, logging.WARNING, "ERC14", "channel %s: terminal %s reports power %s (ERC14)",
                         channel.name, key, text)
        for meter in channel.pns:
            if off is not None:
                out.append(Reading(meter, "event.power_down.start", off, off, "", Quality.GOOD))
            if on is not None:
                out.append(Reading(meter, "event.power_down.end", on, on, "", Quality.GOOD))
    return out
