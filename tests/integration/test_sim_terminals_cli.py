"""``meterd simulate`` with terminals, as processes: GPRS DTUs and MQTT terminals started from the
command line (or a fleet file), the site config it writes, ``meterd run`` on that config against
a real Mosquitto broker, and the readings that end up in the store.

The simulator is started before the daemon: its DTUs keep dialling the (not yet open) DTU
listener until the daemon is up, as real DTUs do."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port
from meterd.cli.main import main
from meterd.config.loader import load_config
from meterd.config.model import DtuLink, MqttLink, Protocol
from mosquitto import Mosquitto, mosquitto_binary

needs_broker = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed")


def start_simulator(meterd_bin: str, cwd: Path, *args: str, per_process: int | None = None) -> subprocess.Popen[str]:
    """``meterd simulate ARGS``; with ``per_process``, that many MQTT terminals per process (the
    rest run in helper processes) instead of the shipped 250."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if per_process is None:
        cmd = [meterd_bin, "--log-level", "WARNING", "simulate", *args]
    else:
        code = ("import sys; from meterd.cli import simulate; from meterd.simulators import shard; "
                f"shard.MQTT_TERMINALS_PER_PROCESS = {per_process}; sys.exit(simulate.main(sys.argv[1:]))")
        cmd = [sys.executable, "-c", code, *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def first_line(proc: subprocess.Popen[str], timeout: float = 15.0) -> str:
    """The simulator's document (one line), without hanging the test if it never comes."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            proc.kill()
            raise AssertionError(f"no document from meterd simulate within {timeout} s: {proc.communicate()[1]}")
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"meterd simulate exited with {proc.wait()}: {proc.communicate()[1]}")
    return line


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    if proc.poll() is None:
        proc.terminate()
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err


def readings(run_meterd: Any, meter: str) -> list[dict[str, Any]]:
    r = run_meterd("readings", "--meter", meter, "-c", "site.toml", "--json", timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def broker(tmp_path):
    b = Mosquitto(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


@needs_broker
def test_dtus_and_mqtt_terminals_feed_meterd_run(tmp_path, broker, meterd_bin, run_meterd):
    dtu_port = free_port()
    sim = start_simulator(
        meterd_bin, tmp_path, "--dtus", "3", "--mqtt-terminals", "2", "--meters-per-terminal", "2",
        "--dtu-connect", f"127.0.0.1:{dtu_port}", "--mqtt", f"127.0.0.1:{broker.port}",
        "--write-config", "site.toml", "--poll-interval", "2", "--json", "--duration", "120")
    try:
        doc = json.loads(first_line(sim))
        assert doc["buses"] == []  # no pty bus by default once terminals are asked for
        assert doc["dtus"]["terminals"] == {
            "DTU00000001": ["000000000001", "000000000002"],
            "DTU00000002": ["000000000003", "000000000004"],
            "DTU00000003": ["000000000005", "000000000006"],
        }
        assert doc["dtus"]["port"] == dtu_port and doc["dtus"]["format"] == "usr-ascii"
        assert doc["mqtt"]["terminals"] == {"T001": ["000001000001", "000001000002"],
                                            "T002": ["000002000001", "000002000002"]}
        assert doc["mqtt"]["port"] == broker.port
        assert doc["config"] == str(tmp_path / "site.toml")

        config = load_config(tmp_path / "site.toml")
        assert config.store.data_dir == tmp_path / "data"
        assert [(lc.name, lc.port, lc.formats) for lc in config.listeners] == [("gprs", dtu_port, ("usr-ascii",))]
        assert config.mqtt is not None and config.mqtt.port == broker.port
        links = {c.name: c.link for c in config.channels}
        assert links["DTU00000002"] == DtuLink("gprs", "DTU00000002", links["DTU00000002"].connect_wait)
        assert links["T002"] == MqttLink("T002")
        assert len(config.meters) == 10 and {m.channel for m in config.meters} == set(links)
        (poll,) = config.polls
        assert poll.interval == 2 and poll.quantities == ("energy.active.import.total", "voltage.a")

        # the DTUs have been dialling a closed port; they get through once the daemon listens
        run = run_meterd("run", "-c", "site.toml", "--duration", "4", timeout=40)
        assert run.returncode == 0, run.stderr
        assert "DTU00000003 (channel DTU00000003) online" in run.stderr
        for meter in ("000000000005", "000002000002"):  # behind a DTU, behind an MQTT terminal
            got = readings(run_meterd, meter)
            assert {r["quantity"] for r in got} == {"energy.active.import.total", "voltage.a"}, got
            assert all(r["quality"] == "good" for r in got)
            volts = [float(r["value"]) for r in got if r["quantity"] == "voltage.a"]
            assert all(150 < v < 300 for v in volts)
    finally:
        code, err = stop(sim)
    assert code == 0, err
    assert "dtus: 3 DTUs" in err and "mqtt: 2 terminals" in err
    assert "0 replies" not in err.split("mqtt:")[1]


@needs_broker
def test_mac_registering_dtus_write_a_config_meterd_run_collects_from(tmp_path, meterd_bin, run_meterd):
    # issue 17: USR serial servers register with their six-byte MAC (the usr-mac preset)
    dtu_port = free_port()
    sim = start_simulator(meterd_bin, tmp_path, "--dtus", "2", "--meters-per-terminal", "2", "--dtu-format", "usr-mac",
                          "--dtu-connect", f"127.0.0.1:{dtu_port}", "--write-config", "site.toml",
                          "--poll-interval", "2", "--json", "--duration", "120")
    try:
        doc = json.loads(first_line(sim))
        assert doc["dtus"]["format"] == "usr-mac"
        assert list(doc["dtus"]["terminals"]) == ["02:00:00:00:00:01", "02:00:00:00:00:02"]
        config = load_config(tmp_path / "site.toml")
        assert [lc.formats for lc in config.listeners] == [("usr-mac",)]
        links = {c.name: c.link for c in config.channels}
        assert links["dtu-020000000002"] == DtuLink("gprs", "02:00:00:00:00:02", links["dtu-020000000002"].connect_wait)
        run = run_meterd("run", "-c", "site.toml", "--duration", "4", timeout=40)
        assert run.returncode == 0, run.stderr
        got = readings(run_meterd, "000000000004")  # behind the second DTU
        assert {r["quantity"] for r in got} == {"energy.active.import.total", "voltage.a"}, got
    finally:
        code, err = stop(sim)
    assert code == 0, err


def test_modbus_dtus_and_dlt645_1997_terminals_from_a_fleet_file(tmp_path, broker, meterd_bin, run_meterd):
    """Also: MQTT terminals spread over helper processes (paho's select() limits one process)."""
    dtu_port = free_port()
    (tmp_path / "fleet.toml").write_text(f"""
[dtus]
count = 2
meters = 3
format = "hex-frame"
protocol = "modbus"
port = {dtu_port}

[mqtt]
count = 1
meters = 2
protocol = "dlt645-1997"
port = {broker.port}
""")
    sim = start_simulator(meterd_bin, tmp_path, "--fleet-config", "fleet.toml", "--mqtt-terminals", "2",
                          "--write-config", "site.toml", "--data-dir", "store", "--poll-quantities", "voltage.a",
                          "--json", "--duration", "120", per_process=1)
    try:
        doc = json.loads(first_line(sim))
        assert doc["dtus"]["format"] == "hex-frame" and doc["dtus"]["protocol"] == "modbus"
        assert doc["dtus"]["units"] == {"000000000001": 1, "000000000002": 2, "000000000003": 3,
                                        "000000000004": 1, "000000000005": 2, "000000000006": 3}
        assert list(doc["mqtt"]["terminals"]) == ["T001", "T002"]  # the flag beat the file's count = 1
        text = (tmp_path / "site.toml").read_text()
        site = tomllib.loads(text)
        assert site["store"]["data_dir"] == str(tmp_path / "store")
        assert site["listeners"]["gprs"]["formats"] == ["hex-frame"]
        config = load_config(tmp_path / "site.toml")
        protocols = {m.address: (m.protocol, m.unit) for m in config.meters}
        assert protocols["000000000005"] == (Protocol.MODBUS, 2)
        assert protocols["000002000002"] == (Protocol.DLT645_1997, None)

        run = run_meterd("run", "-c", "site.toml", "--duration", "3", timeout=40)
        assert run.returncode == 0, run.stderr
        for meter in ("000000000005", "000001000001", "000002000002"):  # T002 runs in a helper process
            got = readings(run_meterd, meter)
            assert got and {r["quantity"] for r in got} == {"voltage.a"}, got
    finally:
        code, err = stop(sim)
    assert code == 0, err
    assert "mqtt: 2 terminals in 2 process(es)" in err, err
    assert "no counts" not in err and " 0 replies" not in err.split("mqtt:")[1], err


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--dtus", "-1"], "--dtus -1: must be 0..99999999"),
        (["--dtus", "0", "--mqtt-terminals", "0"], "--dtus/--mqtt-terminals: no terminals"),
        (["--mqtt-terminals", "1000"], "--mqtt-terminals 1000: must be 0..999"),
        (["--dtus", "2", "--meters-per-terminal", "0"], "--meters-per-terminal 0: must be 1..247"),
        (["--dtus", "2", "--dtu-connect", "nowhere"], "--dtu-connect 'nowhere': expected HOST:PORT"),
        (["--dtus", "2", "--dtu-format", "smoke-signals"], "--dtu-format 'smoke-signals': expected usr-ascii"),
        (["--dtus", "2", "--dtu-protocol", "iec62056"], "--dtu-protocol 'iec62056': expected dlt645 or modbus"),
        (["--mqtt-terminals", "2", "--mqtt-protocol", "dlt645"], "--mqtt-protocol 'dlt645': expected dlt645-2007"),
        (["--mqtt-terminals", "2", "--mqtt", "broker:99999"], "--mqtt 'broker:99999': expected HOST:PORT"),
        (["--mqtt-terminals", "2", "--dtu-format", "hex-frame"], "--dtu-format: no DTUs are simulated"),
        (["--dtus", "1", "--write-config", "nowhere/site.toml"], "--write-config 'nowhere/site.toml': folder"),
        (["--dtus", "1", "--write-config", "s.toml", "--poll-quantities", "volts"],
         "--poll-quantities: unknown quantity 'volts'"),
        (["--dtus", "1", "--write-config", "s.toml", "--poll-interval", "0"], "--poll-interval 0.0: must be > 0"),
        (["--dtus", "1", "--dtu-protocol", "modbus", "--write-config", "s.toml", "--poll-quantities",
          "current.n"],
         "--poll-quantities: the DTU meters' register map generic has no register for current.n"),
        (["--dtus", "1", "--fault", "1:garble"], "--fault: faults are injected into bus meters only"),
        (["--fleet-config", "missing.toml"], "--fleet-config missing.toml: file not found"),
        (["--meters-per-terminal", "4"], "--meters-per-terminal: no terminals are simulated"),
    ],
)
def test_bad_arguments_exit_2_naming_the_flag(capsys, monkeypatch, tmp_path, args, named):
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", *args, "--duration", "0"]) == 2
    err = capsys.readouterr().err
    assert named in err, err
    assert not (tmp_path / "s.toml").exists() and not (tmp_path / "site.toml").exists()


