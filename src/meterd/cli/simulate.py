"""``meterd simulate``: simulated DL/T 645 and Modbus meters on pseudo-terminals and TCP ports, on their own,
and whole fleets of terminals -- GPRS DTUs and MQTT terminals with meters behind them.

Starts a fleet (:mod:`meterd.simulators.fleet`), prints where it listens -- one JSON document on
one line with ``--json``, a table otherwise -- flushes stdout, and serves until SIGINT/SIGTERM or
``--duration`` seconds.  Link statistics go to stderr at the end, so stdout stays one document.

DL/T 645 buses (``--pty``, ``--tcp-buses``) carry DL/T 645-2007 meters, or DL/T 645-1997 ones for
the addresses given with ``--v1997``; Modbus buses (``--modbus-pty``: RTU at ``--modbus-baud``
8N1; ``--modbus-tcp``: Modbus TCP, or RTU over TCP with ``--modbus-framing rtu``) serve their
meters through the register map ``--modbus-model`` under unit ids 1..M.

Terminals (:mod:`meterd.simulators.dtu`, :mod:`meterd.simulators.mqtt_terminal`; started, sharded over
processes and stopped by :mod:`meterd.simulators.shard`, this module being the arguments):

* ``--dtus N``: GPRS/4G DTUs ``DTU00000001``... that dial *in* to the master's DTU listener at
  ``--dtu-connect HOST:PORT`` (default 127.0.0.1:9000), register in ``--dtu-format``
  (``usr-ascii``, ``usr-mac`` or ``hex-frame``) and heart-beat every ``--dtu-heartbeat`` seconds; behind each,
  ``--meters-per-terminal`` meters speaking ``--dtu-protocol`` (``dlt645``: DL/T 645-2007, or
  ``modbus``: RTU, unit ids 1..M, register map ``--modbus-model``).  Meter addresses run on from
  ``--first-address`` (after the bus meters, if buses run too).  A DTU that cannot reach the
  master dials again every ``--dtu-reconnect`` seconds, also after losing its connection, so the
  simulator may be started before the daemon.
* ``--mqtt-terminals N``: terminals ``T001``... on the broker ``--mqtt HOST:PORT`` (default
  127.0.0.1:1883; it must be running), meters speaking ``--mqtt-protocol`` (``dlt645-2007``,
  ``dlt645-1997`` or ``modbus``); meter ``m`` of terminal ``t`` has the address
  ``f"{t:06d}{m:06d}"`` (Modbus: unit id ``m``).  paho's select() loop cannot use descriptors
  past 1023, so terminals beyond the first 250 run in forked helper processes (250 each).
* ``--concentrators N``: Q/GDW 1376.1 concentrators ``4401-0001``... (``--concentrator-region``,
  then A2 from 1 in hex; :mod:`meterd.simulators.concentrator`) that dial in to the master's
  gdw1376 listener at ``--concentrator-connect HOST:PORT`` (default 127.0.0.1:9001), log in (AFN 02
  F1), heart-beat every ``--concentrator-heartbeat`` seconds, collect their
  ``--meters-per-concentrator`` DL/T 645-2007 meters (pn 1..M) every ``--concentrator-collect``
  simulated seconds and answer AFN 0C/0D/0E/04/0A/05/10; ``--concentrator-kind special`` makes them
  special-transformer terminals with control turns; ``--concentrator-password`` is their PW (32 hex
  digits, default zeros).  Their meter addresses follow the DTU meters'.
* ``--fleet-config FILE``: the same from a TOML file; flags given on the command line win::

      [dtus]
      count = 500
      meters = 10
      format = "usr-ascii"   # or "usr-mac", "hex-frame"
      protocol = "dlt645"    # or "modbus"
      host = "127.0.0.1"     # where the master's DTU listener is
      port = 9000

      [mqtt]
      count = 500
      meters = 10
      protocol = "dlt645-2007"   # or "dlt645-1997", "modbus"
      host = "127.0.0.1"         # the broker
      port = 1883

      [concentrators]
      count = 500
      meters = 32
      host = "127.0.0.1"         # where the master's gdw1376 listener is
      port = 9001
      kind = "concentrator"      # or "special"

* ``--write-config PATH`` writes a complete meterd site config for everything started (the store
  in ``--data-dir``; a channel per bus -- ``serial`` on the pty's device path with the bus's line
  settings, ``tcp`` on its host and port, Modbus TCP buses with their framing -- and per terminal,
  with ``[listeners.gprs]`` on the DTU port, ``[listeners.gdw1376]`` (``protocol = "gdw1376"``) on
  the concentrator port and ``[mqtt]`` for terminals; a ``gdw1376 = { listener, terminal, kind,
  password_secret }`` channel per concentrator; every meter with its protocol, unit id and register
  map, or its ``pn``; one poll of ``--poll-quantities`` every ``--poll-interval`` seconds).  A
  concentrator password other than zeros goes to a secrets file beside the config (``PATH`` with
  the suffix ``.secrets``, mode 600, ``METERD_GDW1376_PASSWORD=...``) that the config names with
  ``secrets_file``: the config itself holds no secret.  It is checked with the config loader before anything starts (with stand-in
  endpoints) and written, with the real pty paths and ports, once the buses listen and before the
  document is printed: ``meterd run -c PATH`` then collects from every simulated meter (and the
  link settings it holds are what ``meterd read`` needs to reach any one of them).

Terminals have no injected faults and no wire delay (``--turnaround`` adds a DTU reply delay).

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
     "stuck_relays": [],
     # with --dtus / --mqtt-terminals only:
     "dtus": {"connect": "127.0.0.1:9000", "host": "127.0.0.1", "port": 9000, "format": "usr-ascii",
              "protocol": "dlt645", "heartbeat": 30.0,
              "terminals": {"DTU00000001": ["000000000001", "000000000002"], ...},
              "units": {}},                          # Modbus: address -> unit id
     "mqtt": {"broker": "127.0.0.1:1883", "host": "127.0.0.1", "port": 1883, "root": "meterd",
              "protocol": "dlt645-2007", "terminals": {"T001": ["000001000001", ...], ...}, "units": {}},
     "concentrators": {"connect": "127.0.0.1:9001", "host": "127.0.0.1", "port": 9001, "protocol": "gdw1376",
                       "kind": "concentrator", "region": "4401", "heartbeat": 60.0, "collect_interval": 900.0,
                       "password": "000...0", "meter_protocol": "dlt645-2007",
                       "terminals": {"4401-0001": [{"address": "000000000001", "pn": 1}, ...], ...}},
     "config": "/abs/path/site.toml"}                # with --write-config (else null, or absent for buses alone)

Exit codes: 0 after a clean stop, 2 for bad arguments, 1 when a bus or the terminals cannot be
started (e.g. the MQTT broker is not reachable).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from meterd.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, whole_number
from meterd.errors import ConfigError, LinkError, ProtocolError
from meterd.heap import settle_heap
from meterd.protocols.dlt645.frame import normalize_address
from meterd.protocols.modbus import builtin_maps, get_map
from meterd.simulators.fleet import ALL_FAULT_KINDS, MODBUS_ALL_FAULT_KINDS, FleetSpec, parse_fault
from meterd.simulators.modbus import FRAMINGS
from meterd.simulators.serve import SimClock
from meterd.simulators.shard import (
    DEFAULT_CONCENTRATOR_CONNECT,
    DEFAULT_CONCENTRATOR_REGION,
    DEFAULT_DTU_CONNECT,
    DEFAULT_METERS_PER_TERMINAL,
    DEFAULT_MQTT_BROKER,
    ZERO_PASSWORD,
    MqttShard,
    TerminalSpec,
    fork_shards,
    serve_fleet,
)

log = logging.getLogger(__name__)

DTU_FORMATS: Final = ("usr-ascii", "usr-mac", "hex-frame")
DTU_PROTOCOLS: Final = ("dlt645", "modbus")
MQTT_PROTOCOLS: Final = ("dlt645-2007", "dlt645-1997", "modbus")
MAX_SIMULATED_METERS: Final = 1_000_000  # behind the simulated terminals of one process
MAX_BUSES: Final = 4096  # of each kind; --pty 1000000000 took 13.7 GB in 30 s (Linux has 4096 ptys by default)
MAX_TERMINAL_METERS: Final = 247  # Modbus unit ids; the MQTT fleet's limit for every protocol
MAX_MQTT_TERMINALS: Final = 999  # T001..T999
MAX_DTUS: Final = 99_999_999  # DTU00000001..
DEFAULT_POLL_QUANTITIES: Final = ("energy.active.import.total", "voltage.a")
DEFAULT_POLL_INTERVAL: Final = 60.0
_DTU_FILE_KEYS: Final = ("count", "meters", "format", "protocol", "host", "port", "heartbeat", "model")
_MQTT_FILE_KEYS: Final = ("count", "meters", "protocol", "host", "port", "root", "model")
_CONCENTRATOR_FILE_KEYS: Final = ("count", "meters", "host", "port", "kind", "heartbeat", "region", "collect")
CONCENTRATOR_KINDS: Final = ("concentrator", "special")
MAX_CONCENTRATORS: Final = 0xFFFF  # A2 1..FFFF
MAX_CONCENTRATOR_METERS: Final = 2040  # pn 1..2040
GDW_LISTENER: Final = "gdw1376"
GDW_PASSWORD_SECRET: Final = "METERD_GDW1376_PASSWORD"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "simulate",
        help="serve simulated DL/T 645 and Modbus meters on ptys and TCP ports, behind DTUs and MQTT terminals",
        description="Serve simulated DL/T 645-2007 / -1997 and Modbus meters on pseudo-terminals (real "
        "serial devices to pyserial) and TCP ports (like serial servers / DTUs / Modbus TCP gateways), "
        "or behind fleets of GPRS DTUs (dialling in to the master) and MQTT terminals (on a broker), "
        "until interrupted.",
    )
    p.add_argument("--pty", type=whole_number(0, MAX_BUSES), default=None, metavar="N",
                   help="DL/T 645 pty buses (default 1; 0 when terminals are simulated)")
    p.add_argument("--tcp-buses", type=whole_number(0, MAX_BUSES), default=0, metavar="N", help="DL/T 645 TCP buses (default 0)")
    p.add_argument("--modbus-pty", type=whole_number(0, MAX_BUSES), default=0, metavar="N", help="Modbus RTU pty buses (default 0)")
    p.add_argument("--modbus-tcp", type=whole_number(0, MAX_BUSES), default=0, metavar="N",
                   help="Modbus TCP buses, after the DL/T 645 TCP ports (default 0)")
    p.add_argument("--modbus-model", default="generic", metavar="NAME",
                   help=f"register map of the Modbus meters: {', '.join(builtin_maps())} (default generic)")
    p.add_argument("--modbus-framing", default="tcp", metavar="tcp|rtu",
                   help="framing on Modbus TCP buses: tcp (MBAP) or rtu (RTU over TCP) (default tcp)")
    p.add_argument("--modbus-baud", type=int, default=9600, help="Modbus pty line speed, 8N1 (default 9600)")
    p.add_argument("--v1997", action="append", default=[], metavar="ADDR[,ADDR...]",
                   help="DL/T 645 meters that speak DL/T 645-1997 (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="TCP listen address (default 127.0.0.1)")
    p.add_argument("--port", type=whole_number(0, 65535), default=0, metavar="P",
                   help="first TCP port, bus i on P+i (default 0: free ports)")
    p.add_argument("--meters-per-bus", type=int, default=3, metavar="M", help="meters on each bus (default 3)")
    p.add_argument("--first-address", default="000000000001", metavar="A",
                   help="address of the first meter; the rest follow (default 000000000001)")
    p.add_argument("--baud", type=int, default=2400, help="DL/T 645 pty line speed, 8E1 (default 2400)")
    p.add_argument("--no-wire-time", action="store_true", help="answer on ptys at once instead of at wire speed")
    p.add_argument("--turnaround", type=float, default=None, metavar="MS",
                   help="meter turnaround in ms (default 20 on ptys, 0 on TCP and behind DTUs)")
    p.add_argument("--speed", type=float, default=1.0, metavar="X",
                   help="simulated seconds per real second (default 1; 60 = a minute per second)")
    p.add_argument("--start", default=None, metavar="ISO",
                   help="simulated start time, e.g. 2025-01-31T23:50 (default: now)")
    p.add_argument("--fault", action="append", default=[], metavar="ADDR:KIND[:PROB]",
                   help=f"inject a fault into a bus meter; KIND is one of {', '.join(ALL_FAULT_KINDS)} on DL/T 645 "
                   f"meters, {', '.join(MODBUS_ALL_FAULT_KINDS)} on Modbus meters (late:PROB:SECONDS, "
                   "exception:PROB:CODE; conditions take a value, not a probability: sag:0.85, swell:1.12, "
                   "imbalance:SHARE_OF_A, clock_drift:SECONDS_A_DAY) (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of loads and faults (default 0)")
    p.add_argument("--control", default=None, metavar="SOCKET",
                   help="take commands on this Unix socket while running: press ADDR, power-down/power-up "
                        "ADDR..., reverse, voltage, shares, drift, status (meterd.simulators.control)")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="stop after this long")
    p.add_argument("--json", action="store_true", help="print the endpoints as one JSON document")

    t = p.add_argument_group("terminals (GPRS DTUs and MQTT terminals)")
    t.add_argument("--dtus", type=int, default=None, metavar="N",
                   help="GPRS DTUs DTU00000001.. dialling in to --dtu-connect (default 0)")
    t.add_argument("--dtu-connect", default=None, metavar="HOST:PORT",
                   help="the master's DTU listener the DTUs dial (default 127.0.0.1:9000)")
    t.add_argument("--dtu-format", default=None, metavar="|".join(DTU_FORMATS),
                   help="DTU registration/heartbeat packets (default usr-ascii)")
    t.add_argument("--dtu-protocol", default=None, metavar="|".join(DTU_PROTOCOLS),
                   help="protocol of the meters behind the DTUs (default dlt645: DL/T 645-2007)")
    t.add_argument("--dtu-heartbeat", type=float, default=None, metavar="SECONDS",
                   help="DTU heartbeat interval (default 30)")
    t.add_argument("--dtu-reconnect", type=float, default=1.0, metavar="SECONDS",
                   help="a DTU that cannot reach the master, or loses it, dials again after this long (default 1)")
    t.add_argument("--mqtt-terminals", type=int, default=None, metavar="N",
                   help=f"MQTT terminals T001.. on the broker --mqtt (default 0; at most {MAX_MQTT_TERMINALS})")
    t.add_argument("--mqtt", default=None, metavar="HOST:PORT", help="the MQTT broker (default 127.0.0.1:1883)")
    t.add_argument("--mqtt-protocol", default=None, metavar="|".join(MQTT_PROTOCOLS),
                   help="protocol of the meters behind the MQTT terminals (default dlt645-2007)")
    t.add_argument("--mqtt-root", default=None, metavar="ROOT", help="MQTT topic root (default meterd)")
    t.add_argument("--meters-per-terminal", type=int, default=None, metavar="M",
                   help=f"meters behind each DTU and terminal (default {DEFAULT_METERS_PER_TERMINAL}; "
                   f"1..{MAX_TERMINAL_METERS})")
    t.add_argument("--concentrators", type=int, default=None, metavar="N",
                   help="Q/GDW 1376.1 concentrators RRRR-0001.. dialling in to --concentrator-connect (default 0)")
    t.add_argument("--concentrator-connect", default=None, metavar="HOST:PORT",
                   help="the master's gdw1376 listener the concentrators dial (default 127.0.0.1:9001)")
    t.add_argument("--meters-per-concentrator", type=int, default=None, metavar="M",
                   help=f"DL/T 645-2007 meters behind each concentrator, pn 1..M (default "
                   f"{DEFAULT_METERS_PER_TERMINAL}; at most {MAX_CONCENTRATOR_METERS})")
    t.add_argument("--concentrator-password", default=None, metavar="HEX",
                   help="the concentrators' password PW, 32 hex digits (default zeros)")
    t.add_argument("--concentrator-kind", default=None, metavar="|".join(CONCENTRATOR_KINDS),
                   help="concentrator, or special: special-transformer terminals with control turns (AFN 05) "
                   "(default concentrator)")
    t.add_argument("--concentrator-heartbeat", type=float, default=None, metavar="SECONDS",
                   help="concentrator heartbeat interval (default 60)")
    t.add_argument("--concentrator-region", default=None, metavar="RRRR",
                   help="the concentrators' region code A1, four digits (default 4401)")
    t.add_argument("--concentrator-collect", type=float, default=None, metavar="SECONDS",
                   help="simulated seconds between a concentrator's collections of its meters, dividing a day "
                   "(default 900)")
    t.add_argument("--fleet-config", default=None, metavar="FILE",
                   help="TOML file describing the terminals: [dtus] count/meters/format/protocol/host/port, "
                   "[mqtt] count/meters/protocol/host/port, [concentrators] count/meters/host/port/kind; flags "
                   "given here win")
    t.add_argument("--write-config", default=None, metavar="PATH",
                   help="write a meterd site config (a channel per bus and per terminal, listener, broker, every "
                   "meter, one poll) for everything started: meterd run -c PATH")
    t.add_argument("--data-dir", default=None, metavar="DIR",
                   help="store folder in the written config (default: data, next to the config)")
    t.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_INTERVAL, metavar="SECONDS",
                   help=f"interval of the poll in the written config (default {DEFAULT_POLL_INTERVAL:g})")
    t.add_argument("--poll-quantities", default=",".join(DEFAULT_POLL_QUANTITIES), metavar="Q[,Q...]",
                   help=f"what the poll reads (default {','.join(DEFAULT_POLL_QUANTITIES)})")
    p.set_defaults(func=run)
    return p


# --- buses ---------------------------------------------------------------------------------------


def terminals_asked(args: argparse.Namespace) -> bool:
    return any(getattr(args, k, None) is not None for k in ("dtus", "mqtt_terminals", "concentrators", "fleet_config"))


def pty_buses(args: argparse.Namespace) -> int:
    """``--pty`` as given; not given: 1, or 0 when terminals are simulated."""
    if args.pty is not None:
        return int(args.pty)
    return 0 if terminals_asked(args) else 1


def bus_count(args: argparse.Namespace) -> int:
    return pty_buses(args) + args.tcp_buses + args.modbus_pty + args.modbus_tcp


def _start_time(args: argparse.Namespace, problems: list[str]) -> datetime | None:
    if not args.start:
        return None
    try:
        start = datetime.fromisoformat(args.start)
    except ValueError:
        problems.append(f"--start {args.start!r} is not an ISO date/time")
        return None
    if start.tzinfo is not None:
        problems.append("--start must be a local time without a zone (meters keep local time)")
        return None
    return start


def spec_from_args(args: argparse.Namespace) -> FleetSpec:
    """Arguments -> FleetSpec (the buses); ConfigError lists every problem."""
    problems: list[str] = []
    faults: dict[str, str] = {}
    for text in args.fault:
        try:
            address, kinds = parse_fault(text)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        faults[address] = f"{faults[address]},{kinds}" if address in faults else kinds
    start = _start_time(args, problems)
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
            pty_buses=pty_buses(args),
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
            control=args.control,
        )
    except ConfigError as exc:
        raise ConfigError(problems + exc.problems) from None
    if problems:
        raise ConfigError(problems)
    return spec


# --- terminals -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SiteSpec:
    """What ``--write-config`` writes."""

    path: Path
    data_dir: str
    poll_interval: float = DEFAULT_POLL_INTERVAL
    quantities: tuple[str, ...] = DEFAULT_POLL_QUANTITIES


def _host_port(text: str, flag: str, problems: list[str]) -> tuple[str, int] | None:
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        problems.append(f"{flag} {text!r}: expected HOST:PORT with a port 1..65535")
        return None
    return host, int(port)


def _load_fleet_file(path: str, problems: list[str]) -> dict[str, dict[str, Any]]:
    from meterd.config.loader import read_bounded
    from meterd.errors import ConfigError

    try:  # at most MAX_CONFIG_BYTES, as a site config: past it, read no further
        data = tomllib.loads(read_bounded(Path(path), f"--fleet-config {path}").decode("utf-8"))
    except ConfigError as exc:
        problems.extend(exc.problems)
        return {}
    except UnicodeDecodeError as exc:
        problems.append(f"--fleet-config {path}: cannot read: {exc}")
        return {}
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"--fleet-config {path}: invalid TOML: {exc}")
        return {}
    except RecursionError:
        problems.append(f"--fleet-config {path}: nested too deeply")
        return {}
    out: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        if key not in ("dtus", "mqtt", "concentrators"):
            problems.append(f"{path}: {key}: unknown section; expected [dtus], [mqtt] and/or [concentrators]")
        elif not isinstance(value, dict):
            problems.append(f"{path}: {key}: must be a table ([{key}])")
        else:
            allowed = {"dtus": _DTU_FILE_KEYS, "mqtt": _MQTT_FILE_KEYS}.get(key, _CONCENTRATOR_FILE_KEYS)
            for k in value:
                if k not in allowed:
                    problems.append(f"{path}: {key}.{k}: unknown key; expected one of {', '.join(allowed)}")
            out[key] = value
    if not out and not problems:
        problems.append(f"--fleet-config {path}: describes no terminals: give [dtus], [mqtt] and/or [concentrators]")
    return out


class _Picker:
    """A setting from the command line (if given), else the fleet file, else its default; with
    the label a problem names it by (the flag, or ``FILE: section.key``)."""

    def __init__(self, file: str | None, tables: dict[str, dict[str, Any]], problems: list[str]) -> None:
        self.file = file
        self.tables = tables
        self.problems = problems

    def __call__(self, cli: Any, flag: str, section: str, key: str, default: Any) -> tuple[Any, str]:
        if cli is not None:
            return cli, flag
        table = self.tables.get(section, {})
        if key in table:
            return table[key], f"{self.file}: {section}.{key}"
        return default, flag

    def integer(self, value: Any, label: str, low: int, high: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.problems.append(f"{label} {value!r}: must be an integer")
            return None
        if not low <= value <= high:
            self.problems.append(f"{label} {value}: must be {low}..{high}")
            return None
        return value

    def number(self, value: Any, label: str) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            self.problems.append(f"{label} {value!r}: must be a number of seconds > 0")
            return None
        return float(value)

    def choice(self, value: Any, label: str, choices: tuple[str, ...]) -> str | None:
        if not isinstance(value, str) or value.strip().lower() not in choices:
            self.problems.append(f"{label} {value!r}: expected {' or '.join(choices)}")
            return None
        return value.strip().lower()

    def text(self, value: Any, label: str) -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.problems.append(f"{label} {value!r}: must be a non-empty string")
            return None
        return value.strip()

    def model(self, value: Any, label: str) -> str | None:
        if not isinstance(value, str):
            self.problems.append(f"{label} {value!r}: must be a register map name")
            return None
        try:
            get_map(value)
        except (ConfigError, KeyError, LookupError) as exc:
            detail = "; ".join(exc.problems) if isinstance(exc, ConfigError) else str(exc)
            self.problems.append(f"{label} {value!r}: {detail}")
            return None
        return value


def terminal_spec_from_args(args: argparse.Namespace, bus_meters: int = 0) -> TerminalSpec | None:
    """The terminals asked for (None: none); ConfigError lists every problem.

    ``bus_meters``: meters on buses started as well -- the DTU meters' addresses follow theirs."""
    if not terminals_asked(args):
        return None
    problems: list[str] = []
    tables = _load_fleet_file(args.fleet_config, problems) if args.fleet_config else {}
    pick = _Picker(args.fleet_config, tables, problems)

    for section in tables:
        if "count" not in tables[section]:
            problems.append(f"{args.fleet_config}: {section}.count: missing: how many terminals")
    dtus = pick.integer(*pick(args.dtus, "--dtus", "dtus", "count", 0), 0, MAX_DTUS)
    n_mqtt = pick.integer(*pick(args.mqtt_terminals, "--mqtt-terminals", "mqtt", "count", 0), 0, MAX_MQTT_TERMINALS)
    n_conc = pick.integer(*pick(args.concentrators, "--concentrators", "concentrators", "count", 0), 0,
                          MAX_CONCENTRATORS)
    if dtus == 0 and n_mqtt == 0 and n_conc == 0 and not (args.fleet_config and not tables):
        problems.append("--dtus/--mqtt-terminals: no terminals to simulate: give at least one DTU, MQTT terminal "
                        "or concentrator (--concentrators)")

    values: dict[str, Any] = {}
    m = args.meters_per_terminal
    dtu_meters = pick.integer(*pick(m, "--meters-per-terminal", "dtus", "meters", DEFAULT_METERS_PER_TERMINAL),
                              1, MAX_TERMINAL_METERS)
    mqtt_meters = pick.integer(*pick(m, "--meters-per-terminal", "mqtt", "meters", DEFAULT_METERS_PER_TERMINAL),
                               1, MAX_TERMINAL_METERS)
    conc_meters = pick.integer(*pick(args.meters_per_concentrator, "--meters-per-concentrator", "concentrators",
                                     "meters", DEFAULT_METERS_PER_TERMINAL), 1, MAX_CONCENTRATOR_METERS)
    behind = (dtus or 0) * (dtu_meters or 0) + (n_mqtt or 0) * (mqtt_meters or 0) + (n_conc or 0) * (conc_meters or 0)
    if behind > MAX_SIMULATED_METERS:  # --dtus 99999999 took 5 GB in 20 s before a terminal connected
        problems.append(f"terminals: {behind:,} meters behind them, at most {MAX_SIMULATED_METERS:,} (a city's) "
                        "in one process")

    dtu_cli_host = dtu_cli_port = None
    if args.dtu_connect is not None:
        hp = _host_port(args.dtu_connect, "--dtu-connect", problems)
        dtu_cli_host, dtu_cli_port = hp if hp else (DEFAULT_DTU_CONNECT[0], DEFAULT_DTU_CONNECT[1])
    values["dtu_host"] = pick.text(*pick(dtu_cli_host, "--dtu-connect", "dtus", "host", DEFAULT_DTU_CONNECT[0]))
    values["dtu_port"] = pick.integer(*pick(dtu_cli_port, "--dtu-connect", "dtus", "port", DEFAULT_DTU_CONNECT[1]),
                                      1, 65535)
    values["dtu_format"] = pick.choice(*pick(args.dtu_format, "--dtu-format", "dtus", "format", "usr-ascii"),
                                       DTU_FORMATS)
    values["dtu_protocol"] = pick.choice(*pick(args.dtu_protocol, "--dtu-protocol", "dtus", "protocol", "dlt645"),
                                         DTU_PROTOCOLS)
    values["dtu_heartbeat"] = pick.number(*pick(args.dtu_heartbeat, "--dtu-heartbeat", "dtus", "heartbeat", 30.0))
    values["dtu_model"] = pick.model(*pick(None, "--modbus-model", "dtus", "model", args.modbus_model))
    values["dtu_reconnect"] = pick.number(args.dtu_reconnect, "--dtu-reconnect")

    mqtt_cli_host = mqtt_cli_port = None
    if args.mqtt is not None:
        hp = _host_port(args.mqtt, "--mqtt", problems)
        mqtt_cli_host, mqtt_cli_port = hp if hp else (DEFAULT_MQTT_BROKER[0], DEFAULT_MQTT_BROKER[1])
    values["mqtt_host"] = pick.text(*pick(mqtt_cli_host, "--mqtt", "mqtt", "host", DEFAULT_MQTT_BROKER[0]))
    values["mqtt_port"] = pick.integer(*pick(mqtt_cli_port, "--mqtt", "mqtt", "port", DEFAULT_MQTT_BROKER[1]),
                                       1, 65535)
    values["mqtt_protocol"] = pick.choice(*pick(args.mqtt_protocol, "--mqtt-protocol", "mqtt", "protocol",
                                                "dlt645-2007"), MQTT_PROTOCOLS)
    values["mqtt_model"] = pick.model(*pick(None, "--modbus-model", "mqtt", "model", args.modbus_model))
    root = pick.text(*pick(args.mqtt_root, "--mqtt-root", "mqtt", "root", "meterd"))
    if root is not None and any(c in root for c in "+#"):
        problems.append(f"--mqtt-root {root!r}: must not contain MQTT wildcards + or #")
        root = None
    values["mqtt_root"] = root

    conc_cli_host = conc_cli_port = None
    if args.concentrator_connect is not None:
        hp = _host_port(args.concentrator_connect, "--concentrator-connect", problems)
        conc_cli_host, conc_cli_port = hp if hp else DEFAULT_CONCENTRATOR_CONNECT
    values["concentrator_host"] = pick.text(*pick(conc_cli_host, "--concentrator-connect", "concentrators", "host",
                                                  DEFAULT_CONCENTRATOR_CONNECT[0]))
    values["concentrator_port"] = pick.integer(*pick(conc_cli_port, "--concentrator-connect", "concentrators", "port",
                                                     DEFAULT_CONCENTRATOR_CONNECT[1]), 1, 65535)
    values["concentrator_kind"] = pick.choice(*pick(args.concentrator_kind, "--concentrator-kind", "concentrators",
                                                    "kind", "concentrator"), CONCENTRATOR_KINDS)
    values["concentrator_heartbeat"] = pick.number(*pick(args.concentrator_heartbeat, "--concentrator-heartbeat",
                                                         "concentrators", "heartbeat", 60.0))
    region = pick.text(*pick(args.concentrator_region, "--concentrator-region", "concentrators", "region",
                             DEFAULT_CONCENTRATOR_REGION))
    if region is not None and not (len(region) == 4 and region.isdigit()):
        problems.append(f"--concentrator-region {region!r}: the region code A1 is four digits, e.g. 4401")
        region = None
    values["concentrator_region"] = region
    collect = pick.number(*pick(args.concentrator_collect, "--concentrator-collect", "concentrators", "collect",
                                900.0))
    if collect is not None and (collect < 60 or 86_400 % collect):
        problems.append(f"--concentrator-collect {collect:g}: must be whole seconds of at least a minute that "
                        "divide a day (e.g. 300, 900, 3600)")
        collect = None
    values["concentrator_collect"] = collect
    password = ZERO_PASSWORD
    if args.concentrator_password is not None:
        from meterd.simulators.concentrator import parse_password

        try:
            password = parse_password(args.concentrator_password).hex().upper()
        except ValueError as exc:
            problems.append(f"--concentrator-password: {exc}")
    values["concentrator_password"] = password

    # flags of a kind of terminal that is not simulated are a mistake, not something to ignore
    if dtus == 0:
        for flag, value in (("--dtu-connect", args.dtu_connect), ("--dtu-format", args.dtu_format),
                            ("--dtu-protocol", args.dtu_protocol), ("--dtu-heartbeat", args.dtu_heartbeat)):
            if value is not None:
                problems.append(f"{flag}: no DTUs are simulated (give --dtus N)")
    if n_mqtt == 0:
        for flag, value in (("--mqtt", args.mqtt), ("--mqtt-protocol", args.mqtt_protocol),
                            ("--mqtt-root", args.mqtt_root)):
            if value is not None:
                problems.append(f"{flag}: no MQTT terminals are simulated (give --mqtt-terminals N)")
    if n_conc == 0:
        for flag, value in (("--concentrator-connect", args.concentrator_connect),
                            ("--meters-per-concentrator", args.meters_per_concentrator),
                            ("--concentrator-password", args.concentrator_password),
                            ("--concentrator-kind", args.concentrator_kind),
                            ("--concentrator-heartbeat", args.concentrator_heartbeat),
                            ("--concentrator-region", args.concentrator_region),
                            ("--concentrator-collect", args.concentrator_collect)):
            if value is not None:
                problems.append(f"{flag}: no concentrators are simulated (give --concentrators N)")

    start = _start_time(args, problems)
    if args.speed <= 0:
        problems.append(f"--speed {args.speed} must be > 0")
    turnaround = 0.0
    if args.turnaround is not None:
        if args.turnaround < 0:
            problems.append(f"--turnaround {args.turnaround} must be >= 0 ms")
        else:
            turnaround = args.turnaround / 1000.0
    if args.duration is not None and args.duration < 0:
        problems.append(f"--duration {args.duration} must be >= 0")

    first = None
    try:
        first = int(normalize_address(args.first_address)) + bus_meters
    except (ProtocolError, ValueError):
        problems.append(f"--first-address {args.first_address!r} is not a 12-digit decimal address")
    ranges = []  # (what, flag, first, count) of the meters numbered on from --first-address
    if first is not None and dtus and dtu_meters:
        ranges.append(("DTU", "--dtus", first, dtus * dtu_meters))
    if first is not None and n_conc and conc_meters:
        ranges.append(("concentrator", "--concentrators", first + (dtus or 0) * (dtu_meters or 0),
                       n_conc * conc_meters))
    for what, flag, low, count in ranges:
        last = low + count - 1
        if last > 999_999_999_999:
            problems.append(f"{flag}: {count} meters from {low:012d} run past 999999999999")
        elif n_mqtt and mqtt_meters:
            # MQTT meter m of terminal t is t * 10**6 + m: does the range hold one?
            clash = next((t * 10**6 + 1 for t in range(1, n_mqtt + 1)
                          if low <= t * 10**6 + mqtt_meters and t * 10**6 + 1 <= last), None)
            if clash is not None:
                problems.append(f"--first-address: the {what} meters {low:012d}..{last:012d} overlap the MQTT "
                                f"meters (terminal t's meters are t*10^6+1..); start them elsewhere, e.g. "
                                f"--first-address 900000000001")
    if problems:
        raise ConfigError(problems)
    assert dtus is not None and n_mqtt is not None and dtu_meters is not None and mqtt_meters is not None
    assert n_conc is not None and conc_meters is not None
    assert first is not None
    return TerminalSpec(dtus=dtus, dtu_meters=dtu_meters, mqtt_terminals=n_mqtt, mqtt_meters=mqtt_meters,
                        concentrators=n_conc, concentrator_meters=conc_meters,
                        dtu_first_address=first, speed=args.speed, start=start, seed=args.seed,
                        turnaround=turnaround, **values)


