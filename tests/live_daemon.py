"""The daemon and its API in one event loop, called over real HTTP from a worker thread: the set-up
test_api_live and test_daemon_alarms share.  A fleet of simulated meters on one TCP bus, the site
config that polls them and serves the API on a port of the test's, API tokens, the daemon run as a
task until the test is done, and the HTTP call.  Each test gets its own of everything: nothing here
keeps state between tests (the suite runs under pytest-xdist)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tomllib
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meterd.api import TokenStore
from meterd.config.loader import parse_config
from meterd.config.model import Config
from meterd.simulators.fleet import Fleet, FleetBus, FleetSpec, run_fleet


def call(port: int, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    """One API request with a bearer token: (HTTP status, the JSON answer), errors included."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@contextlib.asynccontextmanager
async def one_bus_fleet(meters: int, faults: dict[str, str] | None = None) -> AsyncIterator[Fleet]:
    """Simulated DL/T 645 meters on one TCP bus (seed 5, no wire time), closed when the block ends."""
    fleet = await run_fleet(FleetSpec(pty_buses=0, tcp_buses=1, meters_per_bus=meters, wire_time=False, seed=5,
                                      faults=faults or {}))
    try:
        yield fleet
    finally:
        await fleet.close()


def bus_site(tmp_path: Path, bus: FleetBus, api_port: int, *, source: str, poll: tuple[str, str] = ("daily", "24h"),
             response_timeout: str | None = None, retries: int | None = None, extra: str = "") -> Config:
    """The site config of every meter on ``bus`` (channel ``bus1``), stored under ``tmp_path/data``:
    one poll (name, interval) of the total active import energy, the API on ``api_port``;
    ``response_timeout``/``retries`` of the channel where given (else the defaults), ``extra`` TOML
    appended (tables of its own)."""
    host, _, bus_port = bus.endpoint.rpartition(":")
    channel = "".join([f'response_timeout = "{response_timeout}"\n' if response_timeout is not None else "",
                       f"retries = {retries}\n" if retries is not None else ""])
    meters = "".join(f'[[meters]]\naddress = "{address}"\nchannel = "bus1"\n' for address in bus.meters)
    text = f"""
[store]
data_dir = "{tmp_path / 'data'}"
flush_interval = "100ms"
[channels.bus1]
tcp = {{ host = "{host}", port = {bus_port} }}
{channel}{meters}[[polls]]
name = "{poll[0]}"
interval = "{poll[1]}"
quantities = ["energy.active.import.total"]
[api]
port = {api_port}
{extra}"""
    return parse_config(tomllib.loads(text), source=source)


def make_tokens(data_dir: Path, *holders: tuple[str, str]) -> list[str]:
    """Create ``data_dir`` and an API token for each (name, role), in order; the tokens' secrets."""
    data_dir.mkdir()
    with TokenStore(data_dir) as tokens:
        now = datetime.now(UTC)
        return [tokens.create(name, role, now)[1] for name, role in holders]


async def wait_for_api(port: int, path: str, token: str, *, tries: int = 200, every: float = 0.05) -> bool:
    """GET ``path`` until it answers 200 (True), at most ``tries`` times ``every`` seconds apart (False)."""
    for _ in range(tries):
        try:
            if (await asyncio.to_thread(call, port, "GET", path, token))[0] == 200:
                return True
        except OSError:
            pass
        await asyncio.sleep(every)
    return False


@contextlib.asynccontextmanager
async def running(daemon: Any) -> AsyncIterator[asyncio.Task[None]]:
    """``daemon.run`` as a task for the block (the task is yielded), stopped and awaited after it."""
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await task
