"""``meterd simulate``: simulated DL/T 645 and Modbus meters on pseudo-terminals and TCP ports, on their own,
and whole fleets of terminals -- GPRS DTUs and MQTT terminals with meters behind them.

Starts a fleet (:mod:`meterd.simulators.fleet`), prints where it listens -- one JSON document on
one line with ``--json``, a table otherwise -- flushes stdout, and serves until SIGINT/SIGTERM or
``--duration`` seconds.  Link statistics go to stderr at the end, so stdout stays one document.

DL/T 645 buses (``--pty``, ``--tcp-buses``) carry DL/T 645-2007 meters, or DL/T 645-1997 ones for
the addresses given with ``--v1997``; Modbus buses (``--modbus-pty``: RTU at ``--modbus-baud``
8N1; ``--modbus-tcp``: Modbus TCP, or RTU over TCP with ``--modbus-framing rtu``) serve their
meters through the register map ``--modbus-model`` under unit ids 1..M.

Terminals (:mod:`meterd.simulators.dtu`, :mod:`meterd.simulators.mqtt_terminal`):

* ``--dtus N``: GPRS/4G DTUs ``DTU00000001``... that dial *in* to the master's DTU listener at
  ``--dtu-connect HOST:PORT`` (default 127.0.0.1:9000), register in ``--dtu-format``
  (``usr-ascii`` or ``hex-frame``) and heart-beat every ``--dtu-heartbeat`` seconds; behind each,
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
* ``--fleet-config FILE``: the same from a TOML file; flags given on the command line win::

      [dtus]
      count = 500
      meters = 10
      format = "usr-ascii"   # or "hex-frame"
      protocol = "dlt645"    # or "modbus"
      host = "127.0.0.1"     # where the master's DTU listener is
      port = 9000

      [mqtt]
      count = 500
      meters = 10
      protocol = "dlt645-2007"   # or "dlt645-1997", "modbus"
      host = "127.0.0.1"         # the broker
      port = 1883

* ``--write-config PATH`` writes a complete meterd site config for the terminals started (the
  store in ``--data-dir``, ``[listeners.gprs]`` on the DTU port, ``[mqtt]``, one channel per
  terminal, every meter, one poll of ``--poll-quantities`` every ``--poll-interval`` seconds),
  checked with the config loader, before the document is printed: ``meterd run -c PATH`` then
  collects from every simulated meter.

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
     "config": "/abs/path/site.toml"}                # with --write-config, else null

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
import random
import signal
import sys
import tempfile
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from meterd.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from meterd.collector.heap import settle_heap
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

log = logging.getLogger(__name__)

DTU_FORMATS: Final = ("usr-ascii", "hex-frame")
DTU_PROTOCOLS: Final = ("dlt645", "modbus")
MQTT_PROTOCOLS: Final = ("dlt645-2007", "dlt645-1997", "modbus")
MAX_TERMINAL_METERS: Final = 247  # Modbus unit ids; the MQTT fleet's limit for every protocol
MAX_MQTT_TERMINALS: Final = 999  # T001..T999
MAX_DTUS: Final = 99_999_999  # DTU00000001..
DEFAULT_METERS_PER_TERMINAL: Final = 10
DEFAULT_DTU_CONNECT: Final = ("127.0.0.1", 9000)
DEFAULT_MQTT_BROKER: Final = ("127.0.0.1", 1883)
DEFAULT_POLL_QUANTITIES: Final = ("energy.active.import.total", "voltage.a")
DEFAULT_POLL_INTERVAL: Final = 60.0
DTU_ID_PREFIX: Final = "DTU"
PASSWORD: Final = next(f.default for f in fields(FleetSpec) if f.name == "password")  # the meters' default
_DTU_FILE_KEYS: Final = ("count", "meters", "format", "protocol", "host", "port", "heartbeat", "model")
_MQTT_FILE_KEYS: Final = ("count", "meters", "protocol", "host", "port", "root", "model")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "simulate",
        help="serve simulated DL/T 645 and Modbus meters on ptys and TCP ports, behind DTUs and MQTT terminals",
        description="Serve simulated DL/T 645-2007 / -1997 and Modbus meters on pseudo-terminals (real "
        "serial devices to pyserial) and TCP ports (like serial servers / DTUs / Modbus TCP gateways), "
        "or behind fleets of GPRS DTUs (dialling in to the master) and MQTT terminals (on a broker), "
        "until interrupted.",
    )
    p.add_argument("--pty", type=int, default=None, metavar="N",
                   help="DL/T 645 pty buses (default 1; 0 when terminals are simulated)")
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
                   help="meter turnaround in ms (default 20 on ptys, 0 on TCP and behind DTUs)")
    p.add_argument("--speed", type=float, default=1.0, metavar="X",
                   help="simulated seconds per real second (default 1; 60 = a minute per second)")
    p.add_argument("--start", default=None, metavar="ISO",
                   help="simulated start time, e.g. 2025-01-31T23:50 (default: now)")
    p.add_argument("--fault", action="append", default=[], metavar="ADDR:KIND[:PROB]",
                   help=f"inject a fault into a bus meter; KIND is one of {', '.join(ALL_FAULT_KINDS)} on DL/T 645 "
                   f"meters, {', '.join(MODBUS_ALL_FAULT_KINDS)} on Modbus meters (late:PROB:SECONDS, "
                   "exception:PROB:CODE) (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of loads and faults (default 0)")
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
    t.add_argument("--fleet-config", default=None, metavar="FILE",
                   help="TOML file describing the terminals: [dtus] count/meters/format/protocol/host/port, "
                   "[mqtt] count/meters/protocol/host/port; flags given here win")
    t.add_argument("--write-config", default=None, metavar="PATH",
                   help="write a meterd site config (listener, broker, a channel per terminal, every meter, "
                   "one poll) for the terminals started: meterd run -c PATH")
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
    return any(getattr(args, k, None) is not None for k in ("dtus", "mqtt_terminals", "fleet_config"))


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
        )
    except ConfigError as exc:
        raise ConfigError(problems + exc.problems) from None
    if problems:
        raise ConfigError(problems)
    return spec


# --- terminals -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TerminalSpec:
    """The DTUs and MQTT terminals to start (either count may be 0, not both)."""

    dtus: int = 0
    dtu_meters: int = DEFAULT_METERS_PER_TERMINAL
    dtu_host: str = DEFAULT_DTU_CONNECT[0]
    dtu_port: int = DEFAULT_DTU_CONNECT[1]
    dtu_format: str = "usr-ascii"
    dtu_protocol: str = "dlt645"
    dtu_model: str = "generic"
    dtu_heartbeat: float = 30.0
    dtu_reconnect: float = 1.0
    dtu_first_address: int = 1
    mqtt_terminals: int = 0
    mqtt_meters: int = DEFAULT_METERS_PER_TERMINAL
    mqtt_host: str = DEFAULT_MQTT_BROKER[0]
    mqtt_port: int = DEFAULT_MQTT_BROKER[1]
    mqtt_protocol: str = "dlt645-2007"
    mqtt_model: str = "generic"
    mqtt_root: str = "meterd"
    speed: float = 1.0
    start: datetime | None = None
    seed: int = 0
    turnaround: float = 0.0  # seconds, DTU replies

    def dtu_ids(self) -> list[str]:
        return [f"{DTU_ID_PREFIX}{i:08d}" for i in range(1, self.dtus + 1)]

    def dtu_fleet(self) -> dict[str, list[str]]:
        """DTU terminal id -> its meters' addresses (as :func:`~meterd.simulators.dtu.run_dtu_fleet` lays them out)."""
        n, first = self.dtu_meters, self.dtu_first_address
        return {tid: [f"{first + d * n + i:012d}" for i in range(n)] for d, tid in enumerate(self.dtu_ids())}

    def mqtt_fleet(self) -> dict[str, list[str]]:
        from meterd.simulators.mqtt_terminal import meter_address, terminal_id

        return {terminal_id(t): [meter_address(t, m) for m in range(1, self.mqtt_meters + 1)]
                for t in range(1, self.mqtt_terminals + 1)}

    @property
    def meters(self) -> int:
        return self.dtus * self.dtu_meters + self.mqtt_terminals * self.mqtt_meters

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.dtus:
            fleet = self.dtu_fleet()
            doc["dtus"] = {
                "connect": f"{self.dtu_host}:{self.dtu_port}", "host": self.dtu_host, "port": self.dtu_port,
                "format": self.dtu_format, "protocol": self.dtu_protocol, "heartbeat": self.dtu_heartbeat,
                "terminals": fleet,
                "units": {a: u for addresses in fleet.values() for u, a in enumerate(addresses, 1)}
                if self.dtu_protocol == "modbus" else {},
            }
            if self.dtu_protocol == "modbus":
                doc["dtus"]["model"] = self.dtu_model
        if self.mqtt_terminals:
            fleet = self.mqtt_fleet()
            doc["mqtt"] = {
                "broker": f"{self.mqtt_host}:{self.mqtt_port}", "host": self.mqtt_host, "port": self.mqtt_port,
                "root": self.mqtt_root, "protocol": self.mqtt_protocol, "terminals": fleet,
                "units": {a: u for addresses in fleet.values() for u, a in enumerate(addresses, 1)}
                if self.mqtt_protocol == "modbus" else {},
            }
            if self.mqtt_protocol == "modbus":
                doc["mqtt"]["model"] = self.mqtt_model
        return doc


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
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"--fleet-config {path}: file not found")
        return {}
    except (OSError, UnicodeDecodeError) as exc:
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
        if key not in ("dtus", "mqtt"):
            problems.append(f"{path}: {key}: unknown section; expected [dtus] and/or [mqtt]")
        elif not isinstance(value, dict):
            problems.append(f"{path}: {key}: must be a table ([{key}])")
        else:
            allowed = _DTU_FILE_KEYS if key == "dtus" else _MQTT_FILE_KEYS
            for k in value:
                if k not in allowed:
                    problems.append(f"{path}: {key}.{k}: unknown key; expected one of {', '.join(allowed)}")
            out[key] = value
    if not out and not problems:
        problems.append(f"--fleet-config {path}: describes no terminals: give [dtus] and/or [mqtt]")
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
    if dtus == 0 and n_mqtt == 0 and not (args.fleet_config and not tables):
        problems.append("--dtus/--mqtt-terminals: no terminals to simulate: give at least one DTU or MQTT terminal")

    values: dict[str, Any] = {}
    m = args.meters_per_terminal
    dtu_meters = pick.integer(*pick(m, "--meters-per-terminal", "dtus", "meters", DEFAULT_METERS_PER_TERMINAL),
                              1, MAX_TERMINAL_METERS)
    mqtt_meters = pick.integer(*pick(m, "--meters-per-terminal", "mqtt", "meters", DEFAULT_METERS_PER_TERMINAL),
                               1, MAX_TERMINAL_METERS)

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
    if first is not None and dtus and dtu_meters:
        last = first + dtus * dtu_meters - 1
        if last > 999_999_999_999:
            problems.append(f"--dtus: {dtus * dtu_meters} meters from {first:012d} run past 999999999999")
        elif n_mqtt and mqtt_meters:
            # MQTT meter m of terminal t is t * 10**6 + m: does the DTU range hold one?
            clash = next((t * 10**6 + 1 for t in range(1, n_mqtt + 1)
                          if first <= t * 10**6 + mqtt_meters and t * 10**6 + 1 <= last), None)
            if clash is not None:
                problems.append(f"--first-address: the DTU meters {first:012d}..{last:012d} overlap the MQTT "
                                f"meters (terminal t's meters are t*10^6+1..); start them elsewhere, e.g. "
                                f"--first-address 900000000001")
    if problems:
        raise ConfigError(problems)
    assert dtus is not None and n_mqtt is not None and dtu_meters is not None and mqtt_meters is not None
    assert first is not None
    return TerminalSpec(dtus=dtus, dtu_meters=dtu_meters, mqtt_terminals=n_mqtt, mqtt_meters=mqtt_meters,
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
    if not terminals_asked(args):
        problems.append("--write-config: describes terminals only: give --dtus and/or --mqtt-terminals "
                        "(or --fleet-config)")
        ok = False
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


def site_config(terms: TerminalSpec, site: SiteSpec) -> str:
    """The meterd site config (TOML) for ``terms``: a channel per terminal, every meter, one poll."""
    lines = [
        f"# meterd site config written by `meterd simulate --write-config` for {terms.meters} simulated meters:",
    ]
    if terms.dtus:
        lines.append(f"#   {terms.dtus} GPRS DTUs ({terms.dtu_format}) dialling {terms.dtu_host}:{terms.dtu_port}, "
                     f"{terms.dtu_meters} {terms.dtu_protocol} meters each")
    if terms.mqtt_terminals:
        lines.append(f"#   {terms.mqtt_terminals} MQTT terminals on the broker {terms.mqtt_host}:{terms.mqtt_port}, "
                     f"{terms.mqtt_meters} {terms.mqtt_protocol} meters each")
    lines += [f"# Run it with: meterd run -c {site.path}", "",
              "[store]", f"data_dir = {_toml_str(site.data_dir)}"]
    if terms.meters > 1000:
        # the writer stores one batch per trip through the event loop, and a loop busy with
        # thousands of meters makes few trips a second: bigger batches keep up with it
        lines.append(f"batch_size = {min(10_000, terms.meters // 2)}")
    lines.append("")
    if terms.dtus:
        loopback = terms.dtu_host in ("127.0.0.1", "localhost", "::1")
        lines += ["[listeners.gprs]", f"host = {_toml_str(terms.dtu_host if loopback else '0.0.0.0')}",
                  f"port = {terms.dtu_port}", f"formats = [{_toml_str(terms.dtu_format)}]",
                  f"heartbeat_timeout = {_duration(max(120.0, 4 * terms.dtu_heartbeat))}", ""]
    if terms.mqtt_terminals:
        lines += ["[mqtt]", f"host = {_toml_str(terms.mqtt_host)}", f"port = {terms.mqtt_port}",
                  f"client_id = {_toml_str(f'meterd-master-{site.path.stem}')}",
                  f"root = {_toml_str(terms.mqtt_root)}", ""]
    # a DTU that is still dialling when a round starts: the round waits that long for it (many
    # DTUs dialling in at once take a while to be let in)
    connect_wait = max(3.0, 3 * terms.dtu_reconnect, 0.01 * terms.dtus)
    dtus, mqtts = terms.dtu_fleet(), terms.mqtt_fleet()
    for tid in dtus:
        lines += [f"[channels.{tid}]",
                  f'dtu = {{ listener = "gprs", terminal = {_toml_str(tid)}, connect_wait = {_duration(connect_wait)} }}',
                  'response_timeout = "3s"', ""]
    for tid in mqtts:
        lines += [f"[channels.{tid}]", f"mqtt = {{ terminal = {_toml_str(tid)} }}", 'response_timeout = "3s"', ""]

    def meters(fleet: dict[str, list[str]], group: str, protocol: str, model: str) -> None:
        for tid, addresses in fleet.items():
            for unit, address in enumerate(addresses, 1):
                lines.extend(["[[meters]]", f'address = "{address}"', f"channel = {_toml_str(tid)}",
                              f'group = "{group}"'])
                if protocol != "dlt645-2007":
                    lines.append(f'protocol = "{protocol}"')
                if protocol == "modbus":
                    lines.extend([f"unit = {unit}", f"model = {_toml_str(model)}"])
                lines.append("")

    meters(dtus, "gprs", "modbus" if terms.dtu_protocol == "modbus" else "dlt645-2007", terms.dtu_model)
    meters(mqtts, "mqtt", terms.mqtt_protocol, terms.mqtt_model)
    lines += ["[[polls]]", 'name = "realtime"', f"interval = {_duration(site.poll_interval)}",
              "quantities = [" + ", ".join(_toml_str(q) for q in site.quantities) + "]", ""]
    return "\n".join(lines)


def check_quantities(terms: TerminalSpec, quantities: tuple[str, ...]) -> list[str]:
    """Problems if a kind of simulated meter cannot be asked for one of ``quantities``."""
    from meterd.protocols.readspec import resolve_dlt645

    kinds: dict[tuple[str, str], str] = {}
    if terms.dtus:
        kinds["modbus" if terms.dtu_protocol == "modbus" else "dlt645-2007", terms.dtu_model] = "DTU"
    if terms.mqtt_terminals:
        kinds.setdefault((terms.mqtt_protocol, terms.mqtt_model), "MQTT")
    problems = []
    for (protocol, model), where in kinds.items():
        if protocol == "modbus":
            regmap = get_map(model)
            missing = [q for q in quantities if q not in regmap]
            what = f"the {where} meters' register map {model} has no register for"
        else:
            _, missing = resolve_dlt645(quantities, (), edition=protocol)
            what = f"the {where} meters ({protocol}) have no identifier for"
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
    if site is not None and terminals is not None and (problems := check_quantities(terminals, site.quantities)):
        raise ConfigError(problems)
    plan = Plan(buses, terminals, site)
    if site is not None and terminals is not None:
        plan.site_text = site_config(terminals, site)
        check_site_config(plan.site_text, site)
    return plan


# --- running terminals ---------------------------------------------------------------------------

# paho's network loop uses select(), which cannot watch a descriptor >= 1024 (FD_SETSIZE), and each
# simulated MQTT terminal holds three (its socket and a wake-up socket pair): past ~330 terminals a
# process's terminals stop connecting.  So terminals beyond this many run in forked helper processes.
MQTT_TERMINALS_PER_PROCESS: Final = 250
_MQTT_COUNTERS: Final = ("requests", "replies", "silent", "expired")


def mqtt_shards(n: int, per_process: int | None = None) -> list[tuple[int, int]]:
    """(first terminal number, count) per process; the first one runs in the simulator itself."""
    per_process = per_process or MQTT_TERMINALS_PER_PROCESS
    return [(first, min(per_process, n - first + 1)) for first in range(1, n + 1, per_process)]


async def start_mqtt(spec: TerminalSpec, first: int, count: int, clock: Callable[[], datetime]) -> Any:
    """Terminals ``first``..``first + count - 1`` of the fleet (laid out as
    :func:`~meterd.simulators.mqtt_terminal.run_mqtt_fleet` does), connected; an ``MqttFleet``.
    ConnectionError (all closed again) if some do not connect."""
    from meterd.simulators.dlt645 import Dlt645Bus
    from meterd.simulators.modbus import ModbusBus
    from meterd.simulators.model import MeterModel
    from meterd.simulators.mqtt_terminal import MqttFleet, MqttTerminal, meter_address, terminal_id

    regmap = get_map(spec.mqtt_model) if spec.mqtt_protocol == "modbus" else None
    begin = clock()
    terminals: dict[str, MqttTerminal] = {}
    units: dict[str, dict[int, str]] = {}
    for t in range(first, first + count):
        tid = terminal_id(t)
        models = [MeterModel(meter_address(t, m), start=begin, seed=spec.seed * 1_000_003 + t * 1000 + m)
                  for m in range(1, spec.mqtt_meters + 1)]
        bus: Any
        if regmap is not None:
            bus = ModbusBus(dict(enumerate(models, 1)), regmap, framing="rtu", seed=spec.seed + t)
            units[tid] = bus.units
        else:
            old = {m.address: "dlt645-1997" for m in models} if spec.mqtt_protocol == "dlt645-1997" else None
            bus = Dlt645Bus(models, seed=spec.seed + t, protocols=old)
        terminals[tid] = MqttTerminal(tid, bus, spec.mqtt_host, spec.mqtt_port, clock=clock, root=spec.mqtt_root)
    fleet = MqttFleet(terminals, clock, spec.mqtt_protocol, units)
    timeout = max(10.0, 0.02 * count)
    up = await asyncio.gather(*(term.start(timeout) for term in terminals.values()))
    if not all(up):
        down = [tid for tid, ok in zip(terminals, up) if not ok]
        await fleet.close()
        raise ConnectionError(f"MQTT terminals not connected to {spec.mqtt_host}:{spec.mqtt_port} within "
                              f"{timeout:g} s: {', '.join(down[:10])}{' ...' if len(down) > 10 else ''}")
    return fleet


def mqtt_counters(fleet: Any) -> dict[str, int]:
    stats = [t.stats for t in fleet.terminals.values()]
    return {k: sum(getattr(s, k) for s in stats) for k in _MQTT_COUNTERS}


def _use_threads_for(n_terminals: int) -> None:
    """Each MQTT terminal's close() runs two blocking calls in a thread: not six at a time."""
    workers = min(128, n_terminals + 4)
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(workers, thread_name_prefix="sim"))


