"""The one duration grammar of meterd: config values, command-line options, API query parameters.

A duration is a number of seconds (TOML ``900`` or ``1.5``, or the same as text, ``"900"``) or one
or more number-unit parts, ``ms``, ``s``, ``m``, ``h`` or ``d``, summed: ``"250ms"``, ``"30s"``,
``"15m"``, ``"1h30m"``, ``"1d"`` (case-insensitive, spaces between parts allowed).  Numbers are
ASCII decimals without sign or exponent.  Anything else -- a boolean, ``"-5m"``, ``"1e3s"``,
``"15 minutes"``, NaN, infinity -- is not a duration, and neither is anything over
:data:`MAX_SECONDS` (100 years), so every accepted value fits a ``timedelta`` and a date after
it; the caller says which key or argument was wrong.  Whether zero is allowed is the caller's rule.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Any, Final

from meterd.errors import ConfigError

MAX_SECONDS: Final = 100 * 365.25 * 86400.0
#: How the grammar is described in error messages.
DURATION_FORMS: Final = 'seconds, or "500ms", "30s", "15m", "1h", "1d", "1h30m"'

_NUMBER: Final = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PART: Final = re.compile(rf"({_NUMBER})\s*(ms|s|m|h|d)", re.IGNORECASE)
_PARTS: Final = re.compile(rf"\s*{_NUMBER}\s*(?:ms|s|m|h|d)(?:\s*{_NUMBER}\s*(?:ms|s|m|h|d))*\s*", re.IGNORECASE)
_SECONDS: Final = re.compile(rf"\s*{_NUMBER}\s*")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_MAX_TEXT: Final = 64  # longer text is not a duration (and is not parsed)


def parse_duration(value: Any) -> float | None:
    """Seconds for a duration in the grammar above, ``None`` for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an integer past float's range
            return None
    elif isinstance(value, str) and len(value) <= _MAX_TEXT:
        if _SECONDS.fullmatch(value):
            seconds = float(value)
        elif _PARTS.fullmatch(value):
            seconds = sum(float(number) * _UNIT_SECONDS[unit.lower()] for number, unit in _PART.findall(value))
        else:
            return None
    else:
        return None
    if not math.isfinite(seconds) or abs(seconds) > MAX_SECONDS:
        return None
    return seconds


def parse_step(text: str, *, name: str = "--step") -> timedelta:
    """A positive duration given as an argument (a command-line option, a query parameter):
    ``900``, ``15m``, ``1h``; :class:`ConfigError` naming the argument otherwise."""
    seconds = parse_duration(text)
    if seconds is None or seconds <= 0:
        raise ConfigError(f"{name} {text!r}: use e.g. 15m, 1h, 900")
    return timedelta(seconds=seconds)
