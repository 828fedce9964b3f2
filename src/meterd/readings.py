"""The reading: the one record every collection path produces and every store keeps.

``value`` is a ``Decimal`` for numbers (energy is money), a ``datetime`` for times, an ``int`` for
status words and a ``str`` for text.  ``timestamp`` is when the value is valid: the master's
collection time for instantaneous values, the meter's own record time for frozen and curve data.
Timestamps are timezone-aware UTC.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

Value = Decimal | datetime | int | str | bool


class Quality(enum.StrEnum):
    GOOD = "good"  # read from the meter and decoded
    SUSPECT = "suspect"  # read, but the meter flagged a problem (e.g. clock battery, status bits)
    ESTIMATED = "estimated"  # not read; filled in by the master (never mixed silently with good)
    IMPLAUSIBLE = "implausible"  # read, but impossible (NaN, beyond the register, more than the meter can carry)


@dataclass(frozen=True, slots=True)
class Reading:
    meter: str
    quantity: str
    timestamp: datetime
    value: Value
    unit: str = ""
    quality: Quality = Quality.GOOD


def address_key(text: str) -> str:
    """A meter address as the archive, the ledger and the config key it: all digits -> the
    12-digit form (``1`` is ``000000000001``); anything else stripped and kept as written."""
    text = text.strip()
    return text.zfill(12) if text.isdigit() else text
