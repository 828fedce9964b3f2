"""The ``[site]`` section: facts about the site as a whole.

::

    [site]
    timezone = "Asia/Shanghai"   # the operators' zone (IANA name): every time shown to a person
                                 # is in it with its offset, and the master's daily figures cut at
                                 # its midnight (default Asia/Shanghai, i.e. UTC+8 all year)

The meters' own clocks and the tariffs stay on Beijing time whatever this says: see
:mod:`meterd.clock` for which times follow which zone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

from meterd.checking import hint, show
from meterd.clock import CST, DEFAULT_TIMEZONE, zone_named
from meterd.config.keys import keys


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """``timezone``: the IANA name as written; ``zone``: the zone it names (:data:`~meterd.clock.CST`
    for the default)."""

    timezone: str = DEFAULT_TIMEZONE
    zone: tzinfo = field(default=CST, compare=False)


def parse_site(check: Any, raw: Any) -> SiteConfig | None:
    """``[site]`` (``raw`` None when absent: the defaults); None after recording a problem."""
    if raw is None:
        return SiteConfig()
    table = check.table("site", raw)
    if table is None:
        return None
    check.known_keys("site", table, keys("site"))
    name = table.get("timezone", DEFAULT_TIMEZONE)
    if not isinstance(name, str):
        check.problem("site.timezone", f"must be an IANA time zone name such as \"Asia/Shanghai\", got {show(name)}")
        return None
    try:
        zone = zone_named(name)
    except ValueError as exc:
        check.problem("site.timezone", f"{exc}{_suggest(name)}")
        return None
    return SiteConfig(timezone=name, zone=zone)


def _suggest(name: str) -> str:
    """A close IANA name for a misspelt one (``asia/shanghai``, ``Europe/Berln``); only on error:
    listing the zones reads the whole database."""
    from zoneinfo import available_timezones

    if len(name) > 64:
        return ""
    zones = available_timezones()
    by_case = {z.lower(): z for z in zones}
    if name.strip().lower() in by_case:
        return f' (did you mean "{by_case[name.strip().lower()]}"?)'
    return hint(name, zones)
