"""Small helpers shared by the subcommands: output, JSON encoding, time parsing."""

from __future__ import annotations

import enum
import json
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from meterd.config.durations import parse_duration
from meterd.readings import Reading

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


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


def format_value(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return f"{value.name} (0x{int(value):02X})" if isinstance(value, int) else str(value.name)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value} (0x{value:04X})"
    return str(value)


def error(message: str) -> None:
    print(f"meterd: {message}", file=sys.stderr)


def parse_time(text: str, now: datetime) -> datetime:
    """``2026-11-23``, ``2026-11-23T10:00``, or a duration ago (:mod:`meterd.config.durations`):
    ``-2h``, ``-30m``, ``-1d``, ``-1h30m`` -> aware UTC datetime."""
    t = text.strip()
    if t.startswith("-") and (seconds := parse_duration(t[1:])) is not None:
        return now - timedelta(seconds=seconds)
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise ValueError(f"{text!r} is not a time (use 2026-11-23T10:00, or -2h, -30m, -1d)") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
