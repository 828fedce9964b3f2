"""Poll rounds: read what a poll wants from every meter of a channel and make readings.

A round walks the meters of one channel in order, one request in flight (the channel enforces it),
each in its own protocol, through the driver the meter's target resolved once (``MeterTarget.driver``);
what happens on the channel depends only on the driver's :class:`~meterd.protocols.drivers.LinkKind`:

* frame protocols (DL/T 645-2007 and -1997): for each identifier a read, follow-up frames followed
  (``B1`` / ``A2``), the payload decoded with the edition's catalogue -- the meter's
  :class:`~meterd.protocols.drivers.base.FrameDriver` encodes and decodes every frame;
* Modbus: the meter's compiled :class:`~meterd.protocols.modbus.ReadPlan`, one request per block
  (with the map's pause between requests), decoded with the register map.

Every value becomes a :class:`~meterd.readings.Reading` with the meter's transformer ratios applied
(energy, demand, power x CT x PT; current x CT; voltage x PT; nothing for a Modbus register the
map marks as primary-side), so downstream code cannot tell the protocols apart.

Frozen values are stamped with the meter's own freeze time (read once per meter and round from the
identifier the catalogue names); everything else with the round's time, which is passed in.

Failures never stop a round.  An abnormal reply (the meter refuses one identifier, or a Modbus
exception response, recorded with its exception code) is recorded and the next one is read.  A
meter that does not answer at all (timeout, link error) has its remaining identifiers recorded as
not tried, so one dead meter costs the bus one timeout per round, not one per identifier.

"No requested data" (DL/T 645 ERR bit D1, 无请求数据) for a record the meter makes at set times --
a freeze, a past settlement day, load-curve records -- is the outcome ``no_record``, not
``abnormal``: the meter answered that the record is not there (yet), e.g. today's daily freeze
from a meter that has not passed a midnight since it was installed.  Quality counts it as not
due, neither success nor failure (:mod:`meterd.storage.quality`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any, Final, cast

from meterd.clock import CST
from meterd.collector.channel import ROUTINE, Channel, FailureKind, TransactionError
from meterd.collector.modbus import ModbusLink, ModbusRefused
from meterd.errors import MeterdError, ProtocolError
from meterd.protocols.dlt645 import catalogue
from meterd.protocols.dlt645.catalogue import DecodedValue, Field, Scaling, Value
from meterd.protocols.dlt645.fastpath import layout_of
from meterd.protocols.dlt645.frame import Frame
from meterd.protocols.drivers import Driver, LinkKind, get_driver
from meterd.protocols.drivers.base import FrameDriver
from meterd.protocols.drivers.modbus import block_label
from meterd.protocols.modbus import ReadBlock, ReadPlan, RegisterMap, decode_block
from meterd.protocols.readspec import DLT645_2007, ReadSpec
from meterd.readings import Quality, Reading
from meterd.storage.sqlite import Attempt

MAX_FOLLOW_UPS = 32
_GIVE_UP = (FailureKind.TIMEOUT, FailureKind.LINK)
#: The outcome of "no requested data" for a record item (see the module docstring).
NO_RECORD: Final = "no_record"
#: D1 of the ERR byte: 2007's NO_DATA (无请求数据) and, at the same position, 1997's DI_ERROR (数据标识错),
#: which 1997 firmware answers when a read finds nothing.
NO_DATA_BIT: Final = 0x02


_ONE: Final = Decimal(1).as_tuple()


def _is_one(ratio: object) -> bool:
    """Whether ``ratio`` is ``Decimal(1)`` itself (``Decimal("1.0")`` is not: times it, a value
    gains a digit of exponent)."""
    return isinstance(ratio, Decimal) and ratio.as_tuple() == _ONE


@dataclass(frozen=True, slots=True)
class MeterTarget:
    address: str
    ct: Decimal = Decimal(1)
    pt: Decimal = Decimal(1)
    protocol: str = DLT645_2007  # "dlt645-2007", "dlt645-1997" or "modbus"
    unit: int | None = None  # Modbus unit id
    regmap: RegisterMap | None = field(default=None, compare=False, repr=False)
    # resolved once, when the target is made (at plan time), never per read
    driver: Driver = field(init=False, compare=False, repr=False)
    # ct and pt are both exactly Decimal(1) (most meters are direct-connected): multiplying a value
    # of fewer digits than the context's precision by 1 gives it back digit for digit and exponent
    # for exponent; fields_to_readings skips it (its values have at most 16 digits)
    unity: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "driver", get_driver(self.protocol))
        object.__setattr__(self, "unity", _is_one(self.ct) and _is_one(self.pt))

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
        """The attempts that failed (a ``no_record`` answer is none: the meter answered)."""
        return [a for a in self.attempts if a.outcome != "ok" and a.outcome != NO_RECORD]


class ReadFailed(MeterdError):
    """Internal: one identifier of one meter could not be read.  ``no_data``: the meter's refusal
    says it has no such data (:data:`NO_DATA_BIT`)."""

    def __init__(self, kind: str, detail: str, *, no_data: bool = False) -> None:
        self.kind = kind
        self.detail = detail
        self.no_data = no_data
        super().__init__(detail)


def is_record_item(item: Any) -> bool:
    """Whether a catalogue item is a record the meter makes at set times: a freeze (daily, hourly,
    timed, or its freeze time), a past settlement day (``.prevN``) or load-curve records.  A block
    that holds current values too is not one: "no data" there means the meter lacks the block."""
    return bool(item.records or item.timestamp_di is not None
                or all(q.startswith("frozen.") or ".prev" in q for q in item.quantities))


def record_outcome(exc: ReadFailed, item: Any) -> str:
    """The outcome of a failed read of ``item``: ``no_record`` for "no requested data" from a
    record item, else the failure's kind."""
    return NO_RECORD if exc.no_data and is_record_item(item) else exc.kind


