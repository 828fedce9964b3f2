"""The installed command end to end: demo fills a store, readings lists it, read talks to a
simulator started by ``meterd simulate`` in its own process over TCP, with a frame trace."""

import json
import signal
import subprocess


def test_demo_then_readings(run_meterd, tmp_path):
    data = tmp_path / "demo-data"
    p = run_meterd("demo", "--duration", "10", "--interval", "3", "--data-dir", str(data), timeout=120)
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