class MqttShard:
    """MQTT terminals in a forked helper process.  It says ``("up", None)`` or ``("error", text)``
    on the pipe, runs until told ``"stop"`` (or the pipe closes: the simulator is gone), then
    sends ``("stats", counters)``.  Fork it before the simulator starts threads or an event loop."""

    def __init__(self, spec: TerminalSpec, first: int, count: int, clock: Any) -> None:
        import multiprocessing

        self.first, self.count = first, count
        self.counters: dict[str, int] | None = None
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_shard_main, args=(spec, first, count, clock.start, clock.origin, child),
                                   name=f"meterd-simulate-mqtt-{first}", daemon=True)
        self.process.start()
        child.close()

    async def ready(self, timeout: float) -> None:
        if not await asyncio.to_thread(self.conn.poll, timeout):
            raise ConnectionError(f"MQTT terminals {self.first}..{self.first + self.count - 1}: "
                                  f"no word from their process within {timeout:g} s")
        try:
            kind, detail = self.conn.recv()
        except (EOFError, OSError):
            raise ConnectionError(f"MQTT terminals {self.first}..: their process died "
                                  f"(exit code {self.process.exitcode})") from None
        if kind != "up":
            raise ConnectionError(str(detail))

    async def stop(self, timeout: float = 30.0) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send("stop")
        deadline = asyncio.get_running_loop().time() + timeout
        while self.counters is None and asyncio.get_running_loop().time() < deadline:
            try:
                if not await asyncio.to_thread(self.conn.poll, 0.5):
                    if not self.process.is_alive():
                        break
                    continue
                kind, detail = self.conn.recv()
            except (EOFError, OSError, ValueError):
                break
            if kind == "stats":
                self.counters = detail
        await asyncio.to_thread(self.process.join, 5.0)
        if self.process.is_alive():
            self.process.kill()
            await asyncio.to_thread(self.process.join)
        self.conn.close()