def site_from_args(args: argparse.Namespace, problems: list[str]) -> SiteSpec | None:
    """``--write-config`` and its companions (None without it)."""
    if args.write_config is None:
        if args.data_dir is not None:
            problems.append("--data-dir: only used with --write-config PATH")
        if args.poll_interval != DEFAULT_POLL_INTERVAL or args.poll_quantities != ",".join(DEFAULT_POLL_QUANTITIES):
            problems.append("--poll-interval/--poll-quantities: only used with --write-config PATH")
        return None
    ok = True
    path = Path(args.write_config).expanduser()
    if not args.write_config.strip() or path.is_dir():
        problems.append(f"--write-config {args.write_config!r}: must be a file path")
        ok = False
    elif not path.absolute().parent.is_dir():
        problems.append(f"--write-config {args.write_config!r}: folder {path.absolute().parent} does not exist")
        ok = False
    if not args.poll_interval > 0:
        problems.append(f"--poll-interval {args.poll_interval}: must be > 0 seconds")
        ok = False
    quantities = tuple(q.strip() for q in args.poll_quantities.split(",") if q.strip())
    if not quantities:
        problems.append(f"--poll-quantities {args.poll_quantities!r}: expected Q[,Q...], e.g. voltage.a")
        ok = False
    else:
        from meterd.protocols.modbus.quantities import known_quantities
        from meterd.protocols.readspec import dlt645_1997_index, dlt645_index

        known = set(known_quantities()) | set(dlt645_index()) | set(dlt645_1997_index())
        for q in quantities:
            if q not in known:
                problems.append(f"--poll-quantities: unknown quantity {q!r}")
                ok = False
        if len(set(quantities)) != len(quantities):
            problems.append(f"--poll-quantities {args.poll_quantities!r}: a quantity is listed twice")
            ok = False
    if args.data_dir is not None:
        if not args.data_dir.strip():
            problems.append("--data-dir: must not be empty")
            ok = False
        data_dir = str(Path(args.data_dir).expanduser().absolute())
    else:
        data_dir = "data"  # relative: next to the config file
    if not ok:
        return None
    return SiteSpec(path.absolute(), data_dir, float(args.poll_interval), quantities)


