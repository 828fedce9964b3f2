"""Poll rounds: read a set of data identifiers from every meter of a channel and make readings.

A round walks the meters of one channel in order, one request in flight (the channel enforces it).
For each identifier it sends a read, follows ``B1`` follow-up frames, decodes the payload with the
catalogue and turns each value into a :class:`~meterd.readings.Reading` with the meter's
transformer ratios applied (energy, demand, power x CT x PT; current x CT; voltage x PT).

Frozen values are stamped with the meter's own freeze time (read once per meter and round from the
identifier the catalogue names); everything else with the round's time, which is passed in.

Failures never stop a round.  An abnormal reply (the meter refuses one identifier) is recorded
and the next identifier is read.  A meter that does not answer at all (timeout, link error) has
its remaining identifiers recorded as not tried, so one dead meter costs the bus one timeout per
round, not one per identifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Iterable, Sequence

from meterd.collector.channel import Channel, FailureKind, TransactionError
from meterd.errors import ProtocolError
from meterd.protocols.dlt645 import catalogue
from meterd.protocols.dlt645.catalogue import Scaling
from meterd.protocols.dlt645.messages import (
    AbnormalResponse,
    ReadFollowUpRequest,
    ReadFollowUpResponse,
    ReadRequest,
    ReadResponse,
    decode_response,
    encode_request,
)
from meterd.readings import Quality, Reading
from meterd.storage.sqlite import Attempt

CHINA_STANDARD_TIME = timezone(timedelta(hours=8), "CST")
MAX_FOLLOW_UPS = 32
_GIVE_UP = (FailureKind.TIMEOUT, FailureKind.LINK)


@dataclass(frozen=True, slots=True)
class MeterTarget:
    address: str
    ct: Decimal = Decimal(1)
    pt: Decimal = Decimal(1)

    def scale(self, value: Decimal, scaling: Scaling) -> Decimal:
        if scaling is Scaling.CTPT:
            return value * self.ct * self.pt
        if scaling is Scaling.CT:
            return value * self.ct
        if scaling is Scaling.PT:
            return value * self.pt
        return value


@dataclass(slots=True)
class RoundResult:
    channel: str
    started: datetime
    readings: list[Reading] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def failures(self) -> list[Attempt]:
        return [a for a in self.attempts if a.outcome != "ok"]


class ReadFailed(Exception):
    """Internal: one identifier of one meter could not be read."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(detail)


async def read_item(
    channel: Channel, address: str, di: int, *, count: int | None = None, start: datetime | None = None
) -> bytes:
    """Read one identifier, following up until the meter says there is no more.  Payload bytes."""
    reply = await channel.transact(encode_request(ReadRequest(address, di, count, start)))
    assert reply is not None
    try:
        message = decode_response(reply)
    except ProtocolError as exc:
        raise ReadFailed(FailureKind.GARBLED, f"undecodable reply: {exc}") from exc
    if isinstance(message, AbnormalResponse):
        raise ReadFailed(FailureKind.ABNORMAL, message.error.describe())
    if not isinstance(message, ReadResponse) or message.di != di:
        raise ReadFailed(FailureKind.GARBLED, f"reply is not for {di:08X}: {message!r}")
    payload = bytearray(message.data)
    more = message.follow_up
    seq = 0
    while more:
        seq += 1
        if seq > MAX_FOLLOW_UPS:
            raise ReadFailed(FailureKind.GARBLED, f"{di:08X}: more than {MAX_FOLLOW_UPS} follow-up frames")
        reply = await channel.transact(encode_request(ReadFollowUpRequest(address, di, seq)))
        assert reply is not None
        follow = decode_response(reply)
        if isinstance(follow, AbnormalResponse):
            raise ReadFailed(FailureKind.ABNORMAL, f"follow-up {seq}: {follow.error.describe()}")
        if not isinstance(follow, ReadFollowUpResponse) or follow.di != di:
            raise ReadFailed(FailureKind.GARBLED, f"follow-up {seq} is not for {di:08X}")
        payload += follow.data
        more = follow.follow_up
    return bytes(payload)


