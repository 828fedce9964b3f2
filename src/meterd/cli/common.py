"""Small helpers shared by the subcommands: output, JSON encoding, time parsing."""

from __future__ import annotations

import argparse
import enum
import json
import logging
import math
import sys
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from meterd.checking import shown, small_int
from meterd.clock import CST, DEFAULT_TIMEZONE, day_start, local_date, local_text
from meterd.config.durations import parse_duration
from meterd.control.model import MAX_KEY
from meterd.readings import Reading
from meterd.storage.database import Location, as_database

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

# What an argument may be, checked before it is used: a number of 5,000 digits made int() fail
# (Python's limit on conversion) or reached SQLite as an OverflowError traceback; a 100 KB
# --ref or token name was stored and printed back whole.
MAX_COUNT: Final = 1_000_000  # --limit (rows printed) of any command
MAX_ID: Final = 2**63 - 1  # an alarm's or command's id: SQLite's and PostgreSQL's largest integer
MAX_TIMEOUT: Final = 600  # seconds a technician's read or probe waits for an answer (a DTU's is seconds)
MAX_RETRIES: Final = 10  # extra attempts of a read or a probe's try, as a channel's retries in the config
MAX_NAME: Final = MAX_KEY  # characters of an account, meter, reference, job or operator name given on the command line (as the API and the billing imports take them)


def whole_number(low: int, high: int) -> Any:
    """An argparse ``type``: an integer from ``low`` to ``high``, refused (exit 2, the argument
    named) before ``int()`` sees more digits than ``high`` has."""

    def parse(text: str) -> int:
        value = small_int(text.strip(), low, high)
        if value is None:
            raise argparse.ArgumentTypeError(f"{shown(text)} is not a whole number from {low:,} to {high:,}")
        return value

    parse.__name__ = "whole number"
    return parse


def seconds(high: float) -> Any:
    """An argparse ``type``: a number of seconds above 0 and at most ``high`` (a --timeout of 1e308
    waited for ever; inf and nan are refused too)."""

    def parse(text: str) -> float:
        try:
            value = float(text) if len(text) <= 24 else math.nan
        except ValueError:
            value = math.nan
        if not 0 < value <= high:  # NaN too
            raise argparse.ArgumentTypeError(f"{shown(text)} is not a number of seconds above 0 and at most {high:,}")
        return value

    parse.__name__ = "seconds"
    return parse


def name_arg(text: str) -> str:
    """An argparse ``type`` for a name or reference: at most :data:`MAX_NAME` characters."""
    if len(text) > MAX_NAME:
        raise argparse.ArgumentTypeError(f"{shown(text)} is longer than {MAX_NAME} characters")
    return text


def to_jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex(" ").upper()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def print_json(doc: Any) -> None:
    json.dump(to_jsonable(doc), sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")
    sys.stdout.flush()


def reading_dict(r: Reading) -> dict[str, Any]:
    return {
        "meter": r.meter,
        "quantity": r.quantity,
        "timestamp": r.timestamp.isoformat(),
        "value": to_jsonable(r.value),
        "unit": r.unit,
        "quality": str(r.quality),
    }


def site_zone(config: Any, where: Location | None = None) -> tzinfo:
    """The site's zone for what a command prints: the config's ``[site] timezone``; without a
    config, the zone the state database at ``where`` records (:func:`recorded_zone`); the default
    (Asia/Shanghai) when neither names one."""
    if config is not None:
        return config.site.zone
    return CST if where is None else recorded_zone(where)


_said: set[str] = set()  # the locations whose missing zone this process said on stderr already


def recorded_zone(where: Location) -> tzinfo:
    """The site's zone the state database at ``where`` records (the daemon and every command given
    a config record it), the log's times in it too; else the default, said once on stderr.  A data
    directory that does not exist gets the default without a word: the command says what is wrong."""
    from meterd.clock import zone_named
    from meterd.storage import site

    what = "the database" if as_database(where) is not None else f"the data directory {where}"
    try:
        name = site.recorded(where)
    except site.storage_errors() as exc:  # unreadable, or a server out of reach: the command itself says so
        log.debug("the site zone recorded at %s: %s", where, exc)
        problem = f"the site zone {what} records cannot be read ({exc})"
    else:
        problem = f"{what} records no site zone"
        if name is not None:
            try:
                zone = zone_named(name)
            except ValueError as exc:
                problem = f"{what} records a zone this host does not know ({exc})"
            else:
                log_times_in(zone)
                return zone
    if as_database(where) is None and not Path(str(where)).is_dir():
        return CST
    if str(where) not in _said:
        _said.add(str(where))
        error(f"note: times in +08:00 ({DEFAULT_TIMEZONE}): no config given and {problem}")
    return CST


def record_site_zone(config: Any, now: datetime) -> tuple[bool, str | None]:
    """Record the config's ``[site] timezone`` in its state database, when that exists (a data
    directory without ``state.sqlite3`` gets none made; a PostgreSQL database always exists):
    ``(changed, before)`` as :func:`meterd.storage.site.record`."""
    from meterd.storage import site

    where = config.store.state
    if not site.state_exists(where):
        return False, None
    return site.record(where, site.TIMEZONE, config.site.timezone, now)


def format_value(value: Any, zone: tzinfo = CST) -> str:
    """A reading's value for people; an aware time (a meter's clock, a freeze time) in ``zone``
    with its offset, a naive one as the meter gave it."""
    if isinstance(value, enum.Enum):
        return f"{value.name} (0x{int(value):02X})" if isinstance(value, int) else str(value.name)
    if isinstance(value, datetime):
        return local_text(value, zone) if value.tzinfo is not None else value.isoformat(sep=" ")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value} (0x{value:04X})"
    return str(value)


