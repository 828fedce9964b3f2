"""``meterd read``: a technician's on-demand read of one meter, with an optional raw frame trace.

Any protocol: DL/T 645-2007 and -1997 meters by data identifier (``--di``), every protocol by
canonical quantity (``--quantity``), resolved the way the daemon resolves a poll; Modbus meters
by unit id and register map (``--unit``, ``--model``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from meterd.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    MAX_RETRIES,
    MAX_TIMEOUT,
    error,
    name_arg,
    print_json,
    reading_dict,
    seconds,
    shown,
    whole_number,
)
from meterd.cli.frametext import trace_printer, value_json, value_text
from meterd.collector.channel import Channel, Timing
from meterd.collector.modbus import ModbusLink
from meterd.collector.poll import MeterTarget, poll_meter
from meterd.collector.transports import SerialTransport, TcpTransport, Transport
from meterd.errors import ConfigError, LinkError, ProtocolError
from meterd.protocols.drivers import LinkKind, get_driver, protocol_names
from meterd.protocols.modbus import get_map, load_map
from meterd.readings import Reading


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("read", help="read one meter now (DL/T 645-2007, -1997 or Modbus)")
    link = p.add_mutually_exclusive_group(required=True)
    link.add_argument("--serial", metavar="DEVICE", help="serial device, e.g. /dev/ttyUSB0")
    link.add_argument("--tcp", metavar="HOST:PORT", help="serial server or DTU reached over TCP")
    p.add_argument("--baud", type=int, default=2400, help="serial baud rate (default 2400)")
    p.add_argument("--parity", choices=["N", "E", "O"], default="E")
    p.add_argument("--protocol", choices=protocol_names(), default="dlt645-2007")
    p.add_argument("--address", type=name_arg, help="meter address (up to 12 digits; for Modbus the asset number, optional)")
    p.add_argument("--di", action="append", default=[],
                   help="data identifier, e.g. 00010000 (2007) or 9010 (1997) (repeatable)")
    p.add_argument("--quantity", action="append", default=[],
                   help="canonical quantity, e.g. voltage.a (repeatable; any protocol)")
    p.add_argument("--unit", type=whole_number(0, 255), help="Modbus unit id (1..247)")
    p.add_argument("--model", default="generic", help="Modbus register map: shipped name or map file")
    p.add_argument("--framing", choices=["rtu", "tcp"], help="Modbus framing (default: rtu on serial, tcp on TCP)")
    p.add_argument("--ct", type=name_arg, default="1", help="CT ratio applied to the values (default 1)")
    p.add_argument("--pt", type=name_arg, default="1", help="PT ratio applied to the values (default 1)")
    p.add_argument("--timeout", type=seconds(MAX_TIMEOUT), default=2.0, help="response timeout in seconds")
    p.add_argument("--retries", type=whole_number(0, MAX_RETRIES), default=1)
    p.add_argument("--trace", action="store_true",
                   help="print every raw frame sent and received to stderr, decoded, with the site time")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


BAUD_RANGE: Final = (50, 4_000_000)


def _reads(args: argparse.Namespace):
    """(MeterTarget, what to read) from the arguments; ProtocolError / ConfigError name the bad one."""
    ct, pt = Decimal(args.ct), Decimal(args.pt)
    if not args.di and not args.quantity:
        raise ProtocolError("nothing to read: give --di or --quantity")
    driver = get_driver(args.protocol)
    dis = [driver.parse_item(d) for d in args.di]  # Modbus: refused, it is read by quantity
    regmap = None
    unit = None
    if driver.by_unit_and_map:
        if args.unit is None or not 1 <= args.unit <= 247:
            raise ProtocolError(f"--unit: a Modbus meter needs its unit id 1..247, got {args.unit}")
        regmap = load_map(args.model) if args.model.endswith(".toml") else get_map(args.model)
        unit = args.unit
        address = driver.normalize_address(args.address or "0")
    else:
        if not args.address:
            raise ProtocolError(f"--address: a {driver.label} meter needs its address")
        address = driver.normalize_address(args.address)
    reads, missing = driver.plan(args.quantity, dis, regmap)
    if missing or reads is None:
        raise ProtocolError(f"--quantity: {driver.describe_meter(regmap)} has no {driver.missing_noun} for "
                            f"{', '.join(missing)}")
    return MeterTarget(address, ct, pt, driver.name, unit, regmap), reads


def run(args: argparse.Namespace) -> int:
    try:
        meter, reads = _reads(args)
    except (ProtocolError, ConfigError) as exc:
        error(str(exc))
        return EXIT_BAD_INPUT
    except InvalidOperation:
        error(f"bad CT/PT ratio: {shown(args.ct)}/{shown(args.pt)}")
        return EXIT_BAD_INPUT
    address = meter.address
    transport: Transport
    if args.serial:
        if not BAUD_RANGE[0] <= args.baud <= BAUD_RANGE[1]:
            error(f"--baud {args.baud} is not a baud rate ({BAUD_RANGE[0]}..{BAUD_RANGE[1]}, e.g. 2400)")
            return EXIT_BAD_INPUT
        transport = SerialTransport("cli", args.serial, baud=args.baud, parity=args.parity)
    else:
        host, _, port = args.tcp.rpartition(":")
        if not host or not port.isdigit():
            error(f"--tcp {shown(args.tcp)}: expected HOST:PORT")
            return EXIT_BAD_INPUT
        transport = TcpTransport("cli", host, int(port), connect_timeout=args.timeout)
    channel = Channel("cli", transport, timing=Timing(args.timeout, min(0.5, args.timeout)), retries=args.retries,
                      trace=trace_printer() if args.trace else None)
    link = None
    if meter.driver.link is LinkKind.MODBUS:
        link = ModbusLink(channel, args.framing or ("rtu" if args.serial else "tcp"))

    async def go():
        try:
            await transport.open()  # here, so that a port that cannot be used is one line, not a failed read
            return await poll_meter(channel, meter, reads, datetime.now(UTC), link=link)
        finally:
            await channel.close()

    try:
        readings, attempts = asyncio.run(go())
    except LinkError as exc:  # the transport's message names the port or the host and says why
        error(str(exc).removeprefix(f"{exc.channel}: ") if exc.channel else str(exc))
        return EXIT_FAILED
    failed = [a for a in attempts if a.outcome != "ok"]
    if args.json:
        print_json({
            "meter": address,
            "readings": [_reading_json(r) for r in readings],
            "attempts": [{"item": a.item, "outcome": a.outcome, "detail": a.detail} for a in attempts],
        })
    else:
        for r in readings:
            print(f"{r.quantity:<40} {value_text(r.quantity, r.value, r.unit)}".rstrip())
        for a in failed:
            print(f"{a.item}: {a.outcome}: {a.detail}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def _reading_json(r: Reading) -> dict[str, Any]:
    """A reading as ``meterd readings`` gives it, but a date as a date and times in the site's zone."""
    doc = reading_dict(r)
    if isinstance(r.value, datetime):
        doc["value"] = value_json(r.quantity, r.value)
    return doc