def _toml_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _duration(seconds: float) -> str:
    return f'"{seconds * 1000:g}ms"' if seconds < 1 else f'"{seconds:g}s"'


LOOPBACK_FOR: Final = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def bus_protocols(spec: FleetSpec) -> list[dict[str, str]]:
    """Per bus, each meter's protocol (``dlt645-2007``, ``dlt645-1997``, ``modbus``)."""
    v1997 = spec.v1997_addresses()
    return [
        {a: "modbus" if protocol == "modbus" else "dlt645-1997" if a in v1997 else "dlt645-2007" for a in addresses}
        for addresses, (protocol, _) in zip(spec.addresses(), spec.bus_layout())
    ]


def bus_sketch(spec: FleetSpec) -> list[dict[str, Any]]:
    """The buses of ``spec`` as the fleet document will show them, with stand-in endpoints (a pty's
    path and a free port are known only once the bus runs): enough to check the config before."""
    out: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    tcp_index = 0
    for addresses, (protocol, kind), protocols in zip(spec.addresses(), spec.bus_layout(), bus_protocols(spec)):
        prefix = f"mb{kind}" if protocol == "modbus" else kind
        counts[prefix] = counts.get(prefix, 0) + 1
        bus: dict[str, Any] = {"name": f"{prefix}{counts[prefix]}", "kind": kind, "meters": addresses,
                               "protocol": protocol, "protocols": protocols}  # fmt: skip
        if protocol == "modbus":
            bus.update(model=spec.modbus_model, units={a: u for u, a in enumerate(addresses, 1)},
                       framing="rtu" if kind == "pty" else spec.modbus_tcp_framing)  # fmt: skip
        if kind == "pty":
            bus.update(endpoint="/dev/pts/stand-in", baud=spec.modbus_baud if protocol == "modbus" else spec.baud,
                       bytesize=8, parity="N" if protocol == "modbus" else "E", stopbits=1)  # fmt: skip
        else:
            port = spec.port + tcp_index if spec.port else 1
            tcp_index += 1
            bus.update(endpoint=f"{spec.host}:{port}", host=spec.host, port=port)
        out.append(bus)
    return out


