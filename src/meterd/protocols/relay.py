"""Relay control values shared by the side that sends commands (the collector) and the side that
decides them (prepaid control): the meter's credentials, what each command's read-back must show,
and the outcome of one command.  Plain values, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from meterd.protocols.dlt645.messages import RelayCommand

# What the read-back must show after each command: (flag, expected value).
EXPECTED: Final = {
    RelayCommand.TRIP: ("relay.open", True),
    RelayCommand.RECLOSE: ("relay.open", False),
    RelayCommand.RECLOSE_ALLOWED: ("relay.command_open", False),
    RelayCommand.ALARM: ("alarm.pre_trip", True),
    RelayCommand.ALARM_RELEASE: ("alarm.pre_trip", False),
    RelayCommand.PROTECT: ("relay.protected", True),
    RelayCommand.PROTECT_RELEASE: ("relay.protected", False),
}


def said(value: object) -> str:
    """A read-back flag's value in the details people read: yes, no, nothing (not reported)."""
    return "yes" if value is True else "no" if value is False else "nothing" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class Credentials:
    """DL/T 645 password (level + 3 bytes, 8 hex digits) and operator code (8 hex digits)."""

    password: str
    operator: str

    def __repr__(self) -> str:  # never print a meter password
        return f"Credentials(password=***, operator={self.operator})"


@dataclass(slots=True)
class ControlOutcome:
    meter: str
    command: RelayCommand
    sent_at: datetime
    acknowledged: bool = False
    confirmed: bool = False
    read_back: dict[str, bool] = field(default_factory=dict)
    detail: str = ""
    failure: str = ""  # "" | "unsupported" | "unreachable" | "refused" | "read-back" | "anomaly"

    @property
    def retryable(self) -> bool:
        """The meter could not be reached (or its state not read): worth trying again later."""
        return self.failure in ("unreachable", "read-back")