def _shard_main(spec: TerminalSpec, first: int, count: int, start: datetime, origin: float, conn: Any) -> None:
    from meterd.simulators.serve import SimClock

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the simulator says stop
    clock = SimClock(start, spec.speed, origin)  # the same simulated time as the simulator's
    try:
        asyncio.run(_shard(spec, first, count, clock, conn))
    except Exception as exc:  # noqa: BLE001 -- told to the simulator
        with contextlib.suppress(OSError):
            conn.send(("error", f"MQTT terminals {first}..: {exc}"))


async def _shard(spec: TerminalSpec, first: int, count: int, clock: Any, conn: Any) -> None:
    loop = asyncio.get_running_loop()
    _use_threads_for(count)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        fleet = await start_mqtt(spec, first, count, clock)
    except Exception as exc:  # noqa: BLE001
        conn.send(("error", str(exc)))
        return
    settle_heap()
    conn.send(("up", None))

    def readable() -> None:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            message = "stop"
        if message == "stop":
            loop.remove_reader(conn.fileno())
            stop.set()

    loop.add_reader(conn.fileno(), readable)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(conn.fileno())
        await fleet.close()
        with contextlib.suppress(OSError):
            conn.send(("stats", mqtt_counters(fleet)))


@dataclass(slots=True)
class Terminals:
    """Running DTUs and MQTT terminals (the first MQTT shard here, the rest in ``shards``)."""

    spec: TerminalSpec
    dtus: list[Any] = field(default_factory=list)  # DtuSimulator
    mqtt: Any = None  # MqttFleet
    shards: list[MqttShard] = field(default_factory=list)
    dialers: list[asyncio.Task[None]] = field(default_factory=list)

    def start_dialling(self) -> None:
        """Each DTU dials the master until it gets through (staggered), then keeps its connection
        up by itself (``reconnect_delay``)."""
        rng = random.Random(self.spec.seed)
        spread = min(1.0, 0.002 * len(self.dtus))
        self.dialers = [asyncio.create_task(_dial(d, rng.random() * spread), name=f"dial {d.terminal_id}")
                        for d in self.dtus]

    async def close(self) -> None:
        for t in self.dialers:
            t.cancel()
        await asyncio.gather(*self.dialers, return_exceptions=True)
        await asyncio.gather(*(d.close() for d in self.dtus), *(s.stop() for s in self.shards),
                             *([self.mqtt.close()] if self.mqtt is not None else []), return_exceptions=True)

    def report(self) -> list[str]:
        lines = []
        if self.dtus:
            s = [d.stats for d in self.dtus]
            lines.append(f"dtus: {len(self.dtus)} DTUs, {sum(d.connected for d in self.dtus)} connected at the end, "
                         f"{sum(x.connections for x in s)} connections, {sum(x.connect_failures for x in s)} "
                         f"failed dials, {sum(x.requests for x in s)} requests, {sum(x.replies for x in s)} replies, "
                         f"{sum(x.heartbeats for x in s)} heartbeats")
        if self.mqtt is not None:
            c = mqtt_counters(self.mqtt)
            lost = [shard for shard in self.shards if shard.counters is None]
            for shard in self.shards:
                for k, v in (shard.counters or {}).items():
                    c[k] += v
            lines.append(f"mqtt: {self.spec.mqtt_terminals} terminals in {1 + len(self.shards)} process(es), "
                         f"{c['requests']} requests, {c['replies']} replies, {c['silent']} unanswered, "
                         f"{c['expired']} expired" + (f" (no counts from {len(lost)} process(es))" if lost else ""))
        return lines