DLT645_2007_DRIVER: Final = cast(FrameDriver, get_driver(DLT645_2007))
#: Whether rounds read DL/T 645-2007 numbers and words through the one-step decode
#: (:meth:`Channel.transact_values`); the plain path stays, and tests run rounds both ways.
FAST_READS = True  # reads: see _poll_frames.fetch
GOOD: Final = Quality.GOOD


async def read_item(
    channel: Channel, address: str, di: int, *, count: int | None = None, start: datetime | None = None,
    priority: int = ROUTINE, driver: FrameDriver | None = None,
) -> bytes:
    """Read one identifier, following up until the meter says there is no more.  Payload bytes.

    ``driver`` is the meter's frame protocol (default DL/T 645-2007)."""
    codec = DLT645_2007_DRIVER if driver is None else driver
    reply = await channel.transact(codec.read_request(address, di, count, start), priority=priority)
    assert isinstance(reply, Frame)
    return await _payload(channel, address, di, reply, codec, priority)


async def _payload(channel: Channel, address: str, di: int, reply: Frame, codec: FrameDriver, priority: int) -> bytes:
    """The rest of :func:`read_item` once the first reply is in."""
    try:
        message: Any = codec.decode_reply(reply)
    except ProtocolError as exc:
        raise ReadFailed(FailureKind.GARBLED, f"undecodable reply: {exc}") from exc
    if isinstance(message, codec.abnormal_replies):
        raise ReadFailed(FailureKind.ABNORMAL, codec.refusal(message),
                         no_data=bool(int(message.error) & NO_DATA_BIT))
    if not isinstance(message, codec.read_replies) or message.di != di:
        raise ReadFailed(FailureKind.GARBLED, f"reply is not for {codec.format_item(di)}: {message!r}")
    payload = bytearray(message.data)
    more = message.follow_up
    seq = 0
    while more:
        seq += 1
        if seq > MAX_FOLLOW_UPS:
            raise ReadFailed(FailureKind.GARBLED,
                             f"{codec.format_item(di)}: more than {MAX_FOLLOW_UPS} follow-up frames")
        follow_reply = await channel.transact(codec.follow_up_request(address, di, seq), priority=priority)
        assert follow_reply is not None
        follow: Any = codec.decode_reply(follow_reply)
        if isinstance(follow, codec.abnormal_replies):
            raise ReadFailed(FailureKind.ABNORMAL, f"follow-up {seq}: {codec.refusal(follow)}")
        if not isinstance(follow, codec.follow_up_replies) or follow.di != di:
            raise ReadFailed(FailureKind.GARBLED, f"follow-up {seq} is not for {codec.format_item(di)}")
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
        ts = p.timestamp.replace(tzinfo=meter_tz).astimezone(UTC)
        out.append(Reading(meter.address, field_.quantity, ts, meter.scale(p.value, field_.scaling), field_.unit))
    return out


Reads = Sequence[int] | ReadSpec | ReadPlan


def values_to_readings(
    meter: MeterTarget, values: Iterable[DecodedValue], timestamp: datetime, meter_tz: tzinfo
) -> list[Reading]:
    out = []
    for v in values:
        value = v.value
        if isinstance(value, Decimal):
            value = meter.scale(value, v.scaling)
        elif isinstance(value, datetime):
            value = value.replace(tzinfo=meter_tz).astimezone(UTC)
        out.append(Reading(meter.address, v.quantity, timestamp, value, v.unit, Quality.GOOD))
    return out


