"""kill -9 of the daemon while it charges, decides and switches relays, again and again, with payments
made (and repeated) from the CLI in between: afterwards no payment is applied twice, no interval is
charged twice or skipped, the balance equals the ledger, and no command reached a meter twice.

The simulated meters run in this test's process (a thread with its own event loop, real TCP), so
the test can look at what each meter actually received; the daemon and the CLI are real processes.
The daemons and the payments are ``meterd`` processes forked from one that imported the package
(tests/cliserver.py), without a second of imports each: a daemon polls from the first of its
random seconds before the kill, not after its imports.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import threading
import time
from collections import Counter
from datetime import datetime
from decimal import Decimal

import pytest

import cliserver
from meterd.control.model import Rate
from meterd.control.state import ControlStore
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.model import MeterModel
from meterd.simulators.serve import SimClock, serve_tcp
from meterd.storage.sqlite import SqliteStore, to_ms

M1, M2 = "000000000001", "000000000002"
SECRETS = {"METERD_METER_PASSWORD": "02123456", "METERD_OPERATOR_CODE": "00000001"}


class SimThread:
    """Simulated meters on a TCP port, served from a background event loop."""

    def __init__(self, speed: float) -> None:
        start = datetime.now()
        self.bus = Dlt645Bus([MeterModel(M1, start=start, seed=1), MeterModel(M2, start=start, seed=2)])
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(speed,), daemon=True)
        self.thread.start()
        assert self.ready.wait(10), "simulator did not start"

    def _run(self, speed: float) -> None:
        asyncio.set_event_loop(self.loop)

        async def main():
            self.running = await serve_tcp(self.bus, clock=SimClock.starting(speed=speed))
            self.ready.set()
            self.stop = asyncio.Event()
            await self.stop.wait()
            await self.running.close()

        self.loop.run_until_complete(main())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


def config(data_dir, endpoint: str) -> str:
    host, port = endpoint.rsplit(":", 1)
    return f"""
[store]
data_dir = "{data_dir}"
flush_interval = "200ms"

[channels.bus1]
tcp = {{ host = "{host}", port = {port} }}
response_timeout = "500ms"
retries = 1

[[meters]]
address = "{M1}"
channel = "bus1"

[[meters]]
address = "{M2}"
channel = "bus1"

[plausibility]  # the simulated meters run 3600x faster than the wall clock, and so does their energy
rated_current = 540000

[[polls]]
name = "energy"
interval = 0.3
quantities = ["energy.active.import.total", "relay.open"]

[prepaid]
check_every = "300ms"
retry_every = "1s"
valid_for = "720h"
reclose = "direct"
trip_notice = "0s"  # about crashes, not onboarding: trips follow alarms at once, accounts open at 0.00
thresholds = {{ reminder = "30", alarm = "20", trip = "0", reclose = "10" }}

[[prepaid.tariffs]]
name = "steep"
[[prepaid.tariffs.versions]]
effective = 2020-01-01
kind = "flat"
price = "9.99"

[[prepaid.accounts]]
account = "A1"
tariff = "steep"
meters = ["{M1}"]
area = "TA1"
opening_balance = "0"

