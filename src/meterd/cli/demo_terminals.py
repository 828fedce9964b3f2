"""The demo's terminals: a Q/GDW 1376.1 concentrator, a GPRS DTU and an MQTT terminal, each with
meters behind it, dialling in to (or publishing for) the demo's daemon like field terminals do.

- concentrator ``4401-0001`` (:mod:`meterd.simulators.concentrator`) with four DL/T 645-2007 meters
  (``000000000101``..``104``, pn 1..4) that it collects every simulated minute; the master reads
  what it collected (AFN 0C F129 / F25).  It starts with an archive that lacks pn 4 (a meter
  installed since), so at login the master downloads the archive (AFN 04 F10) and the concentrator
  records ERC3 (参数变更): an anomaly ``terminal.erc3``.  :data:`CUT_AFTER` seconds in, meter
  ``000000000103`` loses its supply: the concentrator's next collection gets no answer from it and
  it reports ERC31 (485抄表失败), an open anomaly ``terminal.erc31`` of that meter;
- DTU ``DTU00000001`` (:mod:`meterd.simulators.dtu`, USR ASCII registration) with three meters
  (``000000000201``..``203``) behind it, on the listener ``gprs`` (started once the daemon
  listens: a simulated DTU's first dial must get through);
- MQTT terminal ``T001`` (:mod:`meterd.simulators.mqtt_terminal`) with two meters
  (``000001000001``, ``000001000002``) on a Mosquitto broker the demo starts on a free port -- when
  ``mosquitto`` is installed; else the demo says so and runs without it.

Every simulator shares the demo fleet's start and speed, so their meters' clocks agree with the
buses'.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

from meterd.errors import LinkError
from meterd.ports import free_port
from meterd.simulators.concentrator import ConcentratorFleet, run_concentrator_fleet
from meterd.simulators.dtu import DtuFleet, run_dtu_fleet
from meterd.simulators.mqtt_terminal import MqttFleet, run_mqtt_fleet

CONCENTRATOR: Final = "4401-0001"
CONCENTRATOR_FIRST: Final = "000000000101"
CONCENTRATOR_METERS: Final = 4
NEW_PN: Final = 4  # not in the concentrator's archive at the start: the master downloads it
CUT_METER: Final = "000000000103"  # loses its supply CUT_AFTER seconds in: ERC31
CUT_AFTER: Final = 5.0
DTU_ID: Final = "DTU00000001"
DTU_FIRST: Final = "000000000201"
DTU_METERS: Final = 3
MQTT_METERS: Final = 2
GROUP: Final = "terminals"


class Broker:
    """A Mosquitto broker of the demo's own on ``port`` (loopback, anonymous, TCP_NODELAY)."""

    def __init__(self, binary: str, workdir: Path, port: int) -> None:
        self.port = port
        self.config = workdir / "mosquitto.conf"
        self.config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
                               "persistence false\nlog_dest stderr\n")
        self.process = subprocess.Popen([binary, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)

    async def ready(self, timeout: float = 5.0) -> bool:
        for _ in range(int(timeout / 0.05)):
            if self.process.poll() is not None:
                return False
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return True
            await asyncio.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class DemoTerminals:
    concentrators: ConcentratorFleet
    dtus: DtuFleet | None = None  # started once the daemon listens (:meth:`dial_dtus`)
    mqtt: MqttFleet | None = None
    broker: Broker | None = None
    gdw_port: int = 0
    dtu_port: int = 0
    meters: dict[str, list[str]] = field(default_factory=dict)  # channel -> meters

    def config_lines(self) -> list[str]:
        """Listeners, broker, channels and meters for the demo's config."""
        lines = ["[listeners.gdw1376]", 'protocol = "gdw1376"', 'host = "127.0.0.1"', f"port = {self.gdw_port}",
                 'heartbeat_timeout = "2m"', "",
                 "[listeners.gprs]", 'host = "127.0.0.1"', f"port = {self.dtu_port}", 'formats = ["usr-ascii"]',
                 'heartbeat_timeout = "2m"', ""]
        if self.broker is not None:
            lines += ["[mqtt]", 'host = "127.0.0.1"', f"port = {self.broker.port}", 'client_id = "meterd-demo"', ""]
        lines += [(f'[channels.gw1]\ngdw1376 = {{ listener = "gdw1376", terminal = "{CONCENTRATOR}", '
                  'connect_wait = "3s" }\nresponse_timeout = "3s"\nretries = 0\n'),
                  (f'[channels.dtu1]\ndtu = {{ listener = "gprs", terminal = "{DTU_ID}", connect_wait = "3s" }}\n'
                  'response_timeout = "2s"\nretries = 0\n')]
        if self.mqtt is not None:
            lines += ['[channels.mqtt1]\nmqtt = { terminal = "T001" }\nresponse_timeout = "2s"\nretries = 0\n']
        for pn, address in enumerate(self.meters["gw1"], 1):
            lines += ["[[meters]]", f'address = "{address}"', 'channel = "gw1"', f"pn = {pn}", f'group = "{GROUP}"', ""]
        for channel in ("dtu1", "mqtt1"):
            for address in self.meters.get(channel, []):
                lines += ["[[meters]]", f'address = "{address}"', f'channel = "{channel}"', f'group = "{GROUP}"', ""]
        return lines

    def describe(self) -> list[str]:
        out = [(f"terminals: concentrator {CONCENTRATOR} (Q/GDW 1376.1, meters {', '.join(self.meters['gw1'])}; "
               f"{CUT_METER} loses power {CUT_AFTER:g} s in), DTU {DTU_ID} (meters {', '.join(self.meters['dtu1'])})")]
        if self.mqtt is not None:
            out.append(f"           MQTT terminal T001 on the demo's broker 127.0.0.1:{self.broker.port if self.broker else '?'} "
                       f"(meters {', '.join(self.meters['mqtt1'])})")
        return out

    async def cut(self, say: Callable[[str], None], stop: asyncio.Event) -> None:
        """The story: a meter behind the concentrator loses its supply (ERC31 follows)."""
        try:
            await asyncio.wait_for(stop.wait(), CUT_AFTER)
            return
        except TimeoutError:
            pass
        sim = self.concentrators.concentrator(CONCENTRATOR)
        sim.terminal.bus.meter(CUT_METER).power_down(self.concentrators.clock())
        say(f"meter {CUT_METER} behind concentrator {CONCENTRATOR} loses its supply: the concentrator's next "
            "collection gets no answer and it reports ERC31 (终端485抄表失败) -> anomaly terminal.erc31 "
            f"(meterd anomalies --data-dir ...)")

    async def dial_dtus(self, speed: float, start: datetime, stop: asyncio.Event, *, seed: int = 7) -> None:
        """Start the DTU once the daemon's listener takes connections (a simulated DTU's first dial
        must reach it), trying for as long as the demo runs."""
        while not stop.is_set():
            try:
                self.dtus = await run_dtu_fleet(1, DTU_METERS, "127.0.0.1", self.dtu_port, first_address=DTU_FIRST,
                                                speed=speed, start=start, seed=seed, reconnect_delay=0.5)
                return
            except (LinkError, OSError):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.3)

    async def close(self) -> None:
        fleets = [f for f in (self.concentrators, self.dtus, self.mqtt) if f is not None]
        await asyncio.gather(*(f.close() for f in fleets), return_exceptions=True)
        if self.broker is not None:
            self.broker.stop()