class SiteTimeFormatter(logging.Formatter):
    """Log lines stamped in the site's zone with its offset (``2026-11-23 10:00:00.123+08:00``), not
    the host's zone without one.  The zone is the default until a command that loads a config says
    which it is (:func:`log_times_in`)."""

    zone: tzinfo = CST

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return local_text(datetime.fromtimestamp(record.created, UTC), self.zone, timespec="milliseconds")


def load_site_config(path: str, *, record: bool = True) -> Any:
    """:func:`~meterd.config.loader.load_config`, and the log's times in its site zone from now on.

    ``record``: the site's zone is recorded in the state database (:func:`record_site_zone`), for
    the commands run later on the data directory alone; a failure to write it (a database this
    user may only read, one out of reach) is logged and is no failure of the command.  ``meterd
    run`` and ``meterd migrate`` record it only once the tables are checked (no write before)."""
    from meterd.config.loader import load_config
    from meterd.storage import site

    config = load_config(path)
    log_times_in(config.site.zone)
    if record:
        try:
            changed, before = record_site_zone(config, datetime.now(UTC))
        except site.storage_errors() as exc:
            log.debug("the site zone not recorded in %s: %s", config.store.state, exc)
        else:
            if changed:
                log.info("site zone %s recorded in the state database %s%s", config.site.timezone, config.store.state,
                         f" (it recorded {before})" if before else "")
    return config


def log_times_in(zone: tzinfo) -> None:
    """From now on the log's times are in ``zone`` (the config's ``[site] timezone``)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, SiteTimeFormatter):
            handler.formatter.zone = zone


def error(message: str) -> None:
    print(f"meterd: {message}", file=sys.stderr)


def parse_time(text: str, now: datetime, zone: tzinfo = CST) -> datetime:
    """A time an operator types -> aware UTC datetime:

    - a duration ago (:mod:`meterd.config.durations`), with or without the minus sign: ``2h``,
      ``-2h``, ``30m``, ``-1d``, ``1h30m``;
    - ``now``, ``today`` or ``yesterday`` (midnight in ``zone``, the site's);
    - a date (``2026-11-23``: its midnight in ``zone``) or an ISO time (``2026-11-23T10:00``,
      ``2026-11-23 10:00``); a time without an offset is the site's local time (``zone``), one with
      an offset is taken as written."""
    t = text.strip()
    word = t.lower()
    if word == "now":
        return now.astimezone(UTC)
    if word in ("today", "yesterday"):
        day = local_date(now, zone) - timedelta(days=1 if word == "yesterday" else 0)
        return day_start(day, zone).astimezone(UTC)
    ago = t.removeprefix("-")
    # a duration has its unit (a bare number is a compact date: 20261123)
    seconds = parse_duration(ago) if ago[:1].isdigit() and ago[-1:].isalpha() else None
    try:
        if seconds is not None:
            return now - timedelta(seconds=seconds)
        dt = datetime.fromisoformat(t)
    except (ValueError, OverflowError):
        raise ValueError(f"{shown(text)} is not a time (use 2h or -2h for two hours ago, today, yesterday, "
                         "2026-11-23, or 2026-11-23T10:00 in local time)") from None
    try:  # 0001-01-01 in +08:00 is before the first instant Python has
        return (dt if dt.tzinfo else dt.replace(tzinfo=zone)).astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{shown(text)} is out of range (years 0002 to 9998)") from None

