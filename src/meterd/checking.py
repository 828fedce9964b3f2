"""The core of meterd's all-errors-at-once validation of TOML data (site config, register maps).

A checker's typed accessors record a problem naming the source file and key path, and return
``None`` instead of raising, so one pass reports every problem.  Callers raise ConfigError with
``problems`` at the end.  Imports nothing of meterd, so any layer (``protocols`` included) may
use it, like ``meterd.errors``.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from typing import Any, Final


def show(value: Any) -> str:
    """A value as the operator wrote it in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


#: Characters of a refused input quoted in an error message (the API's and the CLI's).
SHOWN: Final = 40


def shown(text: str) -> str:
    """``text`` quoted for an error message: a long one cut to its ends, with its length, so that a
    100 KB argument or a 16 KiB query parameter is not echoed back whole."""
    if len(text) <= SHOWN:
        return repr(text)
    return f"{text[:20]!r}…{text[-8:]!r} ({len(text)} characters)"


def small_int(text: str, low: int, high: int) -> int | None:
    """``text`` as an integer from ``low`` to ``high``, or None: ASCII digits only, and never more
    significant digits than ``high`` has -- ``int()`` of 5,000 digits raises ValueError (Python's
    limit on integer conversion), which answered 500 in the API and was a traceback in the CLI."""
    if not (text.isascii() and text.isdigit()) or len(text.lstrip("0")) > len(str(high)):
        return None
    value = int(text)
    return value if low <= value <= high else None


def hint(word: Any, options: Iterable[str]) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(options), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


class Checker:
    """Typed accessors that record a problem and return None instead of raising."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        where = f"{path}: " if path else ""
        self.problems.append(f"{self.source}: {where}{message}")

    def known_keys(self, path: str, table: dict[str, Any], allowed: Iterable[str]) -> None:
        allowed = tuple(allowed)
        for key in table:
            if key not in allowed:
                full = f"{path}.{key}" if path else key
                self.problem(full, f"unknown key{hint(key, allowed)}")

    def table(self, path: str, value: Any) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.problem(path, f"must be a table, got {show(value)}")
            return None
        return value

    def array_of_tables(self, path: str, value: Any) -> list[tuple[int, dict[str, Any]]]:
        if not isinstance(value, list):
            self.problem(path, f"must be an array of tables ([[{path}]]), got {show(value)}")
            return []
        result = []
        for index, entry in enumerate(value):
            if isinstance(entry, dict):
                result.append((index, entry))
            else:
                self.problem(f"{path}[{index}]", f"must be a table, got {show(entry)}")
        return result

    def string(self, path: str, value: Any, *, allow_empty: bool = False) -> str | None:
        if not isinstance(value, str):
            self.problem(path, f"must be a string, got {show(value)}")
            return None
        if not allow_empty and not value.strip():
            self.problem(path, "must not be empty")
            return None
        return value

    def required_string(self, path: str, table: dict[str, Any], key: str) -> str | None:
        if key not in table:
            self.problem(f"{path}.{key}", "missing: required")
            return None
        return self.string(f"{path}.{key}", table[key])
