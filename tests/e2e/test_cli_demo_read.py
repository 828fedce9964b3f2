"""The installed command end to end: demo fills a store, readings lists it, read talks to a
simulator started by ``meterd simulate`` in its own process over TCP, with a frame trace."""

import json
import os
import shutil
import signal
import subprocess

from meterd.storage.sqlite import SqliteStore


def test_demo_then_readings(run_meterd, tmp_path):
    data = tmp_path / "demo-data"
    p = run_meterd("demo", "--duration", "12", "--interval", "3", "--data-dir", str(data), timeout=120)
    assert p.returncode == 0, p.stderr
    assert "000000000001" in p.stdout and "000000000009" in p.stdout
    assert "FAILED: timeout" in p.stdout  # the demo's dead meter
    assert (data / "demo.toml").exists()
    r = run_meterd("readings", "--meter", "9", "--data-dir", str(data), "--quantity",
                   "energy.active.import.total", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) >= 2 and all(row["unit"] == "kWh" for row in rows)
    values = [float(row["value"]) for row in rows]
    assert values == sorted(values)  # a register never runs backwards
    # a DL/T 645-1997 meter (3), a Modbus RTU meter on a pty (17) and a Modbus TCP meter (21): the
    # same quantities, units and kinds of value as the 2007 meters
    for meter in ("3", "17", "21"):
        r = run_meterd("readings", "--meter", meter, "--data-dir", str(data), "--json")
        assert r.returncode == 0, r.stderr
        got = {row["quantity"]: row["unit"] for row in json.loads(r.stdout)}
        assert got["energy.active.import.total"] == "kWh" and got["voltage.a"] == "V", (meter, got)
        assert {"energy.active.import.rate2", "current.a", "power.active.total"} <= set(got)
    # the terminals: a Q/GDW 1376.1 concentrator (101..104), a GPRS DTU (201..203) and, where mosquitto is
    # installed, an MQTT terminal (000001000001): their meters are read like the others
    mqtt = ("000001000001",) if shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto") else ()
    with SqliteStore(data) as store:  # (straight from the store: a CLI call per meter costs seconds)
        for meter in ("000000000101", "000000000104", "000000000201", *mqtt):
            assert "energy.active.import.total" in store.latest(meter), meter
    # the concentrator's events as anomalies: the archive the master downloaded at login (ERC3, pn 4 was
    # missing) and meter 103, cut off 5 s in, no longer answering its RS-485 reading (ERC31)
    a = run_meterd("anomalies", "-c", str(data / "demo.toml"), "--json")
    assert a.returncode == 0, a.stderr
    found = {(e["meter"], e["kind"]) for e in json.loads(a.stdout)}
    assert {("4401-0001", "terminal.erc3"), ("000000000103", "terminal.erc31")} <= found, found
    # the billing system's side: the payments file taken (one record quarantined), balances sent out
    billing = data / "billing"
    assert [f.name.startswith("payments-demo") for f in (billing / "payments" / "processed").iterdir()] == [True]
    assert any(f.suffix == ".csv" for f in (billing / "balances" / "outbox").iterdir())


def test_read_with_trace_against_meterd_simulate(meterd_bin, run_meterd):
    sim = subprocess.Popen([meterd_bin, "simulate", "--pty", "0", "--tcp-buses", "1", "--meters-per-bus", "2",
                            "--fault", "000000000002:no_answer", "--json"], stdout=subprocess.PIPE, text=True)
    try:
        doc = json.loads(sim.stdout.readline())
        endpoint = doc["buses"][0]["endpoint"]
        p = run_meterd("read", "--tcp", endpoint, "--address", "1", "--di", "00010000", "--di", "02010100",
                       "--trace", "--json")
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        quantities = {r["quantity"] for r in out["readings"]}
        assert quantities == {"energy.active.import.total", "voltage.a"}
        assert "TX ->" in p.stderr and "RX <-" in p.stderr and "68 01 00 00 00 00 00 68 11 04" in p.stderr
        dead = run_meterd("read", "--tcp", endpoint, "--address", "2", "--di", "00010000", "--timeout", "0.3")
        assert dead.returncode == 1 and "timeout" in dead.stderr
        bad = run_meterd("read", "--tcp", endpoint, "--address", "1", "--di", "XYZ")
        assert bad.returncode == 2 and "XYZ" in bad.stderr
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(10)