async def _dial(dtu: Any, delay: float) -> None:
    await asyncio.sleep(delay)
    while True:
        try:
            await dtu.start()
            return
        except LinkError as exc:
            log.debug("%s; again in %g s", exc, dtu.reconnect_delay)
            await asyncio.sleep(dtu.reconnect_delay)


def build_dtus(spec: TerminalSpec, clock: Callable[[], datetime]) -> list[Any]:
    """The DTU simulators (not started), laid out as :func:`~meterd.simulators.dtu.run_dtu_fleet` does."""
    from meterd.simulators.dlt645 import Dlt645Bus
    from meterd.simulators.dtu import DtuSimulator
    from meterd.simulators.modbus import ModbusBus
    from meterd.simulators.model import MeterModel

    regmap = get_map(spec.dtu_model) if spec.dtu_protocol == "modbus" else None
    begin = clock()
    out = []
    for d, (tid, addresses) in enumerate(spec.dtu_fleet().items()):
        models = [MeterModel(a, start=begin, seed=spec.seed * 1_000_003 + d * spec.dtu_meters + i)
                  for i, a in enumerate(addresses)]
        bus: Any
        if regmap is not None:
            bus = ModbusBus({u: m for u, m in enumerate(models, 1)}, regmap, framing="rtu", seed=spec.seed * 7919 + d)
        else:
            bus = Dlt645Bus(models, seed=spec.seed * 7919 + d)
        out.append(DtuSimulator(tid, bus, spec.dtu_host, spec.dtu_port, spec.dtu_format,
                                heartbeat=spec.dtu_heartbeat, clock=clock, turnaround=spec.turnaround,
                                reconnect_delay=spec.dtu_reconnect))
    return out


