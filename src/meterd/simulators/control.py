"""Driving a running simulated fleet from outside: a line protocol on a Unix socket.

A test rig (meterd's own tests, or another master's) changes what the meters do while they run:
the customer presses a meter's button after a reclose permit (合闸允许), a meter or a whole area
loses its supply and gets it back, a wiring error or a sag comes and goes.  ``meterd simulate
--control PATH`` serves :class:`SimControl` on a Unix socket (only this machine's users with access
to the path reach it; the socket is made 0600).  One command per line, words split by spaces; one
JSON object per line back, ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``::

    press ADDR                   the customer presses the button  -> "closed": whether the relay closed
    power-down NAME [NAME ...]   NAME: a meter address or an area's name -> "meters": those affected
    power-up NAME [NAME ...]
    reverse ADDR on|off          reversed wiring
    voltage ADDR SCALE[,B,C]     sag (< 1), swell (> 1), 1 normal; one factor or one per phase
    shares ADDR A,B,C|even       the load's split over the phases (current imbalance)
    drift ADDR SECONDS           the clock gains SECONDS a day (negative: loses; 0 stops drifting)
    status ADDR                  the meter's relay, supply and conditions
    help

For example ``printf 'power-down TA1\\n' | nc -U sim.sock``.  Addresses may be short (``1`` is
``000000000001``).  Every command acts at the fleet's simulated time.  A line longer than
:data:`MAX_LINE` bytes is refused and the connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from meterd.clock import Clock
from meterd.errors import LinkError, MeterdError, ProtocolError
from meterd.protocols.dlt645.frame import normalize_address
from meterd.simulators.area import Area
from meterd.simulators.model import MeterModel

log = logging.getLogger(__name__)

MAX_LINE: Final = 4096
HELP: Final = ("press ADDR | power-down NAME... | power-up NAME... | reverse ADDR on|off | "
               "voltage ADDR SCALE[,B,C] | shares ADDR A,B,C|even | drift ADDR SECONDS | status ADDR")

_COMMANDS: Final = frozenset({"press", "power-down", "power-up", "reverse", "voltage", "shares", "drift", "status",
                              "help"})


class CommandError(MeterdError, ValueError):
    """A command that cannot be carried out; its text goes back to the sender."""


class SimControl:
    """The commands, over the fleet's meter models and areas at the simulated time ``clock()``."""

    def __init__(self, models: Mapping[str, MeterModel], areas: Mapping[str, Area], clock: Clock) -> None:
        self.models = models
        self.areas = areas
        self.clock = clock

    def execute(self, line: str) -> dict[str, Any]:
        """One command line -> the reply object (errors as ``{"ok": false, "error": ...}``)."""
        try:
            return {"ok": True, **self._run(line.split())}
        except CommandError as exc:
            return {"ok": False, "error": str(exc)}

    def _meter(self, text: str) -> MeterModel:
        try:
            address = normalize_address(text)
        except ProtocolError:
            raise CommandError(f"{text!r} is not a meter address") from None
        meter = self.models.get(address)
        if meter is None:
            raise CommandError(f"no meter {address} in this fleet")
        return meter

    def _named(self, names: list[str]) -> list[MeterModel]:
        if not names:
            raise CommandError("name a meter or an area")
        out: list[MeterModel] = []
        for name in names:
            area = self.areas.get(name)
            out.extend(area.meters if area is not None else [self._meter(name)])
        return out

    def _run(self, words: list[str]) -> dict[str, Any]:
        if not words:
            raise CommandError(f"empty command; commands: {HELP}")
        command, args = words[0].lower(), words[1:]
        if command not in _COMMANDS:
            raise CommandError(f"unknown command {command!r}; commands: {HELP}")
        now = self.clock()
        if command == "help":
            return {"commands": HELP}
        if command in ("power-down", "power-up"):
            meters = self._named(args)
            for m in meters:
                (m.power_down if command == "power-down" else m.power_up)(now)
            return {"meters": [m.address for m in meters]}
        if len(args) < 1:
            raise CommandError(f"{command}: name a meter")
        meter = self._meter(args[0])
        rest = args[1:]
        if command == "press":
            _arity(command, rest, 0)
            return {"meter": meter.address, "closed": meter.press_button(now)}
        if command == "status":
            _arity(command, rest, 0)
            return self.status(meter)
        _arity(command, rest, 1)
        value = rest[0]
        try:
            if command == "reverse":
                if value.lower() not in ("on", "off"):
                    raise CommandError("reverse: on or off")
                meter.set_reversed(value.lower() == "on", now)
            elif command == "voltage":
                scales = _numbers(value)
                meter.set_voltage(scales[0] if len(scales) == 1 else scales, now)
            elif command == "shares":
                meter.set_phase_shares(None if value.lower() == "even" else _numbers(value), now)
            else:  # drift
                seconds = _numbers(value)
                if len(seconds) != 1:
                    raise CommandError("drift: one number of seconds a day")
                meter.set_clock_drift(seconds[0], now)
        except ValueError as exc:  # the model's own refusal names the meter and the limit
            raise CommandError(str(exc)) from None
        return self.status(meter)

    def status(self, meter: MeterModel) -> dict[str, Any]:
        now = self.clock()
        return {
            "meter": meter.address,
            "clock": meter.meter_clock(now).replace(microsecond=0).isoformat(),
            "powered": meter.powered,
            "power_downs": meter.power_downs,
            "relay_open": meter.relay_open,
            "command_open": meter.command_open,
            "reclose_permitted": meter.reclose_permitted,
            "reversed": meter.reversed,
            "voltage_scale": list(meter._v_scale),
            "phase_shares": [round(w, 4) for w in meter._weights],
            "clock_drift": meter.clock_drift,
        }


def _arity(command: str, rest: list[str], n: int) -> None:
    if len(rest) != n:
        raise CommandError(f"{command}: expected {n} argument(s) after the meter, got {len(rest)}")


def _numbers(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise CommandError(f"{text!r} is not a number or a list of numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise CommandError(f"{text!r} is not a finite number")
    return values


def _clear_stale(path: str) -> None:
    """Remove a socket left by a simulator that is gone; refuse anything else at ``path``."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise LinkError(f"control socket {path}: exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: stale
            return
    raise LinkError(f"control socket {path}: another simulator is listening there")


async def serve_control(control: SimControl, path: str) -> Callable[[], Awaitable[None]]:
    """Serve ``control`` on a Unix socket at ``path``; returns the function that stops it and
    removes the socket."""
    _clear_stale(path)
    connections: set[asyncio.Task[Any]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            connections.add(task)
        try:
            while True:
                try:
                    raw = await reader.readline()
                except ValueError:  # past the limit
                    writer.write(json.dumps({"ok": False, "error": f"line longer than {MAX_LINE} bytes"}).encode()
                                 + b"\n")
                    break
                if not raw:
                    break
                line = raw.decode("utf-8", "replace").strip()
                if not line:
                    continue
                try:
                    reply = control.execute(line)
                except Exception as exc:  # a simulator bug answers; it never takes the socket down
                    log.exception("control command %r failed", line)
                    reply = {"ok": False, "error": f"internal error: {exc}"}
                writer.write(json.dumps(reply, ensure_ascii=False).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                connections.discard(task)

    try:
        server = await asyncio.start_unix_server(serve, path, limit=MAX_LINE)
        os.chmod(path, 0o600)  # owner only (not umask: it is the whole process's, threads included)
    except OSError as exc:
        raise LinkError(f"control socket {path}: {exc}") from exc

    async def close() -> None:
        server.close()
        for t in list(connections):
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2.0)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    return close
