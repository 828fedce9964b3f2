"""Relay commands to the customer behind a special-transformer terminal: its control turn, 保电 and
催费告警 (AFN 05), confirmed by the terminal's control state read back (AFN 0C F5/F6)."""

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
from meterd.protocols.dlt645.messages import RelayCommand
from meterd.protocols.gdw1376.catalogue import (
    ControlSettings,
    ControlState,
    PresentPower,
)
from meterd.protocols.gdw1376.frame import (
    Afn,
)
from meterd.protocols.gdw1376.messages import (
    DataUnit,
    unit,
)

log = logging.getLogger(__name__)

# --- control turns of a special-transformer terminal (AFN 05) ---------------------------------------

TRIPPED_BELOW: Final = Decimal("0.001")  # kW: a tripped turn's load reads (next to) nothing
TURN_COMMANDS: Final = frozenset(RelayCommand)  # AFN 05 F1/F2, F25/F33, F26/F34: every one, whatever the meter


async def send_turn_command(channel: GdwChannel, meter: MeterTarget, command: Any, now: datetime, *,
                            settle: float = 0.0) -> Any:
    """A relay command to the customer behind a special-transformer terminal, through the terminal
    (AFN 05, with PW): its control turn (``turn``) tripped with F1 (remote trip, at once, until
    released) or released with F2 (permit reclose: the customer closes the breaker); 保电 with F25 /
    F33; the payment reminder alarm (催费告警) with F26 / F34.  The terminal's AFN 00 is the
    acknowledgement; every command is then confirmed by the terminal's control state read back
    (AFN 0C F5 / F6 of p0: the turn's trip output -> ``relay.open``, 保电 -> ``relay.protected``,
    催费告警 on -> ``alarm.pre_trip``), and a trip also by the meter's load (AFN 0C F25: total
    active power below :data:`TRIPPED_BELOW`) -- an output that tripped over a breaker that did not
    open is a control anomaly.  A terminal that does not answer F5 / F6 has its trip confirmed by
    the load alone and anything else refused as unconfirmable.  Returns the
    :class:`~meterd.protocols.relay.ControlOutcome`; ControlError (with ``.outcome``) otherwise."""
    from meterd.errors import ControlError
    from meterd.protocols.gdw1376.catalogue import ProtectOn, RemoteTrip
    from meterd.protocols.relay import EXPECTED, ControlOutcome, said

    outcome = ControlOutcome(meter.address, command, now)

    def fail(failure: str, why: str) -> NoReturn:
        outcome.failure, outcome.detail = failure, why
        error = ControlError(f"meter {meter.address}: {command.name}: {why}")
        error.outcome = outcome  # type: ignore[attr-defined]
        raise error

    turn = channel.turn
    units = {RelayCommand.TRIP: [unit(turn, 1, RemoteTrip(0, 0))],
             RelayCommand.RECLOSE: [unit(turn, 2)], RelayCommand.RECLOSE_ALLOWED: [unit(turn, 2)],
             RelayCommand.PROTECT: [unit(0, 25, ProtectOn(0))], RelayCommand.PROTECT_RELEASE: [unit(0, 33)],
             RelayCommand.ALARM: [unit(0, 26)], RelayCommand.ALARM_RELEASE: [unit(0, 34)]}
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
    if settle:
        await asyncio.sleep(settle)
    where = f"terminal {channel.address.key}"
    try:
        state = await read_control_state(channel, meter.address)
    except (TransactionError, ProtocolError) as exc:
        fail("read-back", f"read-back failed: {where}: {exc}")
    if state is not None:
        outcome.read_back = state_flags(*state, turn)
    elif command is not RelayCommand.TRIP:
        fail("read-back", f"{where} does not report its control state (AFN 0C F5/F6), so {command.name} "
                          "cannot be confirmed")
    flag, expected = EXPECTED[command]
    if state is not None and outcome.read_back[flag] != expected:
        fail("anomaly", f"control anomaly: {command.name} acknowledged but {flag} reads "
                        f"{said(outcome.read_back[flag])} ({where}, AFN 0C F5/F6)")
    if command is not RelayCommand.TRIP:
        outcome.confirmed = True
        outcome.detail = f"read back from {where} (AFN 0C F5/F6): {flag} = {said(expected)}; turn {turn}"
        return outcome
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
    open_ = abs(total) < TRIPPED_BELOW
    outcome.read_back["relay.open"] = open_ and outcome.read_back.get("relay.open", True)
    if not open_:
        fail("anomaly", f"control anomaly: TRIP acknowledged but the load reads {total} kW")
    outcome.confirmed = True
    how = "turn output (AFN 0C F6) and " if state is not None else ""
    outcome.detail = f"turn {turn} tripped: {how}load {total} kW read back (AFN 0C F25)"
    return outcome


async def read_control_state(channel: GdwChannel, meter: str = ""
                             ) -> tuple[ControlSettings, ControlState] | None:
    """The terminal's control settings and state (AFN 0C F5, F6 of p0); None when it denies them
    (a terminal without control state)."""
    try:
        reply = await channel.request(Afn.CLASS1_DATA, [DataUnit((0,), (5, 6))], meter=meter, priority=URGENT)
    except TerminalDenied:
        return None
    try:
        settings, state = reply.value(5, 0), reply.value(6, 0)
    except KeyError:
        return None
    if not isinstance(settings, ControlSettings) or not isinstance(state, ControlState):
        return None
    return settings, state


def state_flags(settings: ControlSettings, state: ControlState, turn: int) -> dict[str, bool]:
    """The relay flags meterd confirms commands by, from a terminal's control state."""
    tripped = state.turn_tripped(turn)
    return {"relay.open": tripped, "relay.command_open": tripped, "relay.protected": settings.protected,
            "alarm.pre_trip": settings.reminder}
