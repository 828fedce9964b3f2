"""``meterd simulate``: simulated DL/T 645 and Modbus meters on pseudo-terminals and TCP ports, on their own.

Starts a fleet (:mod:`meterd.simulators.fleet`), prints where it listens -- one JSON document on
one line with ``--json``, a table otherwise -- flushes stdout, and serves until SIGINT/SIGTERM or
``--duration`` seconds.  Link statistics go to stderr at the end, so stdout stays one document.

DL/T 645 buses (``--pty``, ``--tcp-buses``) carry DL/T 645-2007 meters, or DL/T 645-1997 ones for
the addresses given with ``--v1997``; Modbus buses (``--modbus-pty``: RTU at ``--modbus-baud``
8N1; ``--modbus-tcp``: Modbus TCP, or RTU over TCP with ``--modbus-framing rtu``) serve their
meters through the register map ``--modbus-model`` under unit ids 1..M.

The JSON document::

    {"start": "2025-01-01T00:00:00", "speed": 60.0, "seed": 0, "password": "02123456",
     "buses": [{"name": "pty1", "kind": "pty", "endpoint": "/dev/pts/4", "meters": ["000000000001", ...],
                "protocol": "dlt645", "framing": null,
                "protocols": {"000000000001": "dlt645-2007", "000000000002": "dlt645-1997", ...},
                "baud": 2400, "bytesize": 8, "parity": "E", "stopbits": 1, "wire_time": true,
                "turnaround_ms": 20.0},
               {"name": "tcp1", "kind": "tcp", "endpoint": "127.0.0.1:40321", "host": "127.0.0.1",
                "port": 40321, "meters": [...], "protocol": "dlt645", ..., "turnaround_ms": 0.0},
               {"name": "mbpty1", "kind": "pty", "endpoint": "/dev/pts/5", "meters": ["000000000007", ...],
                "protocol": "modbus", "framing": "rtu", "protocols": {"000000000007": "modbus", ...},
                "model": "generic", "units": {"000000000007": 1, ...}, "baud": 9600, "parity": "N", ...},
               {"name": "mbtcp1", "kind": "tcp", ..., "protocol": "modbus", "framing": "tcp", ...}],
     "faults": {"000000000002": {"garble": 0.3}, "000000000008": {"exception": 1.0, "exception_code": 4}},
     "stuck_relays": []}

Exit codes: 0 after a clean stop, 2 for bad arguments, 1 when a bus cannot be started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from datetime import datetime
from typing import Any

from meterd.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from meterd.errors import ConfigError, LinkError, ProtocolError
from meterd.protocols.dlt645.frame import normalize_address
from meterd.protocols.modbus import builtin_maps, get_map
from meterd.simulators.fleet import (
    ALL_FAULT_KINDS,
    MODBUS_ALL_FAULT_KINDS,
    Fleet,
    FleetSpec,
    parse_fault,
    run_fleet,
)
from meterd.simulators.modbus import FRAMINGS


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "simulate",
        help="serve simulated DL/T 645 and Modbus meters on ptys and TCP ports",
        description="Serve simulated DL/T 645-2007 / -1997 and Modbus meters on pseudo-terminals (real "
        "serial devices to pyserial) and TCP ports (like serial servers / DTUs / Modbus TCP gateways) "
        "until interrupted.",
    )
    p.add_argument("--pty", type=int, default=1, metavar="N", help="DL/T 645 pty buses (default 1)")
    p.add_argument("--tcp-buses", type=int, default=0, metavar="N", help="DL/T 645 TCP buses (default 0)")
    p.add_argument("--modbus-pty", type=int, default=0, metavar="N", help="Modbus RTU pty buses (default 0)")
    p.add_argument("--modbus-tcp", type=int, default=0, metavar="N",
                   help="Modbus TCP buses, after the DL/T 645 TCP ports (default 0)")
    p.add_argument("--modbus-model", default="generic", metavar="NAME",
                   help=f"register map of the Modbus meters: {', '.join(builtin_maps())} (default generic)")
    p.add_argument("--modbus-framing", default="tcp", metavar="tcp|rtu",
                   help="framing on Modbus TCP buses: tcp (MBAP) or rtu (RTU over TCP) (default tcp)")
    p.add_argument("--modbus-baud", type=int, default=9600, help="Modbus pty line speed, 8N1 (default 9600)")
    p.add_argument("--v1997", action="append", default=[], metavar="ADDR[,ADDR...]",
                   help="DL/T 645 meters that speak DL/T 645-1997 (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="TCP listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, metavar="P",
                   help="first TCP port, bus i on P+i (default 0: free ports)")
    p.add_argument("--meters-per-bus", type=int, default=3, metavar="M", help="meters on each bus (default 3)")
    p.add_argument("--first-address", default="000000000001", metavar="A",
                   help="address of the first meter; the rest follow (default 000000000001)")
    p.add_argument("--baud", type=int, default=2400, help="DL/T 645 pty line speed, 8E1 (default 2400)")
    p.add_argument("--no-wire-time", action="store_true", help="answer on ptys at once instead of at wire speed")
    p.add_argument("--turnaround", type=float, default=None, metavar="MS",
                   help="meter turnaround in ms (default 20 on ptys, 0 on TCP)")
    p.add_argument("--speed", type=float, default=1.0, metavar="X",
                   help="simulated seconds per real second (default 1; 60 = a minute per second)")
    p.add_argument("--start", default=None, metavar="ISO",
                   help="simulated start time, e.g. 2025-01-31T23:50 (default: now)")
    p.add_argument("--fault", action="append", default=[], metavar="ADDR:KIND[:PROB]",
                   help=f"inject a fault; KIND is one of {', '.join(ALL_FAULT_KINDS)} on DL/T 645 meters, "
                   f"{', '.join(MODBUS_ALL_FAULT_KINDS)} on Modbus meters (late:PROB:SECONDS, "
                   "exception:PROB:CODE) (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of loads and faults (default 0)")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="stop after this long")
    p.add_argument("--json", action="store_true", help="print the endpoints as one JSON document")
    p.set_defaults(func=run)
    return p


def spec_from_args(args: argparse.Namespace) -> FleetSpec:
    """Arguments -> FleetSpec; ConfigError lists every problem."""
    problems: list[str] = []
    faults: dict[str, str] = {}
    for text in args.fault:
        try:
            address, kinds = parse_fault(text)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        faults[address] = f"{faults[address]},{kinds}" if address in faults else kinds
    start = None
    if args.start:
        try:
            start = datetime.fromisoformat(args.start)
        except ValueError:
            problems.append(f"--start {args.start!r} is not an ISO date/time")
        else:
            if start.tzinfo is not None:
                problems.append("--start must be a local time without a zone (meters keep local time)")
    if args.duration is not None and args.duration < 0:
        problems.append(f"--duration {args.duration} must be >= 0")
    framing = args.modbus_framing.strip().lower()
    if framing not in FRAMINGS:
        problems.append(f"--modbus-framing {args.modbus_framing!r}: expected tcp (MBAP) or rtu (RTU over TCP)")
        framing = "tcp"
    model = args.modbus_model
    try:
        get_map(model)
    except ConfigError as exc:
        problems.extend(f"--modbus-model: {p}" for p in exc.problems)
        model = "generic"
    if args.modbus_baud <= 0:
        problems.append(f"--modbus-baud {args.modbus_baud} must be > 0")
    v1997: list[str] = []
    for text in args.v1997:
        for part in filter(None, (t.strip() for t in text.split(","))):
            try:
                v1997.append(normalize_address(part))
            except ProtocolError as exc:
                problems.append(f"--v1997 {part!r}: {exc}")
        if not text.strip(" ,"):
            problems.append(f"--v1997 {text!r}: expected ADDR[,ADDR...]")
    try:
        spec = FleetSpec(
            pty_buses=args.pty,
            tcp_buses=args.tcp_buses,
            modbus_pty_buses=args.modbus_pty,
            modbus_tcp_buses=args.modbus_tcp,
            modbus_model=model,
            modbus_tcp_framing=framing,
            modbus_baud=args.modbus_baud if args.modbus_baud > 0 else 9600,
            v1997=tuple(dict.fromkeys(v1997)),
            meters_per_bus=args.meters_per_bus,
            first_address=args.first_address,
            faults=faults,
            speed=args.speed,
            wire_time=not args.no_wire_time,
            baud=args.baud,
            turnaround=None if args.turnaround is None else args.turnaround / 1000.0,
            host=args.host,
            port=args.port,
            seed=args.seed,
            start=start,
        )
    except ConfigError as exc:
        raise ConfigError(problems + exc.problems) from None
    if problems:
        raise ConfigError(problems)
    return spec


def _protocol_cell(b: dict[str, Any]) -> str:
    if b.get("protocol") == "modbus":
        return f"modbus-{b['framing']} {b['model']}"
    return "dlt645"


def format_table(doc: dict[str, Any]) -> str:
    lines = [f"meterd simulate: {sum(len(b['meters']) for b in doc['buses'])} meters on {len(doc['buses'])} "
             f"buses; simulated clock from {doc['start']} at x{doc['speed']:g}; password {doc['password']}"]
    rows = [("BUS", "ENDPOINT", "LINE", "PROTOCOL", "METERS")]
    for b in doc["buses"]:
        if b["kind"] == "pty":
            line = f"{b['baud']} {b['bytesize']}{b['parity']}{b['stopbits']:g}" + (" wire" if b["wire_time"] else "")
        else:
            line = "tcp"
        rows.append((b["name"], b["endpoint"], line, _protocol_cell(b), " ".join(b["meters"])))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines += ["  ".join(f"{c:<{w}}" for c, w in zip(r, widths)) + f"  {r[4]}" for r in rows]
    for b in doc["buses"]:
        if b.get("units"):
            lines.append(f"{b['name']}: unit ids " + " ".join(f"{u}={a}" for a, u in b["units"].items()))
    old = [a for b in doc["buses"] for a, p in b.get("protocols", {}).items() if p == "dlt645-1997"]
    if old:
        lines.append("dlt645-1997: " + " ".join(old))
    for address, faults in doc["faults"].items():
        lines.append(f"fault: {address} " + ", ".join(f"{k}={v:g}" for k, v in faults.items()))
    for address in doc["stuck_relays"]:
        lines.append(f"fault: {address} stuck_relay")
    lines.append("Ctrl-C stops.")
    return "\n".join(lines)


async def serve(spec: FleetSpec, *, as_json: bool, duration: float | None) -> Fleet:
    fleet = await run_fleet(spec)
    try:
        doc = fleet.as_dict()
        print(json.dumps(doc) if as_json else format_table(doc), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            if duration is None:
                await stop.wait()
            else:
                try:
                    await asyncio.wait_for(stop.wait(), duration)
                except asyncio.TimeoutError:
                    pass
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    finally:
        await fleet.close()
    return fleet


def run(args: argparse.Namespace) -> int:
    try:
        spec = spec_from_args(args)
    except ConfigError as exc:
        print(f"meterd simulate: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        fleet = asyncio.run(serve(spec, as_json=args.json, duration=args.duration))
    except LinkError as exc:
        print(f"meterd simulate: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for name, b in zip(fleet.bus_names, fleet.buses):
        s = b.running.stats
        faults = ", ".join(f"{k} {v}" for k, v in sorted(s.faults.items())) or "none"
        print(f"{name} {b.endpoint}: {s.requests} requests, {s.replies} replies, faults injected: {faults}",
              file=sys.stderr)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meterd")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["simulate", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
