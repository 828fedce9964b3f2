"""DL/T 645 frames as a technician reads them: ``meterd decode`` and the traces of ``read`` and ``probe``.

Both editions (:mod:`meterd.protocols.dlt645.explain` tells them apart by the control code).
Identifiers print as the edition writes them (8 hex digits in 2007, 4 in 1997), data as hex bytes
with the 0x33 removed, and times in the site's zone with its offset: a meter keeps the site's
local time (:data:`meterd.clock.CST`), so a time read from its clock is that wall time, shown
with ``+08:00``.  A meter's date (``meter.date``: 2007 ``04000101``, 1997 ``C010``) is a calendar
date and prints as one, never as the instant its midnight was somewhere else; the meter's time of
day (``meter.time``: ``04000102``, ``C011``) is its wall-clock time.

Q/GDW 1376.1 frames (:mod:`meterd.protocols.gdw1376.explain`) print field by field: the link header,
each data unit as pn/Fn with its values, PW/EC/Tp, and a DL/T 645 frame relayed by AFN 10 decoded
as above.  A terminal keeps the site's time too, so its naive times print with the site's offset.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import date, datetime
from typing import Any, Final

from meterd.cli.common import format_value, to_jsonable
from meterd.clock import CST, Clock, utc_now
from meterd.collector.channel import TraceEvent
from meterd.protocols.dlt645.catalogue import DecodedValue
from meterd.protocols.dlt645.explain import Explained, explain
from meterd.protocols.dlt645.frame import Frame
from meterd.protocols.gdw1376.explain import Explained1376
from meterd.protocols.gdw1376.explain import explain as explain1376
from meterd.protocols.gdw1376.frame import Frame as GdwFrame
from meterd.protocols.gdw1376.units import point_name

SITE_ZONE: Final = CST
DATE_QUANTITIES: Final = frozenset({"meter.date"})  # a calendar date, not an instant
WALL_TIME_QUANTITIES: Final = frozenset({"meter.time"})  # "hh:mm:ss" of the meter's clock
TRACE_VALUES: Final = 6  # values shown on a trace line; the rest counted
_EPOCH: Final = datetime(2000, 1, 1)  # any instant: the site's offset is the same all year
_ARROWS: Final = {"tx": "TX ->", "rx": "RX <-", "drop": "DROP "}


# --- times and values ---------------------------------------------------------------------------


def meter_now(now: datetime) -> datetime:
    """The aware instant ``now`` as a meter's clock shows it: site wall time, naive."""
    return now.astimezone(SITE_ZONE).replace(tzinfo=None)


def local_text(when: datetime) -> str:
    """A time in the site's zone with its offset.  Naive: read from a meter's clock (site time)."""
    aware = when if when.tzinfo is not None else when.replace(tzinfo=SITE_ZONE)
    return aware.astimezone(SITE_ZONE).isoformat(sep=" ")


def value_text(quantity: str, value: Any, unit: str = "") -> str:
    """One value for people: dates as dates, times in the site's zone, the unit after it."""
    if isinstance(value, datetime):
        if quantity in DATE_QUANTITIES:
            day = value.astimezone(SITE_ZONE) if value.tzinfo is not None else value
            return f"{day:%Y-%m-%d}"
        return local_text(value)
    if quantity in WALL_TIME_QUANTITIES and isinstance(value, str):
        return f"{value} (meter clock, site time {local_text(_EPOCH)[-6:]})"
    return f"{format_value(value)} {unit}".rstrip()


def value_json(quantity: str, value: Any) -> Any:
    """One value for machines: a date as ``YYYY-MM-DD``, a time as ISO 8601 with the site's offset."""
    if isinstance(value, datetime):
        if quantity in DATE_QUANTITIES:
            return (value.astimezone(SITE_ZONE) if value.tzinfo is not None else value).date().isoformat()
        aware = value if value.tzinfo is not None else value.replace(tzinfo=SITE_ZONE)
        return aware.astimezone(SITE_ZONE).isoformat()
    return to_jsonable(value)


_PLAIN_NUMBERS: Final = frozenset({"baud", "count", "seq", "minute", "hour", "day", "month"})


def _field_text(name: str, value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, datetime):
        return local_text(value)
    if isinstance(value, bytes):
        return value.hex(" ").upper() or "(none)"
    if name in _PLAIN_NUMBERS and isinstance(value, int):
        return str(value)
    return format_value(value)


def _fields(ex: Explained) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if ex.di is not None:
        out["di"] = ex.di
    out.update((k, v) for k, v in ex.fields.items() if v != b"")
    return out


