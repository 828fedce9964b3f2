"""What one Q/GDW 1376.1 frame says, field by field: for ``meterd decode`` and frame traces.

:func:`explain` never raises for a frame :func:`.frame.decode_frame` made: a data area that does not
decode (an item meterd does not know, a field out of range) is shown as far as it goes, with
``error`` saying why.  A DL/T 645 frame carried by AFN 10 F1 (either way) is decoded with the DL/T
645 explainer (:mod:`meterd.protocols.dlt645.explain`).

Values stay typed (Decimal, naive datetimes in the terminal's clock, dates); turning them into text
and the site's time is the caller's business (``meterd.cli.frametext``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from meterd.errors import ProtocolError
from meterd.protocols.dlt645 import explain as dlt645_explain
from meterd.protocols.dlt645.frame import scan_frames as scan_dlt645
from meterd.protocols.gdw1376 import catalogue as cat
from meterd.protocols.gdw1376 import events as ev
from meterd.protocols.gdw1376.frame import PROTOCOLS, Frame
from meterd.protocols.gdw1376.messages import DataUnit, decode_units_partial
from meterd.protocols.gdw1376.units import point_name

PHASES4: Final = ("total", "A", "B", "C")
PHASES3: Final = ("A", "B", "C")

Field = tuple[str, Any, str]  # name, value, unit


@dataclass(frozen=True, slots=True)
class ExplainedItem:
    """One (pn, Fn) of a data unit: its name and its value laid out as fields."""

    pn: int
    fn: int
    name: str
    fields: tuple[Field, ...]
    relayed: tuple[dlt645_explain.Explained, ...] = ()  # DL/T 645 frames inside an AFN 10 F1 payload


@dataclass(frozen=True, slots=True)
class Explained1376:
    frame: Frame
    header: tuple[tuple[str, str], ...]
    items: tuple[ExplainedItem, ...] = ()
    aux: tuple[tuple[str, str], ...] = ()
    error: str | None = None
    rest: bytes = b""  # the data not decoded (from the unit that failed on)
    units: tuple[DataUnit, ...] = field(default=())

    @property
    def decoded(self) -> bool:
        return self.error is None and all(r.decoded for i in self.items for r in i.relayed)


def _rates(values: tuple[Any, ...], unit: str, prefix: str = "") -> list[Field]:
    names = ["total"] + [f"rate {i}" for i in range(1, len(values))]
    return [(f"{prefix}{n}", v, unit) for n, v in zip(names, values, strict=True)]


def value_fields(value: Any) -> list[Field]:
    """A catalogue value as (name, value, unit) fields; ``None`` (an item without data) gives none."""
    if value is None:
        return []
    if isinstance(value, cat.EnergyReading):
        return [("read at", value.read_at, ""), ("rates", value.rates, ""), *_rates(value.values, "kWh")]
    if isinstance(value, cat.FrozenEnergy):
        return [("period", value.period, ""), ("read at", value.read_at, ""), ("rates", len(value.values) - 1, ""),
                *_rates(value.values, "kWh")]
    if isinstance(value, cat.ForwardEnergy):
        return [("read at", value.read_at, ""), ("rates", len(value.active) - 1, ""),
                *_rates(value.active, "kWh", "active "), *_rates(value.reactive, "kvarh", "reactive "),
                *_rates(value.quadrant1, "kvarh", "quadrant I "), *_rates(value.quadrant4, "kvarh", "quadrant IV ")]
    if isinstance(value, cat.PresentPower):
        out: list[Field] = [("read at", value.read_at, "")]
        out += [(f"P {p}", v, "kW") for p, v in zip(PHASES4, value.active, strict=True)]
        out += [(f"Q {p}", v, "kvar") for p, v in zip(PHASES4, value.reactive, strict=True)]
        out += [(f"PF {p}", v, "%") for p, v in zip(PHASES4, value.power_factor, strict=True)]
        out += [(f"U {p}", v, "V") for p, v in zip(PHASES3, value.voltage, strict=True)]
        out += [(f"I {p}", v, "A") for p, v in zip(PHASES3, value.current, strict=True)]
        out.append(("I zero-sequence", value.zero_sequence_current, "A"))
        out += [(f"S {p}", v, "kVA") for p, v in zip(PHASES4, value.apparent, strict=True)]
        return out
    if isinstance(value, cat.MeterArchive):
        out = [("meters", len(value.entries), "")]
        for e in value.entries:
            proto = cat.METER_PROTOCOLS.get(e.protocol, f"type {e.protocol}")
            out.append((f"meter {e.seq}", (f"p{e.pn}, port {e.port}, {e.baud or 'default'} baud, {proto}, "
                        f"address {e.address}, password {e.password.hex().upper()}, {e.rates} rates, "
                        f"{e.integer_digits}.{e.decimal_digits} digits, collector {e.collector}, "
                        f"class {e.major_class}/{e.minor_class}"), ""))
        return out
    if isinstance(value, cat.ItemResults):
        out = [("answers AFN", f"{value.afn:02X}H", "")]
        for i in value.items:
            points = ",".join(point_name(p) for p in i.pns)
            items = ",".join(f"F{f}" for f in i.fns)
            out.append((f"{points} {items}", "confirmed" if i.ok else f"denied (ERR {i.error:02X})", ""))
        return out
    if isinstance(value, cat.EventLog):
        out = [("EC1 important", value.important, ""), ("EC2 general", value.general, ""),
               ("pointers", f"{value.start}..{value.end}", "")]
        for n, rec in enumerate(value.records, 1):
            if isinstance(rec, ev.PowerOnOff):
                flags = "" if rec.flags is None else f", flags {rec.flags:02X}"
                out.append((f"record {n}", f"ERC14 power off {_t(rec.off)}, on {_t(rec.on)}{flags}", ""))
            elif isinstance(rec, ev.EventRecord):
                out.append((f"record {n}", rec.describe(), ""))
            else:
                at = f" at {_t(rec.at)}" if getattr(rec, "at", None) is not None else ""
                out.append((f"record {n}", f"ERC{rec.erc}{at}: {rec.describe()}", ""))
        return out
    if isinstance(value, cat.ControlSettings):
        return [("保电 (protection)", "on" if value.protected else "off", ""),
                ("剔除 (excluded)", "on" if value.flags & 0x02 else "off", ""),
                ("催费告警 (payment reminder)", "on" if value.reminder else "off", ""),
                ("total-add groups", f"{value.groups:08b}", "")]
    if isinstance(value, cat.ControlState):
        turns = [str(t) for t in range(1, 9) if value.turn_tripped(t)]
        return [("tripped turns", ", ".join(turns) or "none", ""),
                ("催费告警 sounding", "yes" if value.reminder & 1 else "no", ""),
                ("total-add groups", f"{value.groups:08b}", "")]
    if isinstance(value, cat.ForwardRequest):
        return [("port", value.port, ""), ("line", str(value.serial), ""),
                ("frame timeout", value.frame_timeout_ms, "ms"), ("byte timeout", value.byte_timeout_ms, "ms"),
                ("relayed", value.payload, "")]
    if isinstance(value, cat.ForwardReply):
        return [("port", value.port, ""), ("relayed", value.payload, "")]
    if isinstance(value, cat.Heartbeat):
        return [("terminal clock", value.clock, "")]
    if isinstance(value, cat.RemoteTrip):
        return [("limit time", value.limit_half_hours * 30, "min"), ("alarm delay", value.alarm_minutes, "min")]
    if isinstance(value, cat.ProtectOn):
        return [("duration", value.half_hours * 30 or "until released", "min" if value.half_hours else "")]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [(f.name.replace("_", " "), getattr(value, f.name), "") for f in dataclasses.fields(value)]
    return [("value", value, "")]


def _t(when: datetime | None) -> str:
    return "unknown" if when is None else when.isoformat(sep=" ")


def _relayed(value: Any, now: datetime | None) -> tuple[dlt645_explain.Explained, ...]:
    if not isinstance(value, (cat.ForwardRequest, cat.ForwardReply)):
        return ()
    return tuple(dlt645_explain.explain(f, now) for _, _, f in scan_dlt645(value.payload))


def header(frame: Frame) -> tuple[tuple[str, str], ...]:
    a = frame.address
    return (
        ("protocol", f"{PROTOCOLS[frame.protocol]} (L D1D0 = {frame.protocol:02b})"),
        ("control", f"{frame.control:02X}  {frame.describe_control()}"),
        ("address", (f"{a}  region (A1) {a.region}, terminal (A2) {a.terminal} = {a.terminal:04X}H, "
                    f"master (MSA) {a.master}{', group address' if a.group else ''}")),
        ("AFN", f"{frame.afn:02X}H  {frame.afn_name()}"),
        ("SEQ", f"{frame.seq:02X}  {frame.describe_seq()}"),
    )


def aux(frame: Frame) -> tuple[tuple[str, str], ...]:
    out = []
    if frame.pw is not None:
        out.append(("PW", frame.pw.hex(" ").upper()))
    if frame.ec is not None:
        out.append(("EC", f"important events {frame.ec.important}, general events {frame.ec.general}"))
    if frame.tp is not None:
        tp = frame.tp
        limit = f"valid for {tp.delay} min" if tp.delay else "no delay limit"
        out.append(("Tp", (f"PFC {tp.pfc}, sent on day {tp.day} at {tp.hour:02}:{tp.minute:02}:{tp.second:02}, "
                          f"{limit}")))
    return tuple(out)


def explain(frame: Frame, now: datetime | None = None) -> Explained1376:
    """``frame`` -> :class:`Explained1376`.  ``now`` (the site's wall time, naive) is handed to the
    DL/T 645 explainer for relayed 1997 frames."""
    part = decode_units_partial(frame.afn, frame.is_uplink, frame.data)
    items = []
    for u in part.units:
        for pn, fn, value in u.pairs():
            entry = cat.lookup(frame.afn, fn, frame.is_uplink)
            name = entry.name if entry is not None else "?"
            try:
                fields = tuple(value_fields(value))
            except (ProtocolError, ValueError) as exc:  # a value that cannot be shown is shown as its repr
                fields = (("value", f"{value!r} ({exc})", ""),)
            items.append(ExplainedItem(pn, fn, name, fields, _relayed(value, now)))
    error = None if part.error is None else str(part.error)
    return Explained1376(frame, header(frame), tuple(items), aux(frame), error, part.rest, part.units)
