"""The whole daemon from one config file, with terminals instead of local buses: meters behind an
MQTT terminal (a real Mosquitto broker) and behind a GPRS DTU, read by a scheduled task
(APScheduler), readings written to a real line-protocol server (InfluxDB v2 write API, here
VictoriaMetrics), attempts and quality kept in the SQLite state store."""

from __future__ import annotations

import asyncio
import tomllib
from datetime import datetime, timezone

import pytest
from conftest import free_port
from mosquitto import Mosquitto
from test_influx_store import victoria  # noqa: F401 -- the server fixture

from meterd.collector.daemon import Daemon
from meterd.config.loader import parse_config
from meterd.errors import ConfigError
from meterd.simulators.dtu import run_dtu_fleet
from meterd.simulators.mqtt_terminal import run_mqtt_fleet
from meterd.clock import local_date
from meterd.storage.quality import QualityStore
from meterd.storage.sqlite import SqliteStore


def site(data_dir, broker_port: int, dtu_port: int, influx_url: str) -> str:
    return f"""
[store]
data_dir = "{data_dir}"
flush_interval = "200ms"

[store.influxdb]
url = "{influx_url}"
org = "utility"
bucket = "meterd"
token_env = "TEST_INFLUX_TOKEN"
spool_keep_free_mb = 0  # the guard has tests of its own; these must not depend on the disk

[mqtt]
host = "127.0.0.1"
port = {broker_port}
client_id = "meterd-test-master"

[listeners.gprs]
host = "127.0.0.1"
port = {dtu_port}
formats = ["usr-ascii"]

[channels.t1]
mqtt = {{ terminal = "T001" }}
response_timeout = "2s"

[channels.d1]
dtu = {{ listener = "gprs", terminal = "DTU00000001" }}
response_timeout = "2s"

[[meters]]
address = "000001000001"
channel = "t1"
group = "mqtt"

[[meters]]
address = "000001000002"
channel = "t1"
group = "mqtt"

[[meters]]
address = "1"
channel = "d1"
group = "gprs"

[[meters]]
address = "2"
channel = "d1"
group = "gprs"

[[tasks]]
name = "realtime"
kind = "realtime"
every = "1s"
quantities = ["energy.active.import.total", "voltage.a"]
"""


async def test_terminals_tasks_and_influx_end_to_end(tmp_path, victoria, monkeypatch):  # noqa: F811
    monkeypatch.setenv("TEST_INFLUX_TOKEN", "not-checked-by-victoria")
    server = victoria().start()
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    dtu_port = free_port()
    config = parse_config(tomllib.loads(site(tmp_path / "data", broker.port, dtu_port, server.url)), "site.toml")
    mqtt_fleet = await run_mqtt_fleet(1, 2, "127.0.0.1", broker.port)
    try:
        with SqliteStore(config.store.data_dir) as store:
            daemon = Daemon(config, store, clock=lambda: datetime.now(timezone.utc))
            stop = asyncio.Event()
            task = asyncio.create_task(daemon.run(stop))
            for _ in range(100):
                if daemon.listeners["gprs"].running:
                    break
                await asyncio.sleep(0.05)
            dtus = await run_dtu_fleet(1, 2, "127.0.0.1", dtu_port, fmt="usr-ascii", heartbeat=5.0)
            try:
                wanted = {"000001000001", "000001000002", "000000000001", "000000000002"}
                for _ in range(150):
                    ok = {a.meter for a in store.attempts() if a.outcome == "ok"}
                    if wanted <= ok:
                        break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.5)
            finally:
                stop.set()
                await task
                await dtus.close()
            attempts = store.attempts()
            assert store.count_readings() == 0  # readings went to InfluxDB, not SQLite
            quality = QualityStore(store).report(local_date(datetime.now(timezone.utc)))
    finally:
        await mqtt_fleet.close()
        broker.stop()
    assert wanted <= {a.meter for a in attempts if a.outcome == "ok"}
    for meter in wanted:
        samples = server.samples(meter)
        assert set(samples) == {"energy.active.import.total", "voltage.a"}, (meter, samples)
        assert 150 < samples["voltage.a"][-1][1] < 300
    assert quality.total.attempts == len(attempts)
    channels = {row.channel: row for row in quality.channels}
    assert set(channels) == {"t1", "d1"}
    assert channels["t1"].online_seconds > 0 and channels["t1"].ok > 0


def test_secrets_are_refused_inline_and_named_when_missing(tmp_path, monkeypatch):
    text = site(tmp_path, 1883, 9000, "http://127.0.0.1:8428")
    bad = text.replace('token_env = "TEST_INFLUX_TOKEN"', 'token = "s3cr3t"\ntoken_env = "TEST_INFLUX_TOKEN"')
    bad = bad.replace('client_id = "meterd-test-master"', 'client_id = "m"\npassword = "hunter2"')
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(bad), "site.toml")
    text_ = "\n".join(info.value.problems)
    assert "store.influxdb.token: a secret must not be written in the config" in text_
    assert "mqtt.password: a secret must not be written in the config" in text_
    assert "s3cr3t" not in text_ and "hunter2" not in text_
    monkeypatch.delenv("TEST_INFLUX_TOKEN", raising=False)
    config = parse_config(tomllib.loads(text), "site.toml")
    with SqliteStore(tmp_path / "d") as store, pytest.raises(ConfigError, match="TEST_INFLUX_TOKEN"):
        Daemon(config, store)
