"""The shared vocabulary of prepaid control: rates, register readings, ledger entries, commands.

Money is ``Decimal`` yuan, kept to the fen (0.01) in the ledger; energy is ``Decimal`` kWh on the
primary side (CT × PT applied, as every reading in meterd is).  Times are timezone-aware UTC;
calendar questions (which day, which month, quiet hours, time-of-use periods) are answered in
China Standard Time, the meters' own zone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Final

from meterd.protocols.dlt645.messages import RelayCommand

FEN: Final = Decimal("0.01")
KWH_PLACES: Final = Decimal("0.0001")  # energy is split (price changes, tiers) to 0.1 Wh
#: The longest reason an operator may give (commands, cancellations, adjustments, 保电): it is kept
#: in the command or ledger entry and in the audit log; the API and the CLI refuse a longer one.
MAX_REASON: Final = 500
#: The longest account name or payment id (ref): each is kept in ledger entries and audit lines. The
#: API refuses a longer one in a request, the billing imports quarantine a record carrying one.
MAX_KEY: Final = 200


def money(value: Decimal) -> Decimal:
    """Round to the fen, half up (how a bill is rounded)."""
    return value.quantize(FEN, rounding=ROUND_HALF_UP)


class Rate(enum.StrEnum):
    """A register the charge is computed from.  DL/T 645 rate 1..4 = sharp, peak, flat, valley."""

    TOTAL = "total"
    SHARP = "sharp"  # 尖
    PEAK = "peak"  # 峰
    FLAT = "flat"  # 平
    VALLEY = "valley"  # 谷

    @property
    def quantity(self) -> str:
        return RATE_QUANTITY[self]


RATE_QUANTITY: Final = {
    Rate.TOTAL: "energy.active.import.total",
    Rate.SHARP: "energy.active.import.rate1",
    Rate.PEAK: "energy.active.import.rate2",
    Rate.FLAT: "energy.active.import.rate3",
    Rate.VALLEY: "energy.active.import.rate4",
}
QUANTITY_RATE: Final = {q: r for r, q in RATE_QUANTITY.items()}
TOU_RATES: Final = (Rate.SHARP, Rate.PEAK, Rate.FLAT, Rate.VALLEY)

# A DL/T 645 energy register is XXXXXX.XX kWh on the meter (secondary side): it wraps at 10^6.
REGISTER_SPAN: Final = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class RegisterReading:
    """One good reading of an energy register: primary-side kWh at ``at`` (UTC)."""

    meter: str
    rate: Rate
    at: datetime
    value: Decimal


class EntryKind(enum.StrEnum):
    PAYMENT = "payment"
    CHARGE = "charge"
    FIXED = "fixed"  # fixed monthly charge
    ADJUSTMENT = "adjustment"
    OPENING = "opening"  # the balance an account starts with (carried over from before meterd), once


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One append-only ledger line.  ``amount`` is signed: payments and credits positive,
    charges negative.  ``key`` is the natural unique key (payment id; meter + rate + period for a
    charge; adjustment id): a second entry with the same key is never applied."""

    key: str
    account: str
    kind: EntryKind
    amount: Decimal
    at: datetime
    detail: str = ""
    meter: str | None = None
    rate: Rate | None = None
    kwh: Decimal | None = None
    price: Decimal | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None


class CommandKind(enum.StrEnum):
    ALARM = "alarm"
    ALARM_RELEASE = "alarm-release"
    TRIP = "trip"
    RECLOSE_ALLOWED = "reclose-allowed"
    RECLOSE = "reclose"
    PROTECT = "protect"
    PROTECT_RELEASE = "protect-release"

    @property
    def relay_command(self) -> RelayCommand:
        return _RELAY[self]

    @property
    def decides(self) -> str:
        """What of the meter the command decides: ``relay`` (trip, reclose, reclose-allowed), ``alarm``
        (the pre-trip alarm) or ``protect`` (保电).  The newest confirmed command deciding the same
        thing supersedes a failed one (its failure alarm and anomaly are resolved)."""
        return _DECIDES[self]


_RELAY: Final = {
    CommandKind.ALARM: RelayCommand.ALARM,
    CommandKind.ALARM_RELEASE: RelayCommand.ALARM_RELEASE,
    CommandKind.TRIP: RelayCommand.TRIP,
    CommandKind.RECLOSE_ALLOWED: RelayCommand.RECLOSE_ALLOWED,
    CommandKind.RECLOSE: RelayCommand.RECLOSE,
    CommandKind.PROTECT: RelayCommand.PROTECT,
    CommandKind.PROTECT_RELEASE: RelayCommand.PROTECT_RELEASE,
}
_DECIDES: Final = {
    CommandKind.ALARM: "alarm", CommandKind.ALARM_RELEASE: "alarm",
    CommandKind.TRIP: "relay", CommandKind.RECLOSE: "relay", CommandKind.RECLOSE_ALLOWED: "relay",
    CommandKind.PROTECT: "protect", CommandKind.PROTECT_RELEASE: "protect",
}


class CommandState(enum.StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    DRY_RUN = "dry-run"  # recorded only: dry-run mode never sends

    @property
    def final(self) -> bool:
        return self not in (CommandState.QUEUED, CommandState.SENT)


@dataclass(frozen=True, slots=True)
class CommandRequest:
    """What the policy or an operator asks for; the command store gives it an id and a state."""

    meter: str
    kind: CommandKind
    reason: str
    requested_by: str  # "policy", "power-limit", or the operator's name
    account: str | None = None
    manual: bool = False
    extra: dict[str, str] = field(default_factory=dict)