def fields_to_readings(
    meter: MeterTarget, fields: Sequence[Field], values: Sequence[Value], timestamp: datetime
) -> list[Reading]:
    """:func:`values_to_readings` of the fast path's fields and values (numbers of at most 16
    digits and words: no dates), without a DecodedValue between."""
    address = meter.address
    unity = meter.unity
    out = []
    for f, value in zip(fields, values, strict=True):
        if type(value) is Decimal and not unity:
            value = meter.scale(value, f.scaling)
        out.append(Reading(address, f.quantity, timestamp, value, f.unit, GOOD))
    return out


class _Attempts:
    """Per-meter bookkeeping: one Attempt per identifier / block, with the latency it took."""

    def __init__(self, channel: Channel, meter: MeterTarget, now: datetime) -> None:
        self.channel, self.meter, self.now = channel, meter, now
        self.list: list[Attempt] = []
        self.dead: str | None = None
        self._latency = 0.0
        self._successes = 0

    def start(self) -> None:
        self._latency = self.channel.stats.latency_total
        self._successes = self.channel.stats.successes

    def ok(self, item: str) -> None:
        n = self.channel.stats.successes - self._successes
        latency = (self.channel.stats.latency_total - self._latency) / n if n else None
        self.add(item, "ok", latency)

    def add(self, item: str, outcome: str, latency: float | None = None, detail: str = "") -> None:
        self.list.append(Attempt(self.meter.address, self.channel.name, item, self.now, outcome, latency, detail))

    def skip_if_dead(self, item: str) -> bool:
        if self.dead is None:
            return False
        self.add(item, self.dead, detail="not tried: the meter did not answer an earlier request this round")
        return True

    def failed(self, item: str, exc: TransactionError) -> None:
        self.add(item, exc.kind, detail=str(exc))
        if exc.kind in _GIVE_UP:
            self.dead = exc.kind

    async def run(self, item: str, fetch: Callable[..., Awaitable[list[Reading]]], who: str,
                  *args: Any) -> list[Reading]:
        """One identifier / block: skipped if the meter is dead, else ``fetch(*args)`` and its
        outcome recorded the same way for every protocol.  The readings, or none if it failed.
        (``args``, not a ``partial`` per read: one object less to make and free.)"""
        if self.dead is not None:
            self.skip_if_dead(item)
            return []
        stats = self.channel.stats
        self._latency, self._successes = stats.latency_total, stats.successes  # self.start()
        try:
            got = await fetch(*args)
        except TransactionError as exc:
            self.failed(item, exc)
            return []
        except ReadFailed as exc:
            self.add(item, exc.kind, detail=f"{who} {item}: {exc.detail}")
            return []
        except ModbusRefused as exc:
            self.add(item, FailureKind.ABNORMAL, detail=f"{who} {item}: {exc.error}")
            return []
        except ProtocolError as exc:
            self.add(item, FailureKind.GARBLED, detail=f"{who} {item}: {exc}")
            return []
        n = stats.successes - self._successes  # self.ok(item), inline: once per read
        self.list.append(Attempt(self.meter.address, self.channel.name, item, self.now, "ok",
                                 (stats.latency_total - self._latency) / n if n else None, ""))
        return got


async def poll_meter(
    channel: Channel,
    meter: MeterTarget,
    reads: Reads,
    now: datetime,
    *,
    meter_tz: tzinfo = CST,
    curve_points: int = 4,
    curve_interval: timedelta = catalogue.DEFAULT_CURVE_INTERVAL,
    link: ModbusLink | None = None,
) -> tuple[list[Reading], list[Attempt]]:
    """Read one meter, in its protocol.

    ``reads`` is a :class:`ReadSpec` (or a plain list of identifiers) for DL/T 645 meters and a
    :class:`~meterd.protocols.modbus.ReadPlan` for Modbus meters, which also need ``link``.
    DL/T 645-2007 load-curve identifiers fetch the last ``curve_points`` records
    (N-records-from-a-time form) and give one reading per record.
    """
    if meter.driver.link is LinkKind.MODBUS:
        if not isinstance(reads, ReadPlan) or link is None:
            raise TypeError(f"meter {meter.address}: a Modbus meter is polled with a ReadPlan and a ModbusLink")
        return await _poll_modbus(link, meter, reads, now)
    spec = reads if isinstance(reads, ReadSpec) else ReadSpec(tuple(reads))  # type: ignore[arg-type]
    return await _poll_frames(channel, meter, spec, now, meter_tz, curve_points, curve_interval)