def _bus_lines(buses: list[dict[str, Any]]) -> list[str]:
    """A channel per bus, then its meters."""
    lines: list[str] = []
    for b in buses:
        name = b["name"]
        lines.append(f"[channels.{name}]")
        if b["kind"] == "pty":
            stopbits = b["stopbits"]
            lines.append(f"serial = {{ device = {_toml_str(b['endpoint'])}, baud = {b['baud']}, "
                         f"bytesize = {b['bytesize']}, parity = {_toml_str(b['parity'])}, "
                         f"stopbits = {int(stopbits) if stopbits == int(stopbits) else stopbits} }}")  # fmt: skip
        else:
            host = LOOPBACK_FOR.get(b["host"], b["host"])
            lines.append(f"tcp = {{ host = {_toml_str(host)}, port = {b['port']} }}")
        if b["protocol"] == "modbus":
            lines.append(f"framing = {_toml_str(b['framing'])}")
        lines += ['response_timeout = "2s"', ""]
    for b in buses:
        for address in b["meters"]:
            protocol = b["protocols"].get(address, "dlt645-2007")
            lines += ["[[meters]]", f"address = {_toml_str(address)}", f"channel = {_toml_str(b['name'])}",
                      f"group = {_toml_str(b['name'])}"]  # fmt: skip
            if protocol != "dlt645-2007":
                lines.append(f"protocol = {_toml_str(protocol)}")
            if protocol == "modbus":
                lines += [f"unit = {b['units'][address]}", f"model = {_toml_str(b['model'])}"]
            lines.append("")
    return lines


