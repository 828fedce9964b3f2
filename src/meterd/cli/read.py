"""``meterd read``: a technician's on-demand read of one meter, with an optional raw frame trace."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation

from meterd.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, error, format_value, print_json, reading_dict
from meterd.collector.channel import Channel, Timing, TraceEvent
from meterd.collector.poll import MeterTarget, poll_meter
from meterd.collector.transports import SerialTransport, TcpTransport, Transport
from meterd.errors import ProtocolError
from meterd.protocols.dlt645 import catalogue
from meterd.protocols.dlt645.frame import Frame, normalize_address
from meterd.protocols.dlt645.messages import decode_message, parse_di


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("read", help="read data identifiers from one meter now")
    link = p.add_mutually_exclusive_group(required=True)
    link.add_argument("--serial", metavar="DEVICE", help="serial device, e.g. /dev/ttyUSB0")
    link.add_argument("--tcp", metavar="HOST:PORT", help="serial server or DTU reached over TCP")
    p.add_argument("--baud", type=int, default=2400)
    p.add_argument("--parity", choices=["N", "E", "O"], default="E")
    p.add_argument("--address", required=True, help="meter address (up to 12 digits)")
    p.add_argument("--di", action="append", required=True, help="data identifier, e.g. 00010000 (repeatable)")
    p.add_argument("--ct", default="1", help="CT ratio applied to the values (default 1)")
    p.add_argument("--pt", default="1", help="PT ratio applied to the values (default 1)")
    p.add_argument("--timeout", type=float, default=2.0, help="response timeout in seconds")
    p.add_argument("--retries", type=int, default=1)
    p.add_argument("--trace", action="store_true", help="print every raw frame sent and received, decoded")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def trace_printer(event: TraceEvent) -> None:
    stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
    arrow = {"tx": "TX ->", "rx": "RX <-", "drop": "DROP "}.get(event.direction, event.direction)
    line = f"{stamp} {arrow} {event.data.hex(' ').upper()}"
    if isinstance(event.frame, Frame):
        try:
            line += f"\n{'':17}{decode_message(event.frame)}"
        except ProtocolError as exc:
            line += f"\n{'':17}{event.frame.describe_control()} ({exc})"
    elif event.frame is not None:  # a Modbus PDU
        line += f"\n{'':17}{event.frame}"
    if event.note:
        line += f"\n{'':17}{event.note}"
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    try:
        address = normalize_address(args.address)
        dis = [parse_di(d) for d in args.di]
        for di in dis:
            catalogue.lookup(di)
        ct, pt = Decimal(args.ct), Decimal(args.pt)
    except (ProtocolError, InvalidOperation) as exc:
        error(str(exc) if isinstance(exc, ProtocolError) else f"bad CT/PT ratio: {args.ct!r}/{args.pt!r}")
        return EXIT_BAD_INPUT
    transport: Transport
    if args.serial:
        transport = SerialTransport("cli", args.serial, baud=args.baud, parity=args.parity)
    else:
        host, _, port = args.tcp.rpartition(":")
        if not host or not port.isdigit():
            error(f"--tcp {args.tcp!r}: expected HOST:PORT")
            return EXIT_BAD_INPUT
        transport = TcpTransport("cli", host, int(port), connect_timeout=args.timeout)
    channel = Channel("cli", transport, timing=Timing(args.timeout, min(0.5, args.timeout)), retries=args.retries,
                      trace=trace_printer if args.trace else None)

    async def go():
        try:
            return await poll_meter(channel, MeterTarget(address, ct, pt), dis, datetime.now(timezone.utc))
        finally:
            await channel.close()

    readings, attempts = asyncio.run(go())
    failed = [a for a in attempts if a.outcome != "ok"]
    if args.json:
        print_json({
            "meter": address,
            "readings": [reading_dict(r) for r in readings],
            "attempts": [{"item": a.item, "outcome": a.outcome, "detail": a.detail} for a in attempts],
        })
    else:
        for r in readings:
            print(f"{r.quantity:<40} {format_value(r.value)} {r.unit}".rstrip())
        for a in failed:
            print(f"{a.item}: {a.outcome}: {a.detail}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK
