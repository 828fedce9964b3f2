"""Relay commands to the customer behind a special-transformer terminal: its control turn (AFN 05)."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, NoReturn

from meterd.collector.channel import (
    URGENT,
    TransactionError,
)
from meterd.collector.gdw1376.channel import GdwChannel, TerminalDenied
from meterd.collector.poll import MeterTarget
from meterd.errors import ProtocolError
from meterd.protocols.gdw1376.catalogue import (
    PresentPower,
)
from meterd.protocols.gdw1376.frame import (
    Afn,
)
from meterd.protocols.gdw1376.messages import (
    unit,
)

log = logging.getLogger(__name__)

# --- control turns of a special-transformer terminal (AFN 05) ---------------------------------------

TRIPPED_BELOW: Final = Decimal("0.001")  # kW: a tripped turn's load reads (next to) nothing


async def send_turn_command(channel: GdwChannel, meter: MeterTarget, command: Any, now: datetime, *,
                            settle: float = 0.0) -> Any:
    """A relay command to the customer behind a special-transformer terminal: its control turn
    (``turn``) tripped with AFN 05 F1 (remote trip, at once, until released) or released with F2
    (permit reclose: the customer closes the breaker), 保电 with F25 / F33.  The terminal's AFN 00
    is the acknowledgement; a trip is confirmed by the meter's load read back (AFN 0C F25: total
    active power below :data:`TRIPPED_BELOW`), the others by the acknowledgement.  Returns the
    :class:`~meterd.protocols.relay.ControlOutcome`; ControlError (with ``.outcome``) otherwise."""
    from meterd.errors import ControlError
    from meterd.protocols.dlt645.messages import RelayCommand
    from meterd.protocols.gdw1376.catalogue import ProtectOn, RemoteTrip
    from meterd.protocols.relay import ControlOutcome

    outcome = ControlOutcome(meter.address, command, now)

    def fail(failure: str, why: str) -> NoReturn:
        outcome.failure, outcome.detail = failure, why
        error = ControlError(f"meter {meter.address}: {command.name}: {why}")
        error.outcome = outcome  # type: ignore[attr-defined]
        raise error

    turn = channel.turn
    units = {RelayCommand.TRIP: [unit(turn, 1, RemoteTrip(0, 0))],
             RelayCommand.RECLOSE: [unit(turn, 2)], RelayCommand.RECLOSE_ALLOWED: [unit(turn, 2)],
             RelayCommand.PROTECT: [unit(0, 25, ProtectOn(0))], RelayCommand.PROTECT_RELEASE: [unit(0, 33)]}
    if command not in units:
        fail("unsupported", f"a special-transformer terminal has no {command.name} (AFN 05 trips and releases "
                            "its control turns)")
    if channel.password is None:
        fail("unsupported", f"AFN 05 through terminal {channel.address.key} needs its password: set "
                            f"channels.{channel.name}.gdw1376.password_secret (the secret's name)")
    try:
        await channel.request(Afn.CONTROL, units[command], meter=meter.address, priority=URGENT,
                              pw=channel.pw("AFN 05"))
    except TerminalDenied as exc:
        fail("refused", f"refused: {exc}: wrong password (PW)?")
    except TransactionError as exc:
        fail("unreachable", f"no acknowledgement: {exc}")
    outcome.acknowledged = True
    if command is not RelayCommand.TRIP:
        outcome.confirmed = True
        outcome.detail = f"acknowledged by terminal {channel.address.key} (AFN 00); turn {turn}"
        return outcome
    if settle:
        await asyncio.sleep(settle)
    pn = channel.pns.get(meter.address)
    if pn is None:
        fail("read-back", f"meter {meter.address} has no pn on channel {channel.name}")
    try:
        reply = await channel.request(Afn.CLASS1_DATA, [unit(pn, 25)], meter=meter.address, priority=URGENT)
        power = reply.value(25, pn)
    except (TransactionError, ProtocolError, KeyError) as exc:
        fail("read-back", f"read-back failed: {exc}")
    total = power.active[0] if isinstance(power, PresentPower) else None
    if total is None:
        fail("read-back", "read-back failed: the terminal has no active power of the meter")
    assert total is not None
    outcome.read_back = {"relay.open": abs(total) < TRIPPED_BELOW}
    if not outcome.read_back["relay.open"]:
        fail("anomaly", f"control anomaly: TRIP acknowledged but the load reads {total} kW")
    outcome.confirmed = True
    outcome.detail = f"turn {turn} tripped: load {total} kW read back (AFN 0C F25)"
    return outcome