def secrets_path(site: SiteSpec) -> Path:
    """Where ``--write-config`` puts the concentrators' password: beside the config, suffix ``.secrets``."""
    path = site.path
    return path.with_name(path.name + ".secrets") if path.suffix == ".secrets" else path.with_suffix(".secrets")


def needs_secrets(terms: TerminalSpec | None) -> bool:
    """Whether the concentrators have a password to keep (zeros need none: the master's default)."""
    return terms is not None and terms.concentrators > 0 and terms.concentrator_password.strip("0") != ""


def write_secrets(site: SiteSpec, terms: TerminalSpec) -> None:
    """The secrets file the written config names, mode 600, atomically."""
    path = secrets_path(site)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp: mode 600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("# written by `meterd simulate --write-config`: the simulated concentrators' password PW\n"
                    f"{GDW_PASSWORD_SECRET}={terms.concentrator_password}\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def site_config(terms: TerminalSpec | None, site: SiteSpec, buses: list[dict[str, Any]] | None = None, *,
                secrets: bool = True) -> str:
    """The meterd site config (TOML) for ``buses`` (the fleet document's, with their endpoints) and
    ``terms``: a channel per bus and per terminal, every meter, one poll.  ``secrets``: name the
    secrets file (:func:`secrets_path`) the concentrators' password is in, when there is one."""
    buses = buses or []
    bus_meters = sum(len(b["meters"]) for b in buses)
    total = bus_meters + (terms.meters if terms is not None else 0)
    lines = [
        f"# meterd site config written by `meterd simulate --write-config` for {total} simulated meters:",
    ]
    for b in buses:
        what = f"Modbus {b['framing']} {b['model']}" if b["protocol"] == "modbus" else "DL/T 645"
        lines.append(f"#   bus {b['name']}: {b['kind']} {b['endpoint']}, {len(b['meters'])} {what} meters")
    lines += (_terminal_lines(terms, site, total, secrets and needs_secrets(terms)) if terms is not None
              else _store_lines(site, total))
    lines += _bus_lines(buses)
    if terms is not None:
        lines += _terminal_channels(terms)
    lines += ["[[polls]]", 'name = "realtime"', f"interval = {_duration(site.poll_interval)}",
              "quantities = [" + ", ".join(_toml_str(q) for q in site.quantities) + "]", ""]
    return "\n".join(lines)


def _store_lines(site: SiteSpec, meters: int) -> list[str]:
    lines = [f"# Run it with: meterd run -c {site.path}", "", "[store]", f"data_dir = {_toml_str(site.data_dir)}"]
    if meters > 1000:
        # the writer stores one batch per trip through the event loop, and a loop busy with
        # thousands of meters makes few trips a second: bigger batches keep up with it
        lines.append(f"batch_size = {min(10_000, meters // 2)}")
    lines.append("")
    return lines


def _terminal_lines(terms: TerminalSpec, site: SiteSpec, meters: int, secrets: bool = False) -> list[str]:
    """The terminals' comment lines, the secrets file, the store, the listeners and the broker."""
    lines = []
    if terms.dtus:
        lines.append(f"#   {terms.dtus} GPRS DTUs ({terms.dtu_format}) dialling {terms.dtu_host}:{terms.dtu_port}, "
                     f"{terms.dtu_meters} {terms.dtu_protocol} meters each")
    if terms.mqtt_terminals:
        lines.append(f"#   {terms.mqtt_terminals} MQTT terminals on the broker {terms.mqtt_host}:{terms.mqtt_port}, "
                     f"{terms.mqtt_meters} {terms.mqtt_protocol} meters each")
    if terms.concentrators:
        lines.append(f"#   {terms.concentrators} Q/GDW 1376.1 {terms.concentrator_kind} terminals dialling "
                     f"{terms.concentrator_host}:{terms.concentrator_port}, {terms.concentrator_meters} "
                     "DL/T 645-2007 meters each")
    if secrets:
        lines += ["# the concentrators' password PW (the config holds no secret):",
                  f"secrets_file = {_toml_str(secrets_path(site).name)}", ""]
    lines += _store_lines(site, meters)
    if terms.dtus:
        loopback = terms.dtu_host in ("127.0.0.1", "localhost", "::1")
        lines += ["[listeners.gprs]", f"host = {_toml_str(terms.dtu_host if loopback else '0.0.0.0')}",
                  f"port = {terms.dtu_port}", f"formats = [{_toml_str(terms.dtu_format)}]",
                  f"heartbeat_timeout = {_duration(max(120.0, 4 * terms.dtu_heartbeat))}", ""]
    if terms.concentrators:
        loopback = terms.concentrator_host in ("127.0.0.1", "localhost", "::1")
        lines += [f"[listeners.{GDW_LISTENER}]", f"host = {_toml_str(terms.concentrator_host if loopback else '0.0.0.0')}",
                  f"port = {terms.concentrator_port}", f"protocol = {_toml_str(GDW_LISTENER)}",
                  f"heartbeat_timeout = {_duration(max(120.0, 4 * terms.concentrator_heartbeat))}", ""]
    if terms.mqtt_terminals:
        lines += ["[mqtt]", f"host = {_toml_str(terms.mqtt_host)}", f"port = {terms.mqtt_port}",
                  f"client_id = {_toml_str(f'meterd-master-{site.path.stem}')}",
                  f"root = {_toml_str(terms.mqtt_root)}", ""]
    return lines