async def start_terminals(workdir: Path, start: datetime, speed: float, *, seed: int = 7) -> DemoTerminals:
    """Start the simulators (they dial the listeners the demo's config will open on the ports chosen
    here; until the daemon runs they keep dialling)."""
    gdw_port, dtu_port = free_port(), free_port()
    concentrators = await run_concentrator_fleet(1, CONCENTRATOR_METERS, "127.0.0.1", gdw_port,
                                                 first_address=CONCENTRATOR_FIRST, collect_interval=timedelta(minutes=1),
                                                 speed=speed, start=start, seed=seed, reconnect_delay=0.5,
                                                 heartbeat=30.0)
    terminal = concentrators.concentrator(CONCENTRATOR).terminal
    terminal.archive = {seq: e for seq, e in terminal.archive.items() if e.pn != NEW_PN}
    terminal.set_archive([])  # its points follow the archive: pn 4 is not collected until downloaded
    terms = DemoTerminals(concentrators, gdw_port=gdw_port, dtu_port=dtu_port)
    terms.meters["gw1"] = [a for a, _ in concentrators.meters[CONCENTRATOR]]
    terms.meters["dtu1"] = [f"{int(DTU_FIRST) + i:012d}" for i in range(DTU_METERS)]  # as run_dtu_fleet numbers them
    binary = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
                                                if Path(p).exists()), None)
    if binary is None:
        print("meterd demo: mosquitto is not installed: the demo runs without its MQTT terminal "
              "(apt-get install mosquitto)", file=sys.stderr)
        return terms
    broker = Broker(binary, workdir, free_port())
    if not await broker.ready():
        broker.stop()
        print("meterd demo: mosquitto did not start: the demo runs without its MQTT terminal", file=sys.stderr)
        return terms
    try:
        terms.mqtt = await run_mqtt_fleet(1, MQTT_METERS, "127.0.0.1", broker.port, speed=speed, start=start,
                                          seed=seed, timeout=5.0)
    except (ConnectionError, OSError) as exc:
        broker.stop()
        print(f"meterd demo: the MQTT terminal did not connect ({exc}): the demo runs without it", file=sys.stderr)
        return terms
    terms.broker = broker
    terms.meters["mqtt1"] = list(terms.mqtt.addresses("T001"))
    return terms
