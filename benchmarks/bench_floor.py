"""The floor under the daemon's CPU per read: what asyncio over TCP, paho-mqtt and the SQLite store
cost per read on their own, with no meterd polling code between them.

``bench_terminals.py`` measures the daemon's CPU per read on a fleet of DTUs (a TCP connection
each: one request written, one reply read per read) and MQTT terminals (paho-mqtt: a QoS 1
request published, its PUBACK and a QoS 0 reply received per read), with every reading and its
attempt written to the SQLite store.  This measures the three parts the daemon cannot do without,
each alone, in this process, while the other end runs in another process (its CPU is not counted):

* ``tcp``: ``--connections`` asyncio connections over loopback to an echo process, each doing one
  request/reply at a time with a response timer (``call_later``, cancelled on the reply), as a DTU
  channel does.  The client's CPU per exchange, user and system (a loopback send runs the receiving
  side's TCP work in the sender's system time).
* ``paho``: one paho-mqtt client keeping ``--terminals`` requests in flight through a Mosquitto
  broker (``tests/mosquitto.py``) to a responder process that answers each on the reply topic; the
  request is published at QoS 0 (``--request-qos``; the daemon's ``DOWN_QOS``) and the reply comes
  at QoS 0, as the daemon's do, and each reply's JSON is parsed.  The client is driven the way the daemon drives its hub's, the cheapest
  way meterd has (``collector/transports/paho_loop``: paho's external-loop interface in the event
  loop, buffered reads, one write per loop iteration), not paho's own ``loop_start`` thread, which
  costs more.  The client's CPU per exchange.
* ``store``: :class:`~meterd.storage.SqliteStore` writing readings and attempts in batches of
  ``--batch`` (the BatchWriter's default), ``--meters`` meters x 2 quantities a round as on the
  terminal fleet: one Reading and one Attempt made and written per read.

The floor of the terminal fleet (half DTU, half MQTT reads) is then ``(tcp + paho) / 2 + store``:
the daemon cannot go below it without leaving one of these behind.  Prints numbers; it is not a
pass/fail test.

    python benchmarks/bench_floor.py [--seconds 8] [--connections 500] [--terminals 500]
                                     [--meters 10000] [--rounds 20] [--batch 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import paho.mqtt.client as mqtt

from meterd.collector.mqtt import DOWN_QOS
from meterd.collector.transports.paho_loop import PahoDriver, new_client
from meterd.readings import Quality, Reading
from meterd.storage import Attempt, SqliteStore
from mosquitto import Mosquitto

TICK = os.sysconf("SC_CLK_TCK")
# a DL/T 645-2007 read request (FE preamble) and its reply: the sizes a DTU read moves
REQUEST = bytes.fromhex("fefefefe68111111111111681104333334336f16")
REPLY = bytes.fromhex("fefefefe681111111111116891083333343337343333d616")


def self_cpu() -> tuple[float, float]:
    """This process's user and system CPU seconds (all threads)."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


class Window:
    """Counts exchanges and this process's CPU between ``open()`` and ``close()``."""

    def __init__(self) -> None:
        self.on = False
        self.count = 0
        self.cpu = (0.0, 0.0)
        self.wall = 0.0

    def open(self) -> None:
        self.count = 0
        self._cpu0, self._t0 = self_cpu(), time.perf_counter()
        self.on = True

    def close(self) -> None:
        self.on = False
        u, s = self_cpu()
        self.cpu = (u - self._cpu0[0], s - self._cpu0[1])
        self.wall = time.perf_counter() - self._t0

    def line(self, what: str) -> float:
        n = max(1, self.count)
        user, system = self.cpu[0] / n * 1e6, self.cpu[1] / n * 1e6
        print(f"  {what:<6} {self.count / self.wall:9,.0f} exchanges/s; CPU per exchange {user + system:6.1f} us "
              f"(user {user:.1f}, system {system:.1f})")
        return user + system


# --- tcp -------------------------------------------------------------------------------------------

ECHO_SERVER = textwrap.dedent("""
    import asyncio, sys
    REPLY = bytes.fromhex(sys.argv[1])
    class Echo(asyncio.Protocol):
        def connection_made(self, t): self.t = t
        def data_received(self, data): self.t.write(REPLY)
    async def main():
        server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0, backlog=4096)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
""")


class _Client(asyncio.Protocol):
    __slots__ = ("transport", "waiter")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(data)


async def _tcp(args: argparse.Namespace, port: int, window: Window) -> None:
    loop = asyncio.get_running_loop()
    clients = []
    for _ in range(args.connections):
        _, proto = await loop.create_connection(_Client, "127.0.0.1", port)
        clients.append(proto)
    stop = False

    async def run(c: _Client) -> None:
        assert c.transport is not None
        while not stop:
            c.waiter = fut = loop.create_future()
            timer = loop.call_later(5.0, fut.cancel)
            c.transport.write(REQUEST)
            await fut
            timer.cancel()
            if window.on:
                window.count += 1

    tasks = [asyncio.create_task(run(c)) for c in clients]
    await asyncio.sleep(2.0)  # warm-up
    window.open()
    await asyncio.sleep(args.seconds)
    window.close()
    stop = True
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in clients:
        if c.transport is not None:
            c.transport.close()


def tcp_floor(args: argparse.Namespace) -> float:
    server = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, REPLY.hex()], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        window = Window()
        asyncio.run(_tcp(args, port, window))
        return window.line("tcp")
    finally:
        server.kill()
        server.wait()


# --- paho ------------------------------------------------------------------------------------------