def curve_window(now: datetime, meter_tz: tzinfo, points: int, interval: timedelta) -> datetime:
    """Meter-local start time of the last ``points`` curve records before ``now``."""
    local = now.astimezone(meter_tz).replace(tzinfo=None, second=0, microsecond=0)
    step = int(interval.total_seconds() // 60)
    last = local.replace(minute=local.minute - local.minute % step)
    return last - (points - 1) * interval


def curve_readings(
    meter: MeterTarget, di: int, payload: bytes, meter_tz: tzinfo, interval: timedelta
) -> list[Reading]:
    field_, points = catalogue.decode_records(di, payload, interval)
    out = []
    for p in points:
        if p.value is None:
            continue  # the meter has no record for that slot; a re-read pass may fill it later
        assert isinstance(p.value, Decimal)
        ts = p.timestamp.replace(tzinfo=meter_tz).astimezone(timezone.utc)
        out.append(Reading(meter.address, field_.quantity, ts, meter.scale(p.value, field_.scaling), field_.unit))
    return out


def to_readings(
    meter: MeterTarget, di: int, payload: bytes, timestamp: datetime, meter_tz: tzinfo
) -> list[Reading]:
    out = []
    for v in catalogue.decode(di, payload):
        value = v.value
        if isinstance(value, Decimal):
            value = meter.scale(value, v.scaling)
        elif isinstance(value, datetime):
            value = value.replace(tzinfo=meter_tz).astimezone(timezone.utc)
        out.append(Reading(meter.address, v.quantity, timestamp, value, v.unit, Quality.GOOD))
    return out


async def poll_meter(
    channel: Channel,
    meter: MeterTarget,
    items: Sequence[int],
    now: datetime,
    *,
    meter_tz: tzinfo = CHINA_STANDARD_TIME,
    curve_points: int = 4,
    curve_interval: timedelta = catalogue.DEFAULT_CURVE_INTERVAL,
) -> tuple[list[Reading], list[Attempt]]:
    """Read ``items`` from one meter.  Load-curve identifiers fetch the last ``curve_points``
    records (N-records-from-a-time form) and give one reading per record."""
    readings: list[Reading] = []
    attempts: list[Attempt] = []
    freeze_times: dict[int, datetime] = {}
    dead: str | None = None

    def attempt(di: int, outcome: str, latency: float | None = None, detail: str = "") -> None:
        attempts.append(Attempt(meter.address, channel.name, f"{di:08X}", now, outcome, latency, detail))

    for di in items:
        if dead is not None:
            attempt(di, dead, detail="not tried: the meter did not answer an earlier request this round")
            continue
        item = catalogue.lookup(di)
        started = channel.stats.latency_total
        successes = channel.stats.successes
        try:
            stamp = now
            if item.timestamp_di is not None:
                if item.timestamp_di not in freeze_times:
                    raw = await read_item(channel, meter.address, item.timestamp_di)
                    (tv,) = catalogue.decode(item.timestamp_di, raw)
                    assert isinstance(tv.value, datetime)
                    freeze_times[item.timestamp_di] = tv.value.replace(tzinfo=meter_tz).astimezone(timezone.utc)
                stamp = freeze_times[item.timestamp_di]
            if item.records:
                first = curve_window(now, meter_tz, curve_points, curve_interval)
                payload = await read_item(channel, meter.address, di, count=curve_points, start=first)
                readings.extend(curve_readings(meter, di, payload, meter_tz, curve_interval))
            else:
                payload = await read_item(channel, meter.address, di)
                readings.extend(to_readings(meter, di, payload, stamp, meter_tz))
        except TransactionError as exc:
            attempt(di, exc.kind, detail=str(exc))
            if exc.kind in _GIVE_UP:
                dead = exc.kind
            continue
        except ReadFailed as exc:
            attempt(di, exc.kind, detail=f"meter {meter.address} {di:08X}: {exc.detail}")
            continue
        except ProtocolError as exc:
            attempt(di, FailureKind.GARBLED, detail=f"meter {meter.address} {di:08X}: {exc}")
            continue
        n = channel.stats.successes - successes
        latency = (channel.stats.latency_total - started) / n if n else None
        attempt(di, "ok", latency)
    return readings, attempts


async def poll_round(
    channel: Channel,
    meters: Iterable[MeterTarget],
    items: Sequence[int],
    now: datetime,
    *,
    meter_tz: tzinfo = CHINA_STANDARD_TIME,
) -> RoundResult:
    result = RoundResult(channel.name, now)
    for meter in meters:
        readings, attempts = await poll_meter(channel, meter, items, now, meter_tz=meter_tz)
        result.readings.extend(readings)
        result.attempts.extend(attempts)
    return result