def test_run_daemon_from_a_config_file(meterd_bin, run_meterd, tmp_path):
    sim = subprocess.Popen([meterd_bin, "simulate", "--pty", "0", "--tcp-buses", "1", "--meters-per-bus", "2",
                            "--json"], stdout=subprocess.PIPE, text=True)
    try:
        doc = json.loads(sim.stdout.readline())
        host, _, port = doc["buses"][0]["endpoint"].rpartition(":")
        cfg = tmp_path / "site.toml"
        cfg.write_text(f"""
[store]
data_dir = "data"
flush_interval = "200ms"
[channels.dtu]
tcp = {{ host = "{host}", port = {port} }}
[[meters]]
address = "2"
channel = "dtu"
ct = 100
[[polls]]
name = "rt"
interval = "1s"
items = ["00010000", "02010100"]
""")
        p = run_meterd("run", "-c", str(cfg), "--duration", "2.5")
        assert p.returncode == 0, p.stderr
        assert "plan: channel dtu" in p.stderr
        r = run_meterd("readings", "-c", str(cfg), "--meter", "000000000002", "--json")
        rows = json.loads(r.stdout)
        assert {row["quantity"] for row in rows} == {"energy.active.import.total", "voltage.a"}
        assert len(rows) >= 4  # at least two rounds of two values
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(10)


def test_read_1997_and_modbus_meters_against_meterd_simulate(meterd_bin, run_meterd):
    sim = subprocess.Popen([meterd_bin, "simulate", "--pty", "0", "--tcp-buses", "1", "--modbus-tcp", "1",
                            "--meters-per-bus", "2", "--v1997", "2", "--json"], stdout=subprocess.PIPE, text=True)
    try:
        doc = json.loads(sim.stdout.readline())
        dlt, mb = doc["buses"][0], doc["buses"][1]
        assert mb["protocol"] == "modbus"
        p = run_meterd("read", "--tcp", dlt["endpoint"], "--protocol", "dlt645-1997", "--address", "2",
                       "--di", "9010", "--quantity", "voltage.a", "--trace", "--json")
        assert p.returncode == 0, p.stderr
        got = {r["quantity"]: r for r in json.loads(p.stdout)["readings"]}
        assert set(got) == {"energy.active.import.total", "voltage.a"}
        assert "68 02 00 00 00 00 00 68 01 02 43 C3" in p.stderr  # 1997 read of 9010 (+33: 43 C3)
        # the 2007 meter on the same bus does not answer 1997
        p = run_meterd("read", "--tcp", dlt["endpoint"], "--protocol", "dlt645-1997", "--address", "1",
                       "--di", "9010", "--timeout", "0.3", "--retries", "0")
        assert p.returncode == 1 and "timeout" in p.stderr
        address, unit = mb["meters"][1], mb["units"][mb["meters"][1]]
        p = run_meterd("read", "--tcp", mb["endpoint"], "--protocol", "modbus", "--unit", str(unit),
                       "--address", address, "--quantity", "voltage.a", "--quantity", "relay.open",
                       "--ct", "10", "--trace", "--json")
        assert p.returncode == 0, p.stderr
        got = {r["quantity"]: r["value"] for r in json.loads(p.stdout)["readings"]}
        assert set(got) == {"voltage.a", "relay.open"} and got["relay.open"] is False
        assert "ReadHoldingRegisters" in p.stderr or "FC" in p.stderr or "TX ->" in p.stderr
        bad = run_meterd("read", "--tcp", mb["endpoint"], "--protocol", "modbus", "--quantity", "voltage.a")
        assert bad.returncode == 2 and "--unit" in bad.stderr
        bad = run_meterd("read", "--tcp", mb["endpoint"], "--protocol", "modbus", "--unit", "1",
                         "--model", "sdm999", "--quantity", "voltage.a")
        assert bad.returncode == 2 and "sdm999" in bad.stderr
    finally:
        sim.terminate()
        sim.wait(10)
