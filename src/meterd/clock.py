"""Time for all of meterd: the clock type, the one place that reads the wall clock, the zones.

Every instant meterd stores or passes around is timezone-aware UTC.  Two zones answer calendar
questions, and they are kept apart on purpose:

- **The meters' zone**, :data:`CST` (China Standard Time, Beijing time: UTC+8 all year, no
  daylight saving).  DL/T 645 carries wall-clock times without a zone, and meters in China keep
  Beijing time, so everything read from or sent to a meter's clock is in it: freeze and curve
  times, the daily-frozen day a register belongs to, the collector's task schedules (a daily
  read follows the meters' midnight freeze), relay validity times; and the tariff regime the
  meters execute -- time-of-use periods, tier years and months, monthly fixed charges, the
  prepaid policy's quiet hours and holidays.  A fixed offset: the conversion is never ambiguous.
- **The site's zone** (``[site] timezone``, an IANA name; default ``Asia/Shanghai``): where the
  operators are.  Every time shown to a person is in it, with its offset, and every daily figure
  the master computes itself cuts at its midnight: collection-quality days, load-curve and
  dashboard days, retention's days, billing export days and file names, the sync, analytics and
  prune schedules, the CLI's ``today`` / ``yesterday`` and times typed without an offset.

Why two and not one process-wide zone: the meters' zone is a fact of the protocol and the
tariff, the site's a setting of the config; a global set at start would be hidden state every
calendar function reads (the house style passes time in, and a test could not run two sites in
one process).  So the site's zone is a value: :class:`~meterd.config.model.Config` holds it
(``config.site.zone``), the composition root and the CLI hand it to the parts that cut days or
show times, and every such function takes ``zone`` with :data:`CST` as its default -- the
default site, ``Asia/Shanghai``, *is* :data:`CST` (:func:`zone_named` returns that very object:
Shanghai has kept UTC+8 without daylight saving since 1991), so a config without ``[site]``
behaves exactly as before the setting existed.  Other zones are :class:`zoneinfo.ZoneInfo`;
their days may be 23 or 25 hours long, which is why a day's end is the next day's midnight
(:func:`day_bounds`), never its start plus 24 hours.

Logic takes the time as an argument (``now``) or a :data:`Clock` to call; only the outermost
layers (daemon, CLI, I/O wrappers) default that clock to :func:`utc_now`.  Tests pass a fake one.

May import nothing of meterd: every layer, the protocol codecs excepted, may import this module.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["CST", "DEFAULT_TIMEZONE", "UTC", "Clock", "day_bounds", "day_start", "local_date", "local_text",
           "local_time", "today_cst", "utc_now", "zone_name", "zone_named"]

#: China Standard Time: the zone of the meters' own clocks and of the tariffs, and the default site zone.
CST: Final = timezone(timedelta(hours=8), "CST")

#: The site's zone when the config names none (``[site] timezone``): Beijing time, i.e. :data:`CST`.
DEFAULT_TIMEZONE: Final = "Asia/Shanghai"
MAX_ZONE_NAME: Final = 64  # the longest IANA name is ~32 characters

#: Something that tells the time: returns an aware UTC datetime.
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The wall clock, aware, in UTC: the default :data:`Clock`."""
    return datetime.now(UTC)


def zone_named(name: str) -> tzinfo:
    """The zone of an IANA name (``Asia/Shanghai``, ``Asia/Urumqi``, ``Europe/Berlin``, ``UTC``).

    ``Asia/Shanghai`` is :data:`CST` itself.  ValueError naming the problem for anything that is no
    zone -- including ``localtime`` (the host's zone, which is what a site zone must not depend on)."""
    if not isinstance(name, str) or not name or len(name) > MAX_ZONE_NAME or name != name.strip():
        shown = repr(name[:MAX_ZONE_NAME]) + ("..." if len(name) > MAX_ZONE_NAME else "")
        raise ValueError(f"{shown} is not a time zone name (an IANA name such as Asia/Shanghai)")
    if name == DEFAULT_TIMEZONE:
        return CST
    if name == "localtime":
        raise ValueError("'localtime' is the host's zone, not a site's: name it (e.g. Asia/Shanghai)")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Asia/Shanghai or Europe/Berlin)") from None


def zone_name(zone: tzinfo) -> str:
    """The IANA name of a site zone (``Asia/Shanghai`` for :data:`CST`), for titles and JSON."""
    if zone is CST:
        return DEFAULT_TIMEZONE
    return getattr(zone, "key", None) or str(zone)


def local_date(at: datetime, zone: tzinfo = CST) -> date:
    """The calendar day of the aware instant ``at`` in ``zone`` (default: CST)."""
    return at.astimezone(zone).date()


def local_time(now: datetime, zone: tzinfo = CST) -> datetime:
    """``now`` in ``zone`` (default: CST); a naive datetime is refused (it would silently mean the
    host's zone)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware: {now!r}")
    return now.astimezone(zone)


def today_cst(now: datetime | None = None) -> date:
    """Today's CST date at ``now`` (default: the wall clock)."""
    return local_date(now or utc_now())


def day_start(day: date, zone: tzinfo = CST) -> datetime:
    """The first instant of ``day`` in ``zone`` (its midnight; where a zone skips midnight, the
    instant the day begins), at the zone's offset of that instant as a fixed offset: arithmetic
    on it is exact (Python adds and subtracts wall-clock time on datetimes that share a
    :class:`~zoneinfo.ZoneInfo`, so ``end - start`` of a 23-hour day would be 24 hours)."""
    if zone is CST:
        return datetime.combine(day, time(), CST)
    start = datetime.combine(day, time(), zone).astimezone(UTC)
    offset = start.astimezone(zone).utcoffset()
    assert offset is not None
    return start.astimezone(timezone(offset))


def day_bounds(day: date, zone: tzinfo = CST) -> tuple[datetime, datetime]:
    """``[start, end)`` of ``day`` in ``zone``: its midnight and the next day's (23, 24 or 25 hours
    apart in a zone with daylight saving)."""
    return day_start(day, zone), day_start(day + timedelta(days=1), zone)


def local_text(at: datetime, zone: tzinfo = CST, *, timespec: str = "seconds") -> str:
    """An instant for people: ``2026-11-23 10:00:00+08:00`` -- the wall time in ``zone`` with its
    offset, to ``timespec`` (``"minutes"``, ``"seconds"``, ``"milliseconds"``)."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"time {at!r} has no zone: meterd shows aware times only")
    return at.astimezone(zone).isoformat(sep=" ", timespec=timespec)
