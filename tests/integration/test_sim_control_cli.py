"""``meterd simulate --control SOCKET`` driven from outside while ``meterd read`` looks at the meters
through a real TCP port: conditions given with ``--fault`` (reversed wiring, a sag), a meter powered
down (silent) and up (its power-down event record 03110000 / 03110001 read back), the socket's
refusals."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def sim(tmp_path):
    path = str(tmp_path / "sim.sock")
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "meterd.cli.simulate", "--pty", "0", "--tcp-buses", "1", "--meters-per-bus", "3",
         "--json", "--control", path, "--fault", "2:reverse", "--fault", "3:sag:0.8", "--fault", "3:garble:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        doc = json.loads(proc.stdout.readline())
        yield doc, path
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert not os.path.exists(path)  # the socket goes with the simulator


def command(path: str, *lines: str) -> list[dict]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall("".join(f"{line}\n" for line in lines).encode())
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.decode().splitlines()]


def read(run_meterd, endpoint: str, address: str, *what: str) -> tuple[int, dict]:
    p = run_meterd("read", "--tcp", endpoint, "--address", address, "--timeout", "0.5", "--retries", "0", "--json",
                   *what)
    return p.returncode, json.loads(p.stdout) if p.stdout else {}


def values(doc: dict) -> dict[str, str]:
    return {r["quantity"]: r["value"] for r in doc["readings"]}


def test_conditions_power_down_and_the_event_record_seen_by_meterd_read(sim, run_meterd):
    doc, path = sim
    [bus] = doc["buses"]
    endpoint = bus["endpoint"]
    assert doc["control"] == path and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert doc["faults"] == {"000000000002": {"reverse": 1.0}, "000000000003": {"sag": 0.8}}

    rc, got = read(run_meterd, endpoint, "2", "--quantity", "power.active.total", "--quantity",
                   "energy.active.export.total", "--di", "04000501")
    assert rc == 0, got
    assert Decimal(values(got)["power.active.total"]) < 0  # reversed wiring: measured backwards
    assert int(values(got)["status.word1"]) & 0x10  # D4: active power reverse (D5, reactive, by the hour)
    rc, got = read(run_meterd, endpoint, "3", "--quantity", "voltage.a")
    assert rc == 0 and Decimal(170) < Decimal(values(got)["voltage.a"]) < Decimal(185), got  # 220 V x 0.8

    [down] = command(path, "power-down 1")
    assert down == {"ok": True, "meters": ["000000000001"]}
    rc, got = read(run_meterd, endpoint, "1", "--quantity", "voltage.a")
    assert rc != 0 and got["readings"] == [] and got["attempts"][0]["outcome"].lower() == "timeout", got
    [up, status] = command(path, "power-up 1", "status 1")
    assert up["ok"] and status["powered"] is True and status["power_downs"] == 1
    rc, got = read(run_meterd, endpoint, "1", "--di", "03110000", "--di", "03110001")
    assert rc == 0, got
    found = values(got)
    assert found["event.power_down.count"] == "1"
    start, end = (datetime.fromisoformat(found[f"event.power_down.{k}"]) for k in ("start", "end"))
    assert start <= end

    [press, bad, sag_off] = command(path, "press 1", "voltage 1 7", "voltage 3 1")
    assert press == {"ok": True, "meter": "000000000001", "closed": False}  # no reclose permit waiting
    assert bad["ok"] is False and "within 0.5..1.5" in bad["error"]
    assert sag_off["voltage_scale"] == [1.0, 1.0, 1.0]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # an absurd line: refused, connection closed
        s.settimeout(5)
        s.connect(path)
        s.sendall(b"x" * 100_000 + b"\n")
        reply = s.recv(4096)
    assert b"longer than" in reply
    assert command(path, "status 3")[0]["ok"]  # the socket still serves