RESPONDER = textwrap.dedent("""
    import sys
    import paho.mqtt.client as mqtt
    port, reply = int(sys.argv[1]), sys.argv[2].encode()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="floor-responder")
    def on_connect(client, userdata, flags, reason, properties):
        client.subscribe("floor/down/+", qos=1)
    def on_subscribe(client, userdata, mid, reasons, properties):
        print("ready", flush=True)
    def on_message(client, userdata, msg):
        client.publish("floor/up/" + msg.topic.rsplit("/", 1)[1], reply, qos=0)
    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.connect("127.0.0.1", port)
    c.loop_forever()
""")
# payloads of the sizes the daemon's requests and replies have (protocols/terminal/mqtt.py)
MQTT_REQUEST = (b'{"type":"request","id":"a1b2c3d4-1f3e","meter":"000000000001","protocol":"dlt645-2007",'
                b'"frame":"68010000000000681104333334336f16","sent":"2026-12-07T10:00:00.000Z",'
                b'"expires":"2026-12-07T10:00:30.000Z"}')
MQTT_REPLY = ('{"type":"reply","id":"a1b2c3d4-1f3e","frame":"6801000000000068910833333433373433336b16",'
              '"replied":"2026-12-07T10:00:00.120Z"}')


async def _paho(args: argparse.Namespace, port: int, window: Window) -> None:
    subscribed = asyncio.Event()
    stop = False
    client = new_client("floor-master")

    def on_connect(c: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        c.subscribe("floor/up/+", qos=0)

    def on_subscribe(c: mqtt.Client, userdata: object, mid: int, reasons: object, props: object) -> None:
        subscribed.set()

    def on_message(c: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        json.loads(msg.payload)  # every reply is parsed
        if window.on:
            window.count += 1
        if not stop:
            c.publish("floor/down/" + msg.topic.rsplit("/", 1)[1], MQTT_REQUEST, qos=args.request_qos)

    client.on_subscribe, client.on_message = on_subscribe, on_message
    driver = PahoDriver(client, "127.0.0.1", port, 60, on_connect=on_connect)
    driver.start()
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        for t in range(args.terminals):
            client.publish(f"floor/down/t{t}", MQTT_REQUEST, qos=args.request_qos)
        await asyncio.sleep(2.0)  # warm-up
        window.open()
        await asyncio.sleep(args.seconds)
        window.close()
        stop = True
    finally:
        client.disconnect()
        await driver.stop()


def paho_floor(args: argparse.Namespace) -> float:
    window = Window()
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp, Mosquitto(Path(tmp)) as broker:
        responder = subprocess.Popen([sys.executable, "-c", RESPONDER, str(broker.port), MQTT_REPLY],
                                     stdout=subprocess.PIPE, text=True)
        try:
            assert responder.stdout is not None
            if responder.stdout.readline().strip() != "ready":
                raise SystemExit("the MQTT responder did not start")
            asyncio.run(_paho(args, broker.port, window))
        finally:
            responder.kill()
            responder.wait()
    return window.line("paho")


# --- store -----------------------------------------------------------------------------------------

def store_floor(args: argparse.Namespace) -> float:
    meters = [f"{i:012d}" for i in range(args.meters)]
    quantities = ("energy.active.import.total", "voltage.a")
    start = datetime(2026, 12, 1, tzinfo=UTC)
    window = Window()
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        store = SqliteStore(Path(tmp))
        try:
            readings: list[Reading] = []
            attempts: list[Attempt] = []
            window.open()
            for n in range(args.rounds):
                now = start + timedelta(seconds=2 * n)
                for m in meters:
                    for q in quantities:
                        readings.append(Reading(m, q, now, Decimal("1234.56"), "kWh", Quality.GOOD))
                        attempts.append(Attempt(m, "dtu-1", q, now, "ok", 0.02, ""))
                        window.count += 1
                        if len(readings) >= args.batch:
                            store.write_readings(readings)
                            store.record_attempts(attempts)
                            readings, attempts = [], []
            if readings:
                store.write_readings(readings)
                store.record_attempts(attempts)
            window.close()
        finally:
            store.close()
    return window.line("store")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="each network window (default 8)")
    ap.add_argument("--connections", type=int, default=500, help="TCP connections, as DTUs (default 500)")
    ap.add_argument("--terminals", type=int, default=500, help="MQTT requests in flight (default 500)")
    ap.add_argument("--meters", type=int, default=10_000, help="meters a store round writes (default 10,000)")
    ap.add_argument("--rounds", type=int, default=20, help="store rounds of --meters x 2 reads (default 20)")
    ap.add_argument("--batch", type=int, default=500, help="readings per store batch (default 500)")
    ap.add_argument("--request-qos", type=int, choices=(0, 1), default=DOWN_QOS,
                    help=f"QoS of the MQTT requests (default {DOWN_QOS}, the daemon's)")
    ap.add_argument("--only", choices=("tcp", "paho", "store"), help="measure one part")
    args = ap.parse_args()
    print(f"floor per read, this process's CPU only ({os.cpu_count()} cores; the other end runs elsewhere)")
    got = {}
    for name, fn in (("tcp", tcp_floor), ("paho", paho_floor), ("store", store_floor)):
        if args.only in (None, name):
            got[name] = fn(args)
    if len(got) == 3:
        floor = (got["tcp"] + got["paho"]) / 2 + got["store"]
        print(f"  terminal fleet floor (half DTU, half MQTT reads): (tcp + paho) / 2 + store = {floor:.1f} us per read")


if __name__ == "__main__":
    main()