def _values_text(values: tuple[DecodedValue, ...], limit: int | None = None) -> str:
    shown = values if limit is None else values[:limit]
    text = ", ".join(f"{v.quantity} = {value_text(v.quantity, v.value, v.unit)}" for v in shown)
    if limit is not None and len(values) > limit:
        text += f", and {len(values) - limit} more"
    return text


# --- meterd decode --------------------------------------------------------------------------------


def explain_dict(ex: Explained) -> dict[str, Any]:
    """The machine-readable decode of one frame (``meterd decode --json``)."""
    frame = ex.frame
    doc: dict[str, Any] = {
        "edition": ex.edition_label,
        "edition_note": ex.edition_note,
        "address": frame.address,
        "control": f"{frame.control:02X}",
        "control_meaning": ex.control_meaning,
        "data": frame.data,
    }
    if ex.message_error is not None:
        doc["message_error"] = ex.message_error
        return doc
    doc["message"] = type(ex.message).__name__
    fields = {k: (local_text(v) if isinstance(v, datetime) else v) for k, v in _fields(ex).items()}
    if isinstance(getattr(ex.message, "data", None), bytes):
        fields["data"] = ex.message.data
    doc["fields"] = fields
    if ex.refusal is not None:
        err, bits = ex.refusal
        doc["refused"] = {"error": f"{err:02X}", "bits": list(bits)}
    if ex.identifier is not None:
        doc["identifier"] = ex.identifier
    if ex.identifier_error is not None:
        doc["identifier_error"] = ex.identifier_error
    if ex.values:
        doc["values"] = [{"quantity": v.quantity, "value": value_json(v.quantity, v.value), "unit": v.unit}
                         for v in ex.values]
    if ex.points:
        doc["values"] = [{"timestamp": value_json("", p.timestamp), "value": to_jsonable(p.value),
                          "unit": ex.value_unit} for p in ex.points]
    for key in ("value_error", "value_note"):
        if getattr(ex, key) is not None:
            doc[key] = getattr(ex, key)
    return doc


def explain_lines(ex: Explained) -> list[str]:
    """The decode of one frame for people (``meterd decode``)."""
    frame = ex.frame
    lines = [
        f"edition  {ex.edition_label} ({ex.edition_note})",
        f"address  {frame.address}",
        f"control  {frame.control:02X}  {ex.control_meaning}",
        f"data     {frame.data.hex(' ').upper() or '(none)'}   (0x33 removed)",
    ]
    if ex.message_error is not None:
        return [*lines, f"message  cannot decode: {ex.message_error}"]
    fields = ", ".join(f"{k}={_field_text(k, v)}" for k, v in _fields(ex).items())
    lines.append(f"message  {type(ex.message).__name__}  {fields}".rstrip())
    if ex.refusal is not None:
        err, bits = ex.refusal
        lines.append(f"refused  ERR {err:02X}: {'; '.join(bits)}")
    if ex.identifier is not None:
        lines.append(f"meaning  {ex.di}: {ex.identifier}")
    if ex.identifier_error is not None:
        lines.append(f"meaning  {ex.identifier_error}")
    lines += [f"value    {v.quantity} = {value_text(v.quantity, v.value, v.unit)}" for v in ex.values]
    lines += [f"record   {local_text(p.timestamp)}  {value_text('', p.value, ex.value_unit)}" for p in ex.points]
    if ex.value_error is not None:
        lines.append(f"value    cannot decode: {ex.value_error}")
    if ex.value_note is not None:
        lines.append(f"value    not decoded: {ex.value_note}")
    return lines


# --- Q/GDW 1376.1 ---------------------------------------------------------------------------------