[[prepaid.accounts]]
account = "A2"
tariff = "steep"
meters = ["{M2}"]
area = "TA1"
opening_balance = "0"
"""


@pytest.fixture
def cli_server():
    """``meterd`` processes forked from one that imported the package (tests/cliserver.py)."""
    return cliserver.shared()


@pytest.fixture
def sim():
    s = SimThread(speed=3600.0)  # an hour of consumption per second: money runs out in seconds
    yield s
    s.close()


def test_kill_9_never_applies_a_payment_or_charge_twice_nor_sends_a_command_twice(sim, cli_server, tmp_path):
    data = tmp_path / "data"
    cfg = tmp_path / "site.toml"
    cfg.write_text(config(data, sim.running.endpoint))
    env = {**os.environ, **SECRETS, "PYTHONUNBUFFERED": "1"}
    rng = random.Random(1234)
    refs: list[str] = []

    def pay(account: str, ref: str) -> None:
        p = cli_server.run("pay", account, "40", "--ref", ref, "-c", str(cfg), env=env, cwd=tmp_path, timeout=60)
        assert p.returncode == 0, p.stderr
        refs.append(ref)

    pay("A1", "P0")
    kills = 0
    for cycle in range(4):
        daemon = cli_server.spawn("--log-level", "WARNING", "run", "-c", str(cfg), env=env, cwd=tmp_path)
        time.sleep(rng.uniform(1.0, 2.5))
        pay("A1", f"P{cycle + 1}")
        pay("A2" if cycle % 2 else "A1", f"Q{cycle}" if cycle % 2 else "P0")  # P0 again: a duplicate
        time.sleep(rng.uniform(0.2, 1.5))
        assert daemon.poll() is None, daemon.stderr()
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        kills += 1
    # a last, clean run settles whatever the kills left behind
    last = cli_server.run("--log-level", "WARNING", "run", "-c", str(cfg), "--duration", "4", env=env, cwd=tmp_path,
                          timeout=60)
    assert last.returncode == 0, last.stderr
    assert "Traceback" not in last.stderr, last.stderr

    with ControlStore(data) as store:
        assert store.verify_balances() == []
        # every payment exactly once, whatever was repeated
        for account, prefix in (("A1", "P"), ("A2", "Q")):
            rows = store.ledger(account)
            payments = [r.key for r in rows if r.kind.value == "payment"]
            assert sorted(payments) == sorted({f"payment:{r}" for r in refs if r.startswith(prefix)})
            assert len(payments) == len(set(payments))
        # charges: per meter the charged intervals never overlap (nothing charged twice), each is
        # exactly the register advance the store saw, and together they cover the whole advance
        # (nothing skipped; intervals without consumption -- relay open -- have no entry)
        cursors = store.cursors()
        with SqliteStore(data) as readings_store:
            for account, meter in (("A1", M1), ("A2", M2)):
                periods = store._read("SELECT period_start_ts, period_end_ts, kwh, amount_fen, price FROM ledger "
                                      "WHERE meter = ? AND kind = 'charge' ORDER BY period_start_ts", (meter,))
                assert periods, f"{account} was never charged"
                for before, after in itertools.pairwise(periods):
                    assert after["period_start_ts"] >= before["period_end_ts"], "an interval charged twice"
                register = {to_ms(r.timestamp): r.value for r in readings_store.readings(
                    meter, quantity="energy.active.import.total")}
                for p in periods:
                    assert -p["amount_fen"] == int((Decimal(p["kwh"]) * Decimal(p["price"]) * 100)
                                                   .quantize(Decimal(1), rounding="ROUND_HALF_UP"))
                    if p["period_start_ts"] in register and p["period_end_ts"] in register:
                        assert Decimal(p["kwh"]) == register[p["period_end_ts"]] - register[p["period_start_ts"]]
                first = periods[0]["period_start_ts"]
                if first in register:
                    total = sum(Decimal(p["kwh"]) for p in periods)
                    assert total == cursors[(meter, Rate.TOTAL)][1] - register[first]
        # commands: none left in flight, and no meter received a command more often than it was sent
        commands = store.commands(limit=10_000)
        assert not [c for c in commands if c.state.value in ("sent",)]
        assert any(c.kind.value == "trip" and c.state.value == "confirmed" for c in commands), \
            [(c.kind.value, c.state.value, c.detail) for c in commands]
        for meter in (M1, M2):
            received = Counter(cmd.name.lower().replace("_", "-") for _, cmd in sim.bus.meter(meter).control_log)
            sent = Counter()
            for c in commands:
                if c.meter == meter:
                    sent[c.kind.value] += c.tries
            for kind, n in received.items():
                assert n <= sent[kind], (meter, kind, received, sent)
        # and the relay the meter reports agrees with the last confirmed command
        for meter in (M1, M2):
            last = next((c for c in commands if c.meter == meter and c.state.value == "confirmed"
                         and c.kind.value in ("trip", "reclose")), None)
            if last is not None:
                assert sim.bus.meter(meter).relay_open == (last.kind.value == "trip")
    assert kills == 4
