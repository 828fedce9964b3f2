"""``meterd demo``: a simulated district polled by the real daemon, readings shown as they arrive.

The district: two RS-485 buses on pseudo-terminals (2400 8E1, with wire time, like real
buses) and two serial servers on TCP ports, each with a handful of DL/T 645 meters -- most speak
DL/T 645-2007, two old ones on the first bus DL/T 645-1997 -- plus a Modbus RTU bus (pty, 9600
8N1) and a Modbus TCP gateway of commercial meters.  Energy registers move (the simulated clock
runs 60x faster than real time so the numbers move visibly).  One meter never answers and one
garbles its replies, so failures show up too.  Every meter is polled by the same quantity names;
each is asked in its own protocol and the readings cannot tell them apart.

The demo writes the config it generated next to its store (``<data-dir>/demo.toml``) so an
operator can look at it, and everything the daemon read can be listed afterwards with
``meterd readings --meter ADDR --data-dir <data-dir>``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from meterd.cli.common import EXIT_OK, format_value
from meterd.collector.daemon import Daemon, describe_plan
from meterd.collector.poll import RoundResult
from meterd.config.loader import parse_config
from meterd.simulators.fleet import FleetSpec, run_fleet
from meterd.storage.sqlite import SqliteStore

DEMO_QUANTITIES = [
    "energy.active.import.total",
    "energy.active.import.rate2",
    "energy.active.import.rate4",
    "voltage.a",
    "current.a",
    "power.active.total",
]
LEGACY_METERS = ("000000000003", "000000000004")  # DL/T 645-1997 meters on the first bus
GROUPS = {"dlt645-2007": "smart", "dlt645-1997": "legacy", "modbus": "ci"}
SHOWN = [
    ("energy.active.import.total", "energy kWh"),
    ("energy.active.import.rate2", "peak kWh"),
    ("energy.active.import.rate4", "valley kWh"),
    ("voltage.a", "Ua V"),
    ("current.a", "Ia A"),
    ("power.active.total", "P kW"),
    ("relay.open", "relay"),
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the daemon against a simulated district")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
    p.add_argument("--data-dir", default="meterd-data", help="where the demo keeps its store (default ./meterd-data)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between poll rounds (default 5)")
    p.set_defaults(func=run)


def demo_config(fleet, data_dir: Path, interval: float) -> str:
    lines = ["[store]", f'data_dir = "{data_dir.resolve()}"', 'flush_interval = "1s"', ""]
    for i, bus in enumerate(fleet.buses):
        name = f"{'mb' if bus.protocol == 'modbus' else ''}{bus.kind}{i + 1}"
        if bus.kind == "pty":
            line = bus.running.line
            lines += [f"[channels.{name}]",
                      f'serial = {{ device = "{bus.endpoint}", baud = {line.baud}, parity = "{line.parity}" }}',
                      'response_timeout = "1s"', 'inter_byte_timeout = "200ms"', "retries = 1", ""]
        else:
            host, _, port = bus.endpoint.rpartition(":")
            lines += [f"[channels.{name}]", f'tcp = {{ host = "{host}", port = {port} }}',
                      'response_timeout = "500ms"', "retries = 1"]
            if bus.framing:
                lines.append(f'framing = "{bus.framing}"')
            lines.append("")
        units = dict(zip(bus.meters, bus.units))
        for address, protocol in bus.protocols.items():
            lines += ["[[meters]]", f'address = "{address}"', f'channel = "{name}"', f'protocol = "{protocol}"',
                      f'group = "{GROUPS[protocol]}"', f"ct = {1 if bus.kind == 'pty' else 20}"]
            if protocol == "modbus":
                lines += [f"unit = {units[address]}", f'model = "{bus.model}"']
            lines.append("")
    lines += ["[[polls]]", 'name = "realtime"', f"interval = {interval}",
              "quantities = [" + ", ".join(f'"{q}"' for q in DEMO_QUANTITIES) + "]", ""]
    # DL/T 645-1997 has no relay state to read: the relay poll goes to the other meters
    lines += ["[[polls]]", 'name = "relay"', f"interval = {interval}", 'groups = ["smart", "ci"]',
              'quantities = ["relay.open"]', ""]
    return "\n".join(lines)


class RoundPrinter:
    """One line per meter and round, with the latest value of each column from any poll."""

    def __init__(self) -> None:
        self.header_done = False
        self.latest: dict[str, dict[str, object]] = defaultdict(dict)

    def __call__(self, result: RoundResult) -> None:
        by_meter = self.latest
        for r in result.readings:
            by_meter[r.meter][r.quantity] = r.value
        failed: dict[str, str] = {}
        for a in result.attempts:
            if a.outcome != "ok":
                failed.setdefault(a.meter, a.outcome)
        stamp = datetime.now().strftime("%H:%M:%S")
        if not self.header_done:
            print(f"{'time':<8} {'channel':<6} {'meter':<12} " + " ".join(f"{h:>11}" for _, h in SHOWN))
            self.header_done = True
        meters = sorted({r.meter for r in result.readings} | set(failed))
        for m in meters:
            if m in by_meter and m not in failed:
                cells = []
                for q, _ in SHOWN:
                    v = by_meter[m].get(q, "-")
                    if q == "relay.open":
                        v = "open" if v is True else "closed" if v is False else "-"
                    cells.append(f"{format_value(v) if not isinstance(v, str) else v:>11}")
                print(f"{stamp:<8} {result.channel:<6} {m:<12} " + " ".join(cells))
            else:
                print(f"{stamp:<8} {result.channel:<6} {m:<12} {'FAILED: ' + failed[m]:>11}")
        sys.stdout.flush()


async def run_demo(data_dir: Path, duration: float | None, interval: float) -> dict[str, object]:
    spec = FleetSpec(
        pty_buses=2,
        tcp_buses=2,
        meters_per_bus=4,
        modbus_pty_buses=1,
        modbus_tcp_buses=1,
        v1997=LEGACY_METERS,
        speed=60.0,
        faults={"000000000012": "no_answer", "000000000016": "garble"},
        seed=7,
    )
    fleet = await run_fleet(spec)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        text = demo_config(fleet, data_dir, interval)
        (data_dir / "demo.toml").write_text(text)
        import tomllib

        config = parse_config(tomllib.loads(text), source=str(data_dir / "demo.toml"), base_dir=data_dir)
        print(f"meterd demo: {len(config.meters)} simulated meters on {len(config.channels)} channels "
              f"(config: {data_dir / 'demo.toml'}, store: {data_dir})")
        print("meter 000000000012 never answers and 000000000016 garbles its replies, to show failures; "
              f"{' and '.join(LEGACY_METERS)} speak DL/T 645-1997; the mb* channels are Modbus meters.")
        with SqliteStore(config.store.data_dir) as store:
            daemon = Daemon(config, store, on_round=RoundPrinter())
            for line in describe_plan(daemon.plan):
                print("plan:", line)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            if duration is not None:
                loop.call_later(duration, stop.set)
            await daemon.run(stop)
            stats = daemon.stats()
            total = store.count_readings()
        print(f"stored {total} readings in {data_dir}; try: meterd readings --meter 000000000001 "
              f"--data-dir {data_dir} --since -10m")
        return stats
    finally:
        await fleet.close()


def run(args: argparse.Namespace) -> int:
    stats = asyncio.run(run_demo(Path(args.data_dir), args.duration, args.interval))
    for name, s in stats.items():
        print(f"channel {name}: {s}")
    return EXIT_OK
