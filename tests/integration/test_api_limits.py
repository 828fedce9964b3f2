"""The HTTP API's connection limits (meterd.api.guard) over real sockets, and the daemon under a
flood of 2,000 idle and half-sent connections.

The first tests serve a tiny app through uvicorn with the guard, in a thread, with small limits
(a few connections, half a second to send a request) and check each rule from the client's side:
a connection that is closed reads EOF.  The last one runs ``meterd run`` as a process with the API,
a DTU listener and simulated DTUs, floods the API port and checks that ``/healthz`` still answers,
that DTUs still connect and their meters' readings are still stored, and that the flood's
connections are closed.  Today's code (no guard) fails it: at the usual soft limit of 1,024 file
descriptors the daemon runs out of them, ``/healthz`` never answers and the log fills with
tracebacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meterd.api.guard import BUSY_RESPONSE, ConnectionGuard
from meterd.simulators.dtu import run_dtu_fleet
from conftest import free_port

HALF_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: meterd\r\n"  # the blank line never comes
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: meterd\r\n\r\n"
WAIT = 20.0  # generous bound for anything that should happen within a second or two


@pytest.fixture(autouse=True, scope="module")
def raised_nofile() -> Iterator[None]:
    """This process holds the flood's client sockets (and, for the in-thread server, its own)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Gate:
    """Holds ``/slow`` requests until opened (from the test thread)."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = 0

    async def slow(self, request: Request) -> JSONResponse:
        self.entered += 1
        while not self.open.is_set():
            await asyncio.sleep(0.01)
        return JSONResponse({"done": True})


async def healthz_ep(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def echo_ep(request: Request) -> JSONResponse:
    return JSONResponse({"bytes": len(await request.body())})


@contextlib.contextmanager
def guarded(max_connections: int, header_timeout: float, keep_alive: float = 30.0,
            gate: Gate | None = None, loop: str = "asyncio") -> Iterator[tuple[int, ConnectionGuard]]:
    gate = gate or Gate()
    app = Starlette(routes=[Route("/healthz", healthz_ep), Route("/slow", gate.slow),
                            Route("/echo", echo_ep, methods=["POST"])])
    guard = ConnectionGuard(max_connections, header_timeout)
    port = free_port()
    # the daemon serves the API on its own asyncio loop; uvicorn's "auto" would take uvloop when installed
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                                           http=guard.protocol(), timeout_keep_alive=keep_alive,  # type: ignore[arg-type]
                                           loop=loop))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield port, guard
    finally:
        gate.open.set()
        server.should_exit = True
        thread.join(10)


def connect(port: int, send: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    if send:
        s.sendall(send)
    return s


def read_reply(s: socket.socket) -> bytes:
    """One HTTP answer (headers and a Content-Length body), or what came before EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def closed_by_server(s: socket.socket) -> bool:
    """Whether the server closed ``s`` (EOF or reset) within WAIT seconds."""
    s.settimeout(WAIT)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def is_open(s: socket.socket) -> bool:
    """Whether ``s`` is still open at the server's end right now (nothing to read, no EOF)."""
    s.setblocking(False)
    try:
        return bool(s.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return True
    except OSError:
        return False


# --- the rules, one by one ---------------------------------------------------------------------


def test_a_connection_that_sends_nothing_or_half_a_request_is_closed_after_the_header_timeout():
    with guarded(max_connections=50, header_timeout=0.5) as (port, guard):
        silent, half, line = connect(port), connect(port, HALF_REQUEST), connect(port, b"GET /hea")
        served = connect(port, HEALTHZ)
        assert read_reply(served).startswith(b"HTTP/1.1 200")
        assert closed_by_server(silent) and closed_by_server(half) and closed_by_server(line)
        assert guard.header_timeouts == 3
        for s in (silent, half, line, served):
            s.close()


def test_a_request_trickled_in_within_the_timeout_is_served():
    with guarded(max_connections=50, header_timeout=5.0) as (port, _):
        s = connect(port)
        for i in range(0, len(HEALTHZ), 7):
            s.sendall(HEALTHZ[i:i + 7])
            time.sleep(0.01)
        assert read_reply(s).startswith(b"HTTP/1.1 200")
        s.close()


def test_half_a_second_request_on_a_kept_alive_connection_is_closed_too():
    # uvicorn cancels its keep-alive timer at the first byte of the next request and sets none
    with guarded(max_connections=50, header_timeout=0.5, keep_alive=30.0) as (port, guard):
        s = connect(port, HEALTHZ)
        assert read_reply(s).startswith(b"HTTP/1.1 200")
        s.sendall(HALF_REQUEST)
        assert closed_by_server(s)
        assert guard.header_timeouts == 1
        s.close()


def test_a_body_that_never_arrives_whole_is_closed_after_the_timeout():
    with guarded(max_connections=50, header_timeout=0.5) as (port, guard):
        s = connect(port, b"POST /echo HTTP/1.1\r\nHost: meterd\r\nContent-Length: 100\r\n\r\n0123456789")
        assert closed_by_server(s)
        assert guard.header_timeouts == 1
        s.close()
        whole = connect(port, b"POST /echo HTTP/1.1\r\nHost: meterd\r\nContent-Length: 10\r\n\r\n0123456789")
        assert read_reply(whole).endswith(b'{"bytes":10}')
        whole.close()


def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_timeout():
    with guarded(max_connections=50, header_timeout=30.0, keep_alive=0.5) as (port, guard):
        s = connect(port, HEALTHZ)
        assert read_reply(s).startswith(b"HTTP/1.1 200")
        assert closed_by_server(s)
        assert guard.header_timeouts == 0  # uvicorn's keep-alive timer did it
        s.close()


def test_at_the_cap_the_longest_waiting_idle_connection_makes_room():
    with guarded(max_connections=5, header_timeout=30.0) as (port, guard):
        idle = [connect(port, HALF_REQUEST if n % 2 else b"") for n in range(5)]
        deadline = time.monotonic() + WAIT
        while guard.open < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        newcomer = connect(port, HEALTHZ)
        assert read_reply(newcomer).startswith(b"HTTP/1.1 200")
        assert closed_by_server(idle[0])  # the oldest went
        assert [is_open(s) for s in idle[1:]] == [True] * 4
        assert guard.open == 5 and guard.evicted == 1
        for s in [*idle, newcomer]:
            s.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_at_the_cap_with_every_connection_busy_a_newcomer_is_answered_503_at_once(loop):
    # uvloop: its transports are no asyncio.WriteTransport, which the guard asserted (a traceback, no 503)
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    gate = Gate()
    with guarded(max_connections=3, header_timeout=30.0, gate=gate, loop=loop) as (port, guard):
        busy = [connect(port, b"GET /slow HTTP/1.1\r\nHost: meterd\r\n\r\n") for _ in range(3)]
        deadline = time.monotonic() + WAIT
        while gate.entered < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        turned_away = connect(port)
        assert read_reply(turned_away) == BUSY_RESPONSE
        assert closed_by_server(turned_away)
        assert guard.refused == 1 and guard.open == 3
        gate.open.set()
        for s in busy:
            assert read_reply(s).endswith(b'{"done":true}')  # the requests in flight were never touched
        for s in [*busy, turned_away]:
            s.close()


# --- the daemon under a flood ------------------------------------------------------------------


def daemon_config(data_dir: Path, api_port: int, dtu_port: int) -> str:
    channels = "".join(f"""
[channels.feeder{n}]
dtu = {{ listener = "gprs", terminal = "DTU{n:08d}" }}
response_timeout = "1s"
retries = 0

[[meters]]
address = "{n}"
channel = "feeder{n}"
""" for n in (1, 2))
    return f"""
[store]
data_dir = "{data_dir}"
flush_interval = "200ms"

[api]
host = "127.0.0.1"
port = {api_port}
header_timeout = "2s"

[listeners.gprs]
host = "127.0.0.1"
port = {dtu_port}
formats = ["usr-ascii"]
heartbeat_timeout = "30s"
{channels}
[[polls]]
name = "realtime"
interval = "300ms"
quantities = ["energy.active.import.total"]
"""


def healthz(port: int) -> tuple[float, bytes]:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: meterd\r\nConnection: close\r\n\r\n")
        reply = read_reply(s)
    return time.perf_counter() - started, reply


def readings(data_dir: Path) -> int:
    path = data_dir / "readings.sqlite3"
    if not path.exists():
        return 0
    conn = sqlite3.connect(path, timeout=10)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        conn.close()


async def until(check, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"{what} within {WAIT} s"
        await asyncio.sleep(0.1)


async def test_two_thousand_idle_and_half_sent_connections_stop_neither_the_api_nor_collection(tmp_path, meterd_bin):
    data_dir = tmp_path / "data"
    api_port, dtu_port = free_port(), free_port()
    config = tmp_path / "site.toml"
    config.write_text(daemon_config(data_dir, api_port, dtu_port))
    log_path = tmp_path / "daemon.log"
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def usual_soft_limit() -> None:  # what a login shell or a container usually hands a process
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))

    with open(log_path, "wb") as log_file:
        daemon = subprocess.Popen([meterd_bin, "run", "-c", str(config)], stdout=log_file, stderr=subprocess.STDOUT,
                                  preexec_fn=usual_soft_limit, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    fleet = None
    flood: list[socket.socket] = []
    try:
        await until(lambda: b"HTTP API on" in log_path.read_bytes(), "the daemon serves its API")
        fleet = await run_dtu_fleet(2, 1, "127.0.0.1", dtu_port, fmt="usr-ascii", heartbeat=5.0)
        await until(lambda: readings(data_dir) > 0, "readings from the DTUs' meters are stored")

        for n in range(2000):
            s = socket.create_connection(("127.0.0.1", api_port), timeout=WAIT)
            if n % 2:
                s.sendall(HALF_REQUEST)
            s.setblocking(False)
            flood.append(s)

        for _ in range(3):
            latency, reply = await asyncio.to_thread(healthz, api_port)
            assert reply.startswith(b"HTTP/1.1 200"), reply
            assert latency < 1.0, f"/healthz took {latency:.2f} s under the flood"

        # DTUs drop and dial in again: the listener accepts them and their meters are stored again
        await fleet.close()
        fleet = await run_dtu_fleet(2, 1, "127.0.0.1", dtu_port, fmt="usr-ascii", heartbeat=5.0)
        await until(lambda: log_path.read_bytes().count(b"online from") >= 4, "both DTUs are online again")
        stored = readings(data_dir)
        await until(lambda: readings(data_dir) > stored, "readings are stored after the DTUs came back")

        # every connection of the flood is closed: the surplus at once, the rest at the header timeout
        await until(lambda: not any(is_open(s) for s in flood), "the flood's connections are closed")
    finally:
        for s in flood:
            s.close()
        if fleet is not None:
            await fleet.close()
        daemon.terminate()
        try:
            daemon.wait(20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    text = log_path.read_text(errors="replace")
    assert "Traceback" not in text
    assert len(text) < 100_000, f"the daemon logged {len(text)} bytes"


def test_the_daemon_raises_its_soft_open_file_limit_to_the_hard_one():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip(f"the hard limit here ({hard}) leaves nothing to raise")

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    code = ("import resource; from meterd.cli.run import raise_nofile_limit; "
            "print(raise_nofile_limit(), resource.getrlimit(resource.RLIMIT_NOFILE))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          preexec_fn=low_soft_limit, check=True)
    assert done.stdout.strip() == f"({hard}, {hard}) ({hard}, {hard})"
