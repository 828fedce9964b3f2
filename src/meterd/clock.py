"""Time for all of meterd: the clock type, the one place that reads the wall clock, the site's zone.

Every instant meterd stores or passes around is timezone-aware UTC.  Calendar questions (which
day a reading belongs to, which month is billed, quiet hours, time-of-use periods, cron
schedules, the clocks inside meters) are answered in China Standard Time, the site's zone:
UTC+8 all year, no daylight saving, so the conversion is a fixed offset and never ambiguous.

Logic takes the time as an argument (``now``) or a :data:`Clock` to call; only the outermost
layers (daemon, CLI, I/O wrappers) default that clock to :func:`utc_now`.  Tests pass a fake one.

May import nothing of meterd: every layer, the protocol codecs excepted, may import this module.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Final

__all__ = ["CST", "UTC", "Clock", "local_date", "local_time", "today_cst", "utc_now"]

#: China Standard Time, the site's zone (and the zone of the meters' own clocks).
CST: Final = timezone(timedelta(hours=8), "CST")

#: Something that tells the time: returns an aware UTC datetime.
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The wall clock, aware, in UTC: the default :data:`Clock`."""
    return datetime.now(UTC)


def local_date(at: datetime) -> date:
    """The CST calendar day of the aware instant ``at``."""
    return at.astimezone(CST).date()


def local_time(now: datetime) -> datetime:
    """``now`` in CST; a naive datetime is refused (it would silently mean the host's zone)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware: {now!r}")
    return now.astimezone(CST)


def today_cst(now: datetime | None = None) -> date:
    """Today's CST date at ``now`` (default: the wall clock; for the CLI's "yesterday" defaults)."""
    return local_date(now or utc_now())
