"""The daemon serves the HTTP API: a token made with ``meterd token``, a viewer reads (and scrapes
/metrics), an operator pays, a revoked token is refused; the token's secret is never stored."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request

from conftest import free_port

SITE = """
[store]
data_dir = "data"
[channels.bus1]
tcp = {{ host = "127.0.0.1", port = 9 }}
[[meters]]
address = "000000000001"
channel = "bus1"
[[polls]]
name = "p"
interval = 60
quantities = ["energy.active.import.total"]
[api]
port = {port}
[prepaid]
dry_run = true
[[prepaid.tariffs]]
name = "res"
[[prepaid.tariffs.versions]]
effective = 2026-01-01
kind = "flat"
price = "0.5"
[[prepaid.accounts]]
account = "A1"
tariff = "res"
meters = ["000000000001"]
opening_balance = "0"  # active at 0.00: the pass alarms it (a dry-run command for /metrics to count)
"""


def call(port: int, path: str, token: str | None = None, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_the_daemon_serves_the_api_with_tokens_from_the_cli(meterd_bin, run_meterd, tmp_path):
    port = free_port()
    (tmp_path / "site.toml").write_text(SITE.format(port=port))
    made = run_meterd("token", "create", "ops-li", "--role", "operator", "-c", "site.toml", "--json")
    assert made.returncode == 0, made.stderr
    operator = json.loads(made.stdout)
    viewer = json.loads(run_meterd("token", "create", "wall", "--role", "viewer", "-c", "site.toml", "--json").stdout)
    daemon = subprocess.Popen([meterd_bin, "run", "-c", "site.toml"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if call(port, "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and daemon.poll() is None, daemon.stderr.read() if daemon.stderr else ""
            time.sleep(0.2)
        assert call(port, "/api/v1/accounts")[0] == 401
        status, accounts = call(port, "/api/v1/accounts", viewer["token"])
        assert status == 200 and "A1" in json.dumps(accounts)
        assert call(port, "/api/v1/payments", viewer["token"], {"account": "A1", "amount": "10", "ref": "W1"})[0] == 403
        status, paid = call(port, "/api/v1/payments", operator["token"], {"account": "A1", "amount": "10", "ref": "W1"})
        assert status == 201, paid
        metrics = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                         headers={"Authorization": f"Bearer {viewer['token']}"})
        with urllib.request.urlopen(metrics, timeout=10) as response:
            text = response.read().decode()
        assert 'meterd_channel_transactions_total{channel="bus1"}' in text
        assert "# TYPE meterd_channel_waiting gauge" in text and 'meterd_commands{state="dry-run"}' in text
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
            raise AssertionError("/metrics without a token")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
        assert run_meterd("token", "revoke", viewer["id"], "-c", "site.toml").returncode == 0
        assert call(port, "/api/v1/accounts", viewer["token"])[0] == 401
    finally:
        daemon.terminate()
        daemon.wait(30)
    assert daemon.returncode == 0
    ledger = json.loads(run_meterd("ledger", "A1", "-c", "site.toml", "--json").stdout)
    assert ledger["balance"] == "10.00" and [e["actor"] for e in ledger["entries"]] == ["config", "ops-li"]
    listed = run_meterd("token", "list", "-c", "site.toml").stdout
    assert "REVOKED" in listed and operator["token"] not in listed
    for f in (tmp_path / "data").iterdir():
        assert operator["token"].encode() not in f.read_bytes()
