"""``meterd simulate --write-config`` for pty and TCP buses (issue 17): the simulator runs as a
process, the config it writes loads with meterd's own config loader, and ``meterd run`` on it
collects from every kind of simulated meter -- DL/T 645-2007 and -1997 on a pty and over TCP,
Modbus RTU on a pty, Modbus TCP -- while ``meterd read`` reaches a meter with the link settings
taken from the loaded config."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
from pathlib import Path
from typing import Any

import pytest

from meterd.cli.main import main
from meterd.config.loader import load_config
from meterd.config.model import Protocol, SerialLink, TcpLink


def start(meterd_bin: str, cwd: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([meterd_bin, "--log-level", "WARNING", "simulate", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def document(proc: subprocess.Popen[str], timeout: float = 20.0) -> dict[str, Any]:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            proc.kill()
            raise AssertionError(f"no document from meterd simulate within {timeout} s: {proc.communicate()[1]}")
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"meterd simulate exited with {proc.wait()}: {proc.communicate()[1]}")
    return json.loads(line)  # type: ignore[no-any-return]


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    if proc.poll() is None:
        proc.terminate()
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err


def collected(run_meterd: Any, meters: list[str]) -> dict[str, set[str]]:
    """Run the daemon on the written config for a few rounds; the quantities stored per meter."""
    run = run_meterd("run", "-c", "site.toml", "--duration", "5", timeout=60)
    assert run.returncode == 0, run.stderr
    out = {}
    for meter in meters:
        r = run_meterd("readings", "--meter", meter, "-c", "site.toml", "--json", timeout=30)
        assert r.returncode == 0, r.stderr
        rows = json.loads(r.stdout)
        assert all(row["quality"] == "good" for row in rows), rows
        volts = [float(row["value"]) for row in rows if row["quantity"] == "voltage.a"]
        assert volts and all(150 < v < 300 for v in volts), (meter, rows)
        out[meter] = {row["quantity"] for row in rows}
    return out


def test_tcp_buses_config_loads_and_meterd_run_collects(tmp_path, meterd_bin, run_meterd):
    sim = start(meterd_bin, tmp_path, "--pty", "0", "--tcp-buses", "1", "--modbus-tcp", "2",
                "--modbus-framing", "rtu", "--modbus-model", "eastron-sdm630", "--meters-per-bus", "2",
                "--v1997", "2", "--write-config", "site.toml", "--poll-interval", "1", "--json",
                "--duration", "120")  # fmt: skip
    try:
        doc = document(sim)
        assert doc["config"] == str(tmp_path / "site.toml")
        tcp1, _, mbtcp2 = doc["buses"]
        config = load_config(tmp_path / "site.toml")
        channels = {c.name: c for c in config.channels}
        assert set(channels) == {"tcp1", "mbtcp1", "mbtcp2"}
        assert channels["tcp1"].link == TcpLink("127.0.0.1", tcp1["port"])
        assert channels["mbtcp2"].link == TcpLink("127.0.0.1", mbtcp2["port"])
        assert channels["mbtcp1"].framing == "rtu"  # RTU passed through TCP, as the bus speaks
        meters = {m.address: m for m in config.meters}
        assert meters["000000000002"].protocol == Protocol.DLT645_1997
        assert meters["000000000001"].protocol == Protocol.DLT645_2007
        assert (meters["000000000006"].protocol, meters["000000000006"].unit) == (Protocol.MODBUS, 2)
        assert meters["000000000006"].channel == "mbtcp2" and len(meters) == 6
        got = collected(run_meterd, ["000000000001", "000000000002", "000000000004", "000000000006"])
        assert all(q == {"energy.active.import.total", "voltage.a"} for q in got.values()), got
    finally:
        code, err = stop(sim)
    assert code == 0, err
    assert "mbtcp2" in err and " 0 requests" not in err


def test_pty_buses_config_loads_and_meterd_run_and_read_collect(tmp_path, meterd_bin, run_meterd):
    sim = start(meterd_bin, tmp_path, "--pty", "1", "--modbus-pty", "1", "--modbus-model", "chint-dtsu666",
                "--meters-per-bus", "2", "--write-config", "site.toml", "--data-dir", "store",
                "--poll-interval", "1", "--poll-quantities", "voltage.a,energy.active.import.total",
                "--json", "--duration", "120")  # fmt: skip
    try:
        doc = document(sim)
        pty1, mbpty1 = doc["buses"]
        config = load_config(tmp_path / "site.toml")
        assert config.store.data_dir == tmp_path / "store"
        links = {c.name: c.link for c in config.channels}
        assert links["pty1"] == SerialLink(pty1["endpoint"], 2400, 8, "E", 1)
        assert links["mbpty1"] == SerialLink(mbpty1["endpoint"], 9600, 8, "N", 1)
        (poll,) = config.polls
        assert poll.interval == 1 and poll.quantities == ("voltage.a", "energy.active.import.total")
        # meterd read with the link settings the loaded config holds
        link = links["mbpty1"]
        assert isinstance(link, SerialLink)
        read = run_meterd("read", "--serial", link.device, "--baud", str(link.baud), "--parity", str(link.parity),
                          "--protocol", "modbus", "--unit", "2", "--model", "chint-dtsu666",
                          "--quantity", "voltage.a", "--json", timeout=30)  # fmt: skip
        assert read.returncode == 0, read.stderr
        assert "voltage.a" in read.stdout
        got = collected(run_meterd, ["000000000001", "000000000004"])
        assert all(q == {"energy.active.import.total", "voltage.a"} for q in got.values()), got
    finally:
        code, err = stop(sim)
    assert code == 0, err


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--baud", "1234", "--write-config", "s.toml"],
         "channels.pty1.serial.baud: must be one of 300, 600, 1200, 2400"),
        (["--modbus-tcp", "1", "--write-config", "s.toml", "--poll-quantities", "current.n"],
         "--poll-quantities: the bus meters' register map generic has no register for current.n"),
    ],
)  # fmt: skip
def test_a_bus_config_that_cannot_work_is_refused_before_anything_starts(capsys, monkeypatch, tmp_path, args, named):
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", *args, "--duration", "0"]) == 2
    err = capsys.readouterr().err
    assert named in err, err
    assert not (tmp_path / "s.toml").exists()