def fork_shards(spec: TerminalSpec, clock: Any) -> list[MqttShard]:
    """Helper processes for the MQTT terminals past the first :data:`MQTT_TERMINALS_PER_PROCESS`
    (call before any thread or event loop exists)."""
    return [MqttShard(spec, first, count, clock) for first, count in mqtt_shards(spec.mqtt_terminals)[1:]]


async def start_terminals(spec: TerminalSpec, clock: Any, shards: list[MqttShard] | None = None) -> Terminals:
    """Build the DTUs (they dial once :meth:`Terminals.start_dialling` is called) and start the
    MQTT terminals: the first shard here, the rest already forked in ``shards`` (ConnectionError
    if the broker cannot be reached)."""
    terms = Terminals(spec, build_dtus(spec, clock), shards=list(shards or []))
    if spec.mqtt_terminals:
        first, count = mqtt_shards(spec.mqtt_terminals)[0]
        results = await asyncio.gather(start_mqtt(spec, first, count, clock),
                                       *(s.ready(max(30.0, 0.05 * s.count)) for s in terms.shards),
                                       return_exceptions=True)
        if not isinstance(results[0], BaseException):
            terms.mqtt = results[0]
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await terms.close()
            raise failed[0]
    return terms


def _raise_fd_limit(wanted: int) -> None:
    """A DTU takes a socket, an MQTT terminal three descriptors: lift the soft limit if need be."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            new = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            if new < wanted:
                log.warning("open files limited to %d; the terminals may need %d", new, wanted)
    except (ImportError, ValueError, OSError):
        pass


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
    if doc.get("config"):
        lines.append(f"config: {doc['config']} (meterd run -c {doc['config']})")
    return lines


def format_table(doc: dict[str, Any]) -> str:
    lines = []
    if doc["buses"] or not (doc.get("dtus") or doc.get("mqtt")):
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


def document(fleet: Fleet | None, terms: Terminals | None, plan: Plan, clock: Any) -> dict[str, Any]:
    if fleet is not None:
        doc = fleet.as_dict()
    else:
        seed = plan.terminals.seed if plan.terminals is not None else 0
        doc = {"start": clock.start.isoformat(), "speed": clock.speed, "seed": seed, "password": PASSWORD,
               "buses": [], "faults": {}, "stuck_relays": []}
    if terms is not None:
        doc.update(terms.spec.as_dict())
        doc["config"] = str(plan.site.path) if plan.site is not None else None
    return doc


# --- serving -------------------------------------------------------------------------------------


async def _wait_for_stop(duration: float | None) -> None:
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
            except TimeoutError:
                pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def serve(spec: FleetSpec, *, as_json: bool, duration: float | None) -> Fleet:
    """The buses alone (as before terminals existed)."""
    fleet, _ = await serve_plan(Plan(spec, None), as_json=as_json, duration=duration)
    assert fleet is not None
    return fleet


async def serve_plan(
    plan: Plan,
    *,
    as_json: bool,
    duration: float | None,
    clock: Any = None,
    shards: list[MqttShard] | None = None,
) -> tuple[Fleet | None, Terminals | None]:
    """Start what ``plan`` says, print the document, serve until stopped.  ``clock`` and ``shards``
    (MQTT terminals in helper processes, see :func:`fork_shards`) come from :func:`run`."""
    fleet: Fleet | None = None
    terms: Terminals | None = None
    if plan.terminals is not None and plan.terminals.mqtt_terminals:
        _use_threads_for(min(plan.terminals.mqtt_terminals, MQTT_TERMINALS_PER_PROCESS))
    try:
        if plan.buses is not None:
            fleet = await run_fleet(plan.buses)
            clock = clock or fleet.clock
        if plan.terminals is not None:
            t = plan.terminals
            _raise_fd_limit(t.dtus + 3 * min(t.mqtt_terminals, MQTT_TERMINALS_PER_PROCESS) + 256)
            if clock is None:
                from meterd.simulators.serve import SimClock

                clock = SimClock.starting(t.start, t.speed)
            terms = await start_terminals(t, clock, shards)
        settle_heap()  # the meters' models live as long as the simulator: out of the collector's way
        if plan.site is not None and plan.site_text is not None:
            write_site_config(plan.site.path, plan.site_text)
        doc = document(fleet, terms, plan, clock)
        print(json.dumps(doc) if as_json else format_table(doc), flush=True)
        if terms is not None:
            terms.start_dialling()
        await _wait_for_stop(duration)
    finally:
        if terms is not None:
            await terms.close()
        elif shards:
            await asyncio.gather(*(s.stop() for s in shards), return_exceptions=True)
        if fleet is not None:
            await fleet.close()
    return fleet, terms


def run(args: argparse.Namespace) -> int:
    try:
        plan = plan_from_args(args)
    except ConfigError as exc:
        print(f"meterd simulate: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    clock = None
    shards: list[MqttShard] = []
    if plan.terminals is not None:
        from meterd.simulators.serve import SimClock

        clock = SimClock.starting(plan.terminals.start, plan.terminals.speed)
        shards = fork_shards(plan.terminals, clock)  # before any thread or event loop
    try:
        fleet, terms = asyncio.run(serve_plan(plan, as_json=args.json, duration=args.duration, clock=clock,
                                              shards=shards))
    except (LinkError, ConnectionError, OSError) as exc:
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