def test_bad_fleet_file_names_file_and_key(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fleet.toml").write_text('[dtus]\ncount = "many"\nmeter = 3\n[site]\nx = 1\n')
    assert main(["simulate", "--fleet-config", "fleet.toml", "--duration", "0"]) == 2
    err = capsys.readouterr().err
    assert "fleet.toml: dtus.meter: unknown key" in err
    assert "fleet.toml: site: unknown section" in err
    assert "fleet.toml: dtus.count 'many': must be an integer" in err


def test_dtus_alone_start_without_a_master_and_dial_until_stopped(run_meterd, tmp_path):
    """No broker, no daemon: the DTUs keep dialling a closed port; the document comes at once."""
    port = free_port()
    started = time.monotonic()
    r = run_meterd("simulate", "--dtus", "2", "--meters-per-terminal", "1", "--dtu-connect", f"127.0.0.1:{port}",
                   "--dtu-reconnect", "0.2", "--json", "--duration", "1", timeout=30)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - started < 15
    doc = json.loads(r.stdout)
    assert doc["dtus"]["terminals"] == {"DTU00000001": ["000000000001"], "DTU00000002": ["000000000002"]}
    assert "mqtt" not in doc and doc["config"] is None
    assert "dtus: 2 DTUs, 0 connected at the end, 0 connections" in r.stderr