async def _poll_frames(
    channel: Channel,
    meter: MeterTarget,
    spec: ReadSpec,
    now: datetime,
    meter_tz: tzinfo,
    curve_points: int,
    curve_interval: timedelta,
) -> tuple[list[Reading], list[Attempt]]:
    """A frame-protocol meter (DL/T 645, either edition): one read per identifier.  A frozen value
    is stamped with the freeze time its item names (read once per meter and round); a load-curve
    item fetches its last ``curve_points`` records."""
    driver = cast(FrameDriver, meter.driver)  # poll_meter sent only FRAMES drivers here
    readings: list[Reading] = []
    log = _Attempts(channel, meter, now)
    freeze_times: dict[int, datetime] = {}
    # dates values the meter sends without a year (1997 demand times)
    local_now = now.astimezone(meter_tz).replace(tzinfo=None) if driver.needs_local_now else None
    who = f"meter {meter.address}"
    # DL/T 645-2007 reads of numbers and words take the one-step decode (protocols/dlt645/fastpath)
    fast = driver is DLT645_2007_DRIVER and FAST_READS

    async def fetch(di: int) -> list[Reading]:
        item = driver.lookup(di)
        try:
            stamp = now
            if item.timestamp_di is not None:
                if item.timestamp_di not in freeze_times:
                    raw = await read_item(channel, meter.address, item.timestamp_di, driver=driver)
                    (tv,) = driver.decode(item.timestamp_di, raw, local_now)
                    assert isinstance(tv.value, datetime)
                    freeze_times[item.timestamp_di] = tv.value.replace(tzinfo=meter_tz).astimezone(UTC)
                stamp = freeze_times[item.timestamp_di]
            if item.records:
                first = curve_window(now, meter_tz, curve_points, curve_interval)
                payload = await read_item(channel, meter.address, di, count=curve_points, start=first, driver=driver)
                got = curve_readings(meter, di, payload, meter_tz, curve_interval)
            elif fast and layout_of(di) is not None:
                # read_item's work with the reply decoded in the matcher (one coroutine less per read)
                reply = await channel.transact_values(DLT645_2007_DRIVER.read_request(meter.address, di))
                if type(reply) is tuple:
                    got = fields_to_readings(meter, reply[2], reply[3], stamp)
                else:
                    assert isinstance(reply, Frame)
                    payload = await _payload(channel, meter.address, di, reply, DLT645_2007_DRIVER, ROUTINE)
                    got = values_to_readings(meter, driver.decode(di, payload, local_now), stamp, meter_tz)
            else:
                payload = await read_item(channel, meter.address, di, driver=driver)
                got = values_to_readings(meter, driver.decode(di, payload, local_now), stamp, meter_tz)
        except ReadFailed as exc:
            exc.kind = record_outcome(exc, item)  # the freeze time's own read counts for its item
            raise
        keep = spec.keep.get(di)
        return got if keep is None else [r for r in got if r.quantity in keep]  # spec.wanted

    for di in spec.items:
        readings.extend(await log.run(driver.format_item(di), fetch, who, di))
    return readings, log.list


def item_labels(meter: MeterTarget, reads: Reads) -> list[str]:
    """The items a round asks ``meter`` for, named as its attempts name them."""
    if not isinstance(reads, (ReadSpec, ReadPlan)):
        reads = ReadSpec(tuple(reads))
    return meter.driver.item_labels(reads)


def link_failed(channel: str, meters: Iterable[tuple[MeterTarget, Reads]], now: datetime,
                detail: str) -> list[Attempt]:
    """A round that died before it could say how each request went: every item of every meter is a
    ``link`` failure, as a dead link's are (:class:`_Attempts` records the same)."""
    return [Attempt(meter.address, channel, item, now, FailureKind.LINK, None, detail)
            for meter, reads in meters for item in item_labels(meter, reads)]


async def _poll_modbus(
    link: ModbusLink, meter: MeterTarget, plan: ReadPlan, now: datetime
) -> tuple[list[Reading], list[Attempt]]:
    readings: list[Reading] = []
    log = _Attempts(link.channel, meter, now)
    assert meter.unit is not None
    unit = meter.unit

    async def fetch(index: int, block: ReadBlock) -> list[Reading]:
        if index and plan.pause_between_requests:
            await asyncio.sleep(plan.pause_between_requests)
        data = await link.read_block(meter.address, unit, block)
        return values_to_readings(meter, decode_block(block, data), now, CST)

    who = f"meter {meter.address} unit {unit}"
    for index, block in enumerate(plan):
        readings.extend(await log.run(block_label(block), fetch, who, index, block))
    return readings, log.list


async def poll_round(
    channel: Channel,
    meters: Iterable[MeterTarget] | Iterable[tuple[MeterTarget, Reads]],
    items: Reads | None,
    now: datetime,
    *,
    meter_tz: tzinfo = CST,
    link: ModbusLink | None = None,
) -> RoundResult:
    """One round over ``meters``: either targets all read with ``items``, or (target, reads) pairs."""
    result = RoundResult(channel.name, now)
    reads: Reads | None
    for entry in meters:
        if isinstance(entry, tuple):
            meter, reads = entry
        else:
            meter, reads = entry, items
        assert reads is not None
        readings, attempts = await poll_meter(channel, meter, reads, now, meter_tz=meter_tz, link=link)
        result.readings.extend(readings)
        result.attempts.extend(attempts)
    return result