def _channel_name(terminal_id: str) -> str:
    """A terminal's channel name: its id, or for a MAC ``dtu-020000000001`` (a bare TOML key)."""
    return f"dtu-{terminal_id.replace(':', '')}" if ":" in terminal_id else terminal_id


def _terminal_channels(terms: TerminalSpec) -> list[str]:
    """A channel per terminal, then the meters behind them."""
    lines: list[str] = []
    # a DTU that is still dialling when a round starts: the round waits that long for it (many
    # DTUs dialling in at once take a while to be let in)
    connect_wait = max(3.0, 3 * terms.dtu_reconnect, 0.01 * max(terms.dtus, terms.concentrators))
    dtus, mqtts = terms.dtu_fleet(), terms.mqtt_fleet()
    for tid in dtus:
        lines += [f"[channels.{_channel_name(tid)}]",
                  f'dtu = {{ listener = "gprs", terminal = {_toml_str(tid)}, connect_wait = {_duration(connect_wait)} }}',
                  'response_timeout = "3s"', ""]
    for tid in mqtts:
        lines += [f"[channels.{tid}]", f"mqtt = {{ terminal = {_toml_str(tid)} }}", 'response_timeout = "3s"', ""]

    def meters(fleet: dict[str, list[str]], group: str, protocol: str, model: str) -> None:
        for tid, addresses in fleet.items():
            for unit, address in enumerate(addresses, 1):
                lines.extend(["[[meters]]", f'address = "{address}"', f"channel = {_toml_str(_channel_name(tid))}",
                              f'group = "{group}"'])
                if protocol != "dlt645-2007":
                    lines.append(f'protocol = "{protocol}"')
                if protocol == "modbus":
                    lines.extend([f"unit = {unit}", f"model = {_toml_str(model)}"])
                lines.append("")

    meters(dtus, "gprs", "modbus" if terms.dtu_protocol == "modbus" else "dlt645-2007", terms.dtu_model)
    meters(mqtts, "mqtt", terms.mqtt_protocol, terms.mqtt_model)
    lines += _concentrator_channels(terms, connect_wait)
    return lines


def _concentrator_channels(terms: TerminalSpec, connect_wait: float) -> list[str]:
    """A gdw1376 channel per concentrator, then its meters with their pn."""
    lines: list[str] = []
    fleet = terms.concentrator_fleet()
    extra = ""
    if terms.concentrator_kind != "concentrator":
        extra += f", kind = {_toml_str(terms.concentrator_kind)}"
    if needs_secrets(terms):
        extra += f", password_secret = {_toml_str(GDW_PASSWORD_SECRET)}"
    wait = _duration(connect_wait)
    for key in fleet:
        link = f"listener = {_toml_str(GDW_LISTENER)}, terminal = {_toml_str(key)}{extra}, connect_wait = {wait}"
        lines += [f"[channels.gw-{key}]", f"gdw1376 = {{ {link} }}", 'response_timeout = "5s"', ""]
    for key, meters in fleet.items():
        for address, pn in meters:
            lines += ["[[meters]]", f'address = "{address}"', f'channel = "gw-{key}"', f'group = "{GDW_LISTENER}"',
                      f"pn = {pn}", ""]
    return lines


def check_quantities(terms: TerminalSpec | None, quantities: tuple[str, ...], buses: FleetSpec | None = None) -> list[str]:
    """Problems if a kind of simulated meter cannot be asked for one of ``quantities``."""
    from meterd.protocols.drivers import get_driver

    kinds: dict[tuple[str, str], str] = {}
    if buses is not None:
        for protocols in bus_protocols(buses):
            for protocol in set(protocols.values()):
                kinds.setdefault((protocol, buses.modbus_model), "bus")
    if terms is not None and terms.dtus:
        kinds.setdefault(("modbus" if terms.dtu_protocol == "modbus" else "dlt645-2007", terms.dtu_model), "DTU")
    if terms is not None and terms.mqtt_terminals:
        kinds.setdefault((terms.mqtt_protocol, terms.mqtt_model), "MQTT")
    if terms is not None and terms.concentrators:
        kinds.setdefault(("dlt645-2007", terms.dtu_model), "concentrator")
    problems = []
    for (protocol, model), where in kinds.items():
        driver = get_driver(protocol)
        regmap = get_map(model) if driver.by_unit_and_map else None
        _, missing = driver.plan(quantities, (), regmap)
        if regmap is not None:
            what = f"the {where} meters' register map {model} has no {driver.missing_noun} for"
        else:
            what = f"the {where} meters ({protocol}) have no {driver.missing_noun} for"
        if missing:
            problems.append(f"--poll-quantities: {what} {', '.join(missing)}")
    return problems