def gdw_value_text(value: Any, unit: str = "") -> str:
    """One 1376.1 value for people: a terminal's naive time as site time with the offset, a date
    as a date, bytes in hex, ``None`` as the standard's "no data"."""
    if value is None:
        return "(no data: EE)"
    if isinstance(value, datetime):
        return local_text(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex(" ").upper() or "(none)"
    return f"{value} {unit}".rstrip()


def gdw_value_json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value_json("", value)
    if isinstance(value, date):
        return value.isoformat()
    return to_jsonable(value)


def gdw_lines(ex: Explained1376) -> list[str]:
    """The decode of one Q/GDW 1376.1 frame for people (``meterd decode``)."""
    lines = [f"{name:<8} {text}" for name, text in ex.header]
    for item in ex.items:
        lines.append(f"unit     {point_name(item.pn)} F{item.fn}  {item.name}")
        lines += [f"           {name} = {gdw_value_text(value, unit)}" for name, value, unit in item.fields]
        for n, relayed in enumerate(item.relayed, 1):
            lines.append(f"           relayed DL/T 645 frame {n}:")
            lines += [f"             {line}" for line in explain_lines(relayed)]
    if ex.error is not None:
        lines.append(f"unit     cannot decode: {ex.error}")
        lines.append(f"           not decoded: {ex.rest.hex(' ').upper() or '(nothing)'}")
    lines += [f"{name:<8} {text}" for name, text in ex.aux]
    return lines


def gdw_dict(ex: Explained1376) -> dict[str, Any]:
    """The machine-readable decode of one Q/GDW 1376.1 frame (``meterd decode --json``)."""
    frame = ex.frame
    doc: dict[str, Any] = {
        "protocol": "Q/GDW 1376.1",
        "header": dict(ex.header),
        "control": f"{frame.control:02X}",
        "address": str(frame.address),
        "afn": f"{frame.afn:02X}",
        "seq": f"{frame.seq:02X}",
        "units": [
            {"pn": item.pn, "fn": item.fn, "name": item.name,
             "values": [{"field": name, "value": gdw_value_json(value), "unit": unit}
                        for name, value, unit in item.fields],
             **({"relayed": [explain_dict(r) for r in item.relayed]} if item.relayed else {})}
            for item in ex.items
        ],
    }
    if ex.error is not None:
        doc["error"] = ex.error
        doc["not_decoded"] = ex.rest
    doc.update(ex.aux)
    return doc


def gdw_summary(ex: Explained1376) -> str:
    """One line for a trace: direction, terminal, AFN and the items with their first values."""
    frame = ex.frame
    who = f"from {frame.address}" if frame.is_uplink else f"to {frame.address}"
    parts = []
    for item in ex.items:
        shown = ", ".join(f"{n} = {gdw_value_text(v, u)}" for n, v, u in item.fields[:TRACE_VALUES])
        more = f", and {len(item.fields) - TRACE_VALUES} more" if len(item.fields) > TRACE_VALUES else ""
        parts.append(f"{point_name(item.pn)} F{item.fn}" + (f" ({shown}{more})" if shown else ""))
    if ex.error is not None:
        parts.append(f"cannot decode: {ex.error}")
    return f"Q/GDW 1376.1 AFN {frame.afn:02X}H {frame.function_name()} {who}: {'; '.join(parts) or '(no data)'}"


# --- traces ---------------------------------------------------------------------------------------


def summary(ex: Explained) -> str:
    """One line: edition, what the frame is, to or from whom, and what it carries."""
    frame = ex.frame
    who = f"from {frame.address}" if frame.is_reply else f"to {frame.address}"
    head = f"{ex.edition_label} {ex.control_meaning} {who}"
    if ex.message_error is not None:
        return f"{head}: cannot decode: {ex.message_error}"
    if ex.refusal is not None:
        err, bits = ex.refusal
        return f"{head}: refused, ERR {err:02X}: {'; '.join(bits)}"
    parts = []
    if ex.di is not None:
        parts.append(f"{ex.di} ({ex.identifier})" if ex.identifier else f"{ex.di} (not in meterd's catalogue)")
    if ex.values:
        parts.append(_values_text(ex.values, TRACE_VALUES))
    elif ex.points:
        first, last = ex.points[0], ex.points[-1]
        parts.append(f"{len(ex.points)} records {local_text(first.timestamp)} .. {local_text(last.timestamp)}")
    elif ex.di is None:
        parts += [f"{k}={_field_text(k, v)}" for k, v in _fields(ex).items()]
    if ex.value_error is not None:
        parts.append(f"value cannot decode: {ex.value_error}")
    return f"{head}: {', '.join(parts)}" if parts else head


def stamp(now: datetime) -> str:
    """A trace line's time: site wall time to the millisecond, with the offset."""
    return now.astimezone(SITE_ZONE).isoformat(timespec="milliseconds").partition("T")[2]


def trace_line(event: TraceEvent, now: datetime) -> str:
    """What ``--trace`` prints for one event: the time, the direction, the bytes, then their decode."""
    if event.direction == "note":
        return f"-- {event.note}"
    head = f"{stamp(now)} {_ARROWS.get(event.direction, event.direction)} "
    pad = " " * len(head)
    line = head + event.data.hex(" ").upper()
    if isinstance(event.frame, Frame):
        line += f"\n{pad}{summary(explain(event.frame, meter_now(now)))}"
    elif isinstance(event.frame, GdwFrame):
        line += f"\n{pad}{gdw_summary(explain1376(event.frame, meter_now(now)))}"
    elif event.frame is not None:  # a Modbus PDU
        line += f"\n{pad}{event.frame}"
    if event.note:
        line += f"\n{pad}{event.note}"
    return line


def trace_printer(clock: Clock = utc_now) -> Callable[[TraceEvent], None]:
    """A channel trace hook printing :func:`trace_line` to standard error as each event happens."""

    def hook(event: TraceEvent) -> None:
        print(trace_line(event, clock()), file=sys.stderr, flush=True)

    return hook
