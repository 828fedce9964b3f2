"""Stopping a daemon with analytics and prepaid control logs no error (issue 18): analytics began one
last check after stop, in a thread, and asked prepaid control's store -- closed at stop -- for the
accounts of its outages: "analytics check failed ... Cannot operate on a closed database" with a
traceback at nearly every stop.  It is a race, so the daemon is started and stopped several times."""

from __future__ import annotations

import asyncio
import logging
import tomllib
from datetime import UTC, datetime

from conftest import free_port
from meterd.app import build_node
from meterd.config.loader import parse_config
from meterd.storage.sqlite import SqliteStore

METERS = ["000000000001", "000000000002", "000000000003"]


def config_text(data_dir) -> str:
    lines = [f'[store]\ndata_dir = "{data_dir}"\nflush_interval = "200ms"\n',
             # nothing listens there: the meters never answer (no data, an outage), fast
             f'[channels.bus1]\ntcp = {{ host = "127.0.0.1", port = {free_port()} }}\nretries = 0\n']
    lines += [f'[[meters]]\naddress = "{m}"\nchannel = "bus1"\n' for m in METERS]
    lines.append('[[polls]]\nname = "rt"\ninterval = 0.5\nquantities = ["energy.active.import.total"]\n')
    lines.append('[prepaid]\ndry_run = true\ncheck_every = "100ms"\n'
                 'thresholds = { reminder = "50", alarm = "20", trip = "0", reclose = "10" }\n'
                 '[[prepaid.tariffs]]\nname = "res"\n[[prepaid.tariffs.versions]]\neffective = 2026-01-01\n'
                 'kind = "flat"\nprice = "0.50"\n')
    lines += [f'[[prepaid.accounts]]\naccount = "A{i}"\ntariff = "res"\nmeters = ["{m}"]\n'
              for i, m in enumerate(METERS)]
    lines.append('[[topology.units]]\nname = "TA1"\n')
    lines += [f'[[topology.points]]\nmeter = "{m}"\nunit = "TA1"\nrole = "{"supply" if i == 0 else "sales"}"\n'
              for i, m in enumerate(METERS)]
    lines.append('[analytics]\ncheck_every = "150ms"\noutage_silent_after = "1ms"\noutage_min_meters = 2\n')
    return "\n".join(lines)


async def test_stopping_a_daemon_with_analytics_logs_no_error(tmp_path, caplog):
    config = parse_config(tomllib.loads(config_text(tmp_path)), source="site.toml")
    caplog.set_level(logging.INFO)
    for run in range(5):
        with SqliteStore(tmp_path) as store:
            node = build_node(config, store, clock=lambda: datetime.now(UTC))
            stop = asyncio.Event()
            task = asyncio.create_task(node.run(stop))
            await asyncio.sleep(0.5 + 0.13 * run)  # stop at a different point of the checks each time
            stop.set()
            await asyncio.wait_for(task, 30)
        assert node.analytics is not None and node.analytics.checks >= 1, run
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert problems == [], [(r.name, r.getMessage(), r.exc_info) for r in problems]


async def test_a_check_running_when_the_service_is_cancelled_ends_before_its_stores_close(tmp_path, caplog):
    """The daemon cancels a service that has not ended 5 s after stop; a check in its worker
    thread then goes on, so its stores must stay open until it ends (its error, if any, logged)."""
    import threading

    from meterd.analytics.runtime import AnalyticsRuntime

    class Slow(AnalyticsRuntime):
        def _detect(self, now):
            entered.set()
            release.wait(10)
            return super()._detect(now)  # uses the anomaly store: closed under it, this raised

    entered, release = threading.Event(), threading.Event()
    config = parse_config(tomllib.loads(config_text(tmp_path)), source="site.toml")
    runtime = Slow(config.analytics, meters=METERS, where=tmp_path, clock=lambda: datetime.now(UTC))
    caplog.set_level(logging.INFO)
    task = asyncio.create_task(runtime.run(asyncio.Event()))
    assert await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    await asyncio.sleep(0.2)
    assert not task.done()  # waiting for the check's thread, stores open
    release.set()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert problems == [], [(r.name, r.getMessage(), r.exc_info) for r in problems]
