"""Relay control, one path for every protocol: send the command, then read the relay back.

:func:`send_relay_command` is what the command queue (prepaid control) and operators' manual
commands call.  It never trusts an acknowledgement: a meter can accept a trip and leave its relay
closed (a welded contact, a stuck latch), so every command is followed by a read of the meter's
own state and the result says what that read showed.

=================  =====================================  ==========================================
protocol           command                                read back
=================  =====================================  ==========================================
DL/T 645-2007      1C with password, operator code and    status word 3 (04000503): ``relay.open``,
                   validity time (2013 amendment)         ``alarm.pre_trip``, ``relay.protected``
DL/T 645-1997      -- the 1997 edition has no relay       --
                   command: refused with ControlError
Modbus             the map's ``[relay]`` coil/register    the map's ``relay.open`` entry
                   write (FC05 / FC06 / FC16)
=================  =====================================  ==========================================

Outcomes: the meter refused (abnormal reply / exception response), the link failed, or the state
read back does not match the command -- each a :class:`~meterd.errors.ControlError` carrying a
:class:`ControlOutcome` with the evidence.  Only a read-back that matches is ``confirmed``.
``RECLOSE_ALLOWED`` (the customer closes the relay with the meter's button) is confirmed by the
command-open flag going off where the meter reports it, else by the acknowledgement alone; a relay
still open then is the meter waiting for the customer, which the detail says (not a failure);
alarm and protect commands are confirmed by their flags.  Time (the validity window) is passed in.
Commands and their read-back go ahead of routine reads waiting for the bus (:data:`URGENT`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final

from meterd.clock import CST
from meterd.collector.channel import URGENT, Channel, TransactionError
from meterd.collector.modbus import ModbusLink, ModbusRefused
from meterd.collector.poll import MeterTarget, ReadFailed, read_item
from meterd.errors import ControlError, ProtocolError
from meterd.protocols.dlt645.messages import RelayCommand
from meterd.protocols.drivers import LinkKind
from meterd.protocols.drivers.base import FrameDriver
from meterd.protocols.modbus import compile_plan, decode_block, relay_command
from meterd.protocols.relay import EXPECTED, ControlOutcome, Credentials, said

DEFAULT_VALIDITY: Final = timedelta(minutes=10)

async def send_relay_command(
    channel: Channel,
    meter: MeterTarget,
    command: RelayCommand,
    now: datetime,
    *,
    credentials: Credentials | None = None,
    valid_for: timedelta = DEFAULT_VALIDITY,
    link: ModbusLink | None = None,
    settle: float = 0.0,
) -> ControlOutcome:
    """Send ``command`` to ``meter`` and confirm it by reading the state back.

    Returns the confirmed outcome; raises ControlError (with ``.outcome``) otherwise.  ``settle``
    is the pause before the read-back (a motorised breaker takes a moment).
    """
    from meterd.collector.gdw1376 import GdwChannel, send_turn_command

    if isinstance(channel, GdwChannel) and channel.special:  # the terminal's control turn (AFN 05)
        return await send_turn_command(channel, meter, command, now, settle=settle)
    outcome = ControlOutcome(meter.address, command, now)
    why = meter.driver.relay_refusal(command, meter.regmap)
    if why is not None:  # the protocol (or the meter's map) has no such command: nothing is sent
        outcome.failure = "unsupported"
        _fail(outcome, why)
    try:
        if meter.driver.link is LinkKind.MODBUS:
            await _modbus_command(link, meter, command, outcome)
        else:
            await _dlt645_command(channel, meter, command, now, credentials, valid_for, outcome)
        outcome.acknowledged = True
        if settle:
            await asyncio.sleep(settle)
        outcome.read_back = await read_relay_state(channel, meter, link=link)
    except TransactionError as exc:
        outcome.failure = "read-back" if outcome.acknowledged else "unreachable"
        _fail(outcome, f"{'no acknowledgement' if not outcome.acknowledged else 'read-back failed'}: {exc}")
    except ModbusRefused as exc:
        outcome.failure = "refused"
        _fail(outcome, f"refused: {exc.error}")
    except (ReadFailed, ProtocolError) as exc:
        outcome.failure = "read-back" if outcome.acknowledged else "refused"
        _fail(outcome, f"read-back failed: {exc}")
    flag, expected = EXPECTED[command]
    if flag not in outcome.read_back:
        if command is RelayCommand.RECLOSE_ALLOWED:
            outcome.confirmed = True
            outcome.detail = "acknowledged; the meter does not report the command flag"
            return outcome
        outcome.failure = "unsupported"
        _fail(outcome, f"the meter does not report {flag}, so {command.name} cannot be confirmed")
    if outcome.read_back[flag] != expected:
        outcome.failure = "anomaly"
        _fail(outcome, f"control anomaly: {command.name} acknowledged but {flag} reads "
                       f"{said(outcome.read_back[flag])}")
    outcome.confirmed = True
    outcome.detail = f"read back: {flag} = {said(expected)}"
    if command is RelayCommand.RECLOSE_ALLOWED and outcome.read_back.get("relay.open"):
        outcome.detail += ("; reclose permitted (合闸允许), relay still open: waiting for the customer to press the "
                           "button on the meter")
    return outcome


async def read_relay_state(channel: Channel, meter: MeterTarget, *, link: ModbusLink | None = None) -> dict[str, bool]:
    """The relay flags the meter reports now (DL/T 645-2007 status word 3, or the Modbus map)."""
    if meter.driver.link is LinkKind.MODBUS:
        if link is None or meter.regmap is None or meter.unit is None:
            raise ControlError(f"meter {meter.address}: a Modbus meter needs its link, unit and register map")
        wanted = [q for q in ("relay.open", "relay.command_open", "alarm.pre_trip", "relay.protected")
                  if q in meter.regmap]
        if not wanted:
            raise ControlError(f"meter {meter.address}: register map {meter.regmap.name} has no relay state")
        flags: dict[str, bool] = {}
        for block in compile_plan(meter.regmap, wanted):
            data = await link.read_block(meter.address, meter.unit, block, priority=URGENT)
            flags.update({v.quantity: bool(v.value) for v in decode_block(block, data)})
        return flags
    driver = meter.driver
    assert isinstance(driver, FrameDriver)
    di = driver.relay_state_item()
    if di is None:
        raise ControlError(f"meter {meter.address}: {driver.label} reports no relay state")
    payload = await read_item(channel, meter.address, di, priority=URGENT, driver=driver)
    return {v.quantity: bool(v.value) for v in driver.decode(di, payload, None)
            if isinstance(v.value, bool)}


async def _dlt645_command(
    channel: Channel,
    meter: MeterTarget,
    command: RelayCommand,
    now: datetime,
    credentials: Credentials | None,
    valid_for: timedelta,
    outcome: ControlOutcome,
) -> None:
    if credentials is None:
        _fail(outcome, "a DL/T 645 relay command needs the meter password and an operator code")
    assert credentials is not None
    driver = meter.driver
    assert isinstance(driver, FrameDriver)
    valid_until = (now + valid_for).astimezone(CST).replace(tzinfo=None, microsecond=0)
    request = driver.relay_request(meter.address, command, credentials.password, credentials.operator, valid_until)
    reply = await channel.transact(request, priority=URGENT)
    assert reply is not None
    why = driver.relay_reply(reply)
    if why is not None:
        _fail(outcome, why)


async def _modbus_command(
    link: ModbusLink | None, meter: MeterTarget, command: RelayCommand, outcome: ControlOutcome
) -> None:
    if link is None or meter.regmap is None or meter.unit is None:
        _fail(outcome, "a Modbus meter needs its link, unit and register map")
    assert link is not None and meter.regmap is not None and meter.unit is not None
    await link.write(meter.address, meter.unit, relay_command(meter.regmap, command is RelayCommand.TRIP), priority=URGENT)


def _fail(outcome: ControlOutcome, why: str) -> None:
    outcome.detail = why
    outcome.failure = outcome.failure or ("refused" if why.startswith("refused") else "unsupported")
    error = ControlError(f"meter {outcome.meter}: {outcome.command.name}: {why}")
    error.outcome = outcome  # type: ignore[attr-defined]
    raise error


@dataclass(frozen=True, slots=True)
class MeterRelay:
    """One meter's relay as prepaid control reaches it (:class:`meterd.control.commands.RelayLink`):
    its bus, target, Modbus link and credentials; commands go out as urgent transactions."""

    channel: Channel
    target: MeterTarget
    link: ModbusLink | None = None
    credentials: Credentials | None = None

    @property
    def bus(self) -> str:
        return self.channel.name

    def commands(self) -> frozenset[RelayCommand]:
        from meterd.collector.gdw1376 import GdwChannel
        from meterd.collector.gdw1376.turns import TURN_COMMANDS

        if isinstance(self.channel, GdwChannel) and self.channel.special:
            return TURN_COMMANDS  # the terminal's control turn, whatever the meter behind it speaks
        return frozenset(self.target.driver.relay_commands(self.target.regmap))

    def with_credentials(self, credentials: Credentials | None) -> MeterRelay:
        return replace(self, credentials=credentials)

    async def read_state(self) -> dict[str, bool]:
        return await read_relay_state(self.channel, self.target, link=self.link)

    async def send(self, command: RelayCommand, now: datetime, *, valid_for: timedelta,
                   settle: float) -> ControlOutcome:
        return await send_relay_command(self.channel, self.target, command, now, credentials=self.credentials,
                                        valid_for=valid_for, link=self.link, settle=settle)