def check_site_config(text: str, site: SiteSpec) -> None:
    """Load ``text`` as meterd would (a bug here, not the operator's, if it fails)."""
    from meterd.config.loader import parse_config

    try:
        parse_config(tomllib.loads(text), str(site.path), base_dir=site.path.parent)
    except ConfigError as exc:
        shown = [f"--write-config: the written config would be invalid: {p}" for p in exc.problems[:5]]
        if len(exc.problems) > 5:
            shown.append(f"--write-config: ... and {len(exc.problems) - 5} more")
        raise ConfigError(shown) from None


def write_site_config(path: Path, text: str) -> None:
    """Atomically: the daemon never reads half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --- the whole plan ------------------------------------------------------------------------------


@dataclass(slots=True)
class Plan:
    buses: FleetSpec | None
    terminals: TerminalSpec | None
    site: SiteSpec | None = None
    site_text: str | None = None


def plan_from_args(args: argparse.Namespace) -> Plan:
    """Every argument checked; ConfigError lists every problem."""
    problems: list[str] = []
    buses = None
    bus_meters = 0
    if bus_count(args) > 0 or not terminals_asked(args):
        try:
            buses = spec_from_args(args)
            bus_meters = len(buses.all_addresses())
        except ConfigError as exc:
            problems.extend(exc.problems)
    else:
        if args.fault:
            problems.append("--fault: faults are injected into bus meters only (--pty, --tcp-buses, --modbus-*)")
        if args.v1997:
            problems.append("--v1997: applies to bus meters only; use --mqtt-protocol dlt645-1997 for terminals")
    terminals = None
    try:
        terminals = terminal_spec_from_args(args, bus_meters)
    except ConfigError as exc:
        problems.extend(p for p in exc.problems if p not in problems)
    if not terminals_asked(args) and args.meters_per_terminal is not None:
        problems.append("--meters-per-terminal: no terminals are simulated (give --dtus or --mqtt-terminals)")
    site = site_from_args(args, problems)
    if problems:
        raise ConfigError(problems)
    if site is not None and (problems := check_quantities(terminals, site.quantities, buses)):
        raise ConfigError(problems)
    plan = Plan(buses, terminals, site)
    if site is not None:
        # checked now with stand-in endpoints; written with the real ones once the buses run
        check_site_config(site_config(terminals, site, bus_sketch(buses) if buses is not None else [], secrets=False),
                          site)
    return plan


# --- output --------------------------------------------------------------------------------------


def _protocol_cell(b: dict[str, Any]) -> str:
    if b.get("protocol") == "modbus":
        return f"modbus-{b['framing']} {b['model']}"
    return "dlt645"


def _span(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{items[0]}..{items[-1]}"


def format_terminals(doc: dict[str, Any]) -> list[str]:
    lines = []
    for key, what, where in (("dtus", "GPRS DTUs", "dialling"), ("mqtt", "MQTT terminals", "on broker")):
        part = doc.get(key)
        if not part:
            continue
        fleet = part["terminals"]
        ids = list(fleet)
        addresses = [a for meters in fleet.values() for a in meters]
        endpoint = part["connect"] if key == "dtus" else f"{part['broker']} (root {part['root']})"
        extra = f" ({part['format']})" if key == "dtus" else ""
        lines.append(f"{key}: {len(ids)} {what} {_span(ids)} {where} {endpoint}{extra}, "
                     f"{len(addresses)} {part['protocol']} meters {_span(addresses)}")
        if len(ids) <= 20:
            lines += [f"  {tid}: {' '.join(meters)}" for tid, meters in fleet.items()]
    part = doc.get("concentrators")
    if part:
        fleet = part["terminals"]
        keys = list(fleet)
        addresses = [m["address"] for meters in fleet.values() for m in meters]
        lines.append(f"concentrators: {len(keys)} Q/GDW 1376.1 {part['kind']} terminals {_span(keys)} dialling "
                     f"{part['connect']}, {len(addresses)} dlt645-2007 meters {_span(addresses)}")
        if len(keys) <= 20:
            lines += [f"  {key}: " + " ".join(f"p{m['pn']}={m['address']}" for m in meters)
                      for key, meters in fleet.items()]
    if doc.get("config"):
        lines.append(f"config: {doc['config']} (meterd run -c {doc['config']})")
    return lines


def format_table(doc: dict[str, Any]) -> str:
    lines = []
    if doc["buses"] or not (doc.get("dtus") or doc.get("mqtt") or doc.get("concentrators")):
        lines.append(f"meterd simulate: {sum(len(b['meters']) for b in doc['buses'])} meters on {len(doc['buses'])} "
                     f"buses; simulated clock from {doc['start']} at x{doc['speed']:g}; password {doc['password']}")
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
    else:
        lines.append(f"meterd simulate: terminals; simulated clock from {doc['start']} at x{doc['speed']:g}; "
                     f"password {doc['password']}")
    lines += format_terminals(doc)
    lines.append("Ctrl-C stops.")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        plan = plan_from_args(args)
    except ConfigError as exc:
        print(f"meterd simulate: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    clock = None
    shards: list[MqttShard] = []
    if plan.terminals is not None:
        clock = SimClock.starting(plan.terminals.start, plan.terminals.speed)
        shards = fork_shards(plan.terminals, clock, settle_heap)  # before any thread or event loop

    def announce(doc: dict[str, Any]) -> None:
        if plan.site is not None:
            if needs_secrets(plan.terminals):
                assert plan.terminals is not None
                write_secrets(plan.site, plan.terminals)  # before the check: the config names the file
            plan.site_text = site_config(plan.terminals, plan.site, doc["buses"])
            check_site_config(plan.site_text, plan.site)
            write_site_config(plan.site.path, plan.site_text)
        if plan.terminals is not None or plan.site is not None:
            doc["config"] = str(plan.site.path) if plan.site is not None else None
        print(json.dumps(doc) if args.json else format_table(doc), flush=True)

    try:
        fleet, terms = asyncio.run(serve_fleet(plan.buses, plan.terminals, announce=announce, duration=args.duration,
                                               clock=clock, shards=shards, settle=settle_heap))
    except (LinkError, ConnectionError, OSError, ConfigError) as exc:
        print(f"meterd simulate: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        for shard in shards:
            if shard.process.is_alive():
                shard.process.kill()
    if fleet is not None:
        for name, b in zip(fleet.bus_names, fleet.buses):
            s = b.running.stats
            faults = ", ".join(f"{k} {v}" for k, v in sorted(s.faults.items())) or "none"
            print(f"{name} {b.endpoint}: {s.requests} requests, {s.replies} replies, faults injected: {faults}",
                  file=sys.stderr)
    if terms is not None:
        for line in terms.report():
            print(line, file=sys.stderr)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meterd")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["simulate", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
