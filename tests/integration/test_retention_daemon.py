"""The daemon prunes by itself: a node built from a config with a short retention prunes old
readings and attempts in the background shortly after start (on SQLite and on PostgreSQL), says so
in one INFO line, and among collector nodes only the node leading the ``retention`` job prunes."""

from __future__ import annotations

import asyncio
import logging
import time
import tomllib
from datetime import datetime, timedelta

from test_retention import ATTEMPTS_CUT, LIVE, NOW, READINGS_CUT, _counts, _kept, _site

from meterd.app import build_node
from meterd.config.loader import parse_config
from meterd.storage import open_store
from meterd.storage.database import Database, close_pools

T0 = time.monotonic()


def clock() -> datetime:
    """The site's time: NOW when the test module was loaded, going on with the wall clock."""
    return NOW + timedelta(seconds=time.monotonic() - T0)


def config(where, extra: str = "", *, data_dir) -> object:
    text = f'[store]\ndata_dir = "{data_dir}"\nkeep_readings = "10d"\nkeep_attempts = "5d"\n'
    if isinstance(where, Database):
        text += f'database = "{where.url}"\npool_size = 4\n'
    return parse_config(tomllib.loads(text + extra), source="site.toml")


async def run_until(nodes, done, timeout: float = 30.0) -> None:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(n.run(stop)) for n in nodes]
    try:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def test_a_daemon_with_a_short_retention_prunes_in_the_background(state_where, tmp_path, caplog):
    due = _site(state_where)
    kept = _kept(state_where)
    before = _counts(state_where)
    caplog.set_level(logging.INFO, logger="meterd.storage.retention")
    with open_store(state_where, clock=clock) as store:
        node = build_node(config(state_where, data_dir=tmp_path / "data"), store, clock=clock)
        assert node.retention is not None
        node.retention.start_delay = 0.2
        asyncio.run(run_until([node], lambda: node.retention.runs >= 1))
        assert node.retention.runs == 1  # once after start; the next one is tomorrow at 03:30
        report = node.retention.last
    assert report is not None and not report.dry_run
    assert (report.readings.rows, report.attempts.rows) == (due["readings"], due["attempts"])
    assert report.readings_before == READINGS_CUT and report.attempts_before >= ATTEMPTS_CUT
    assert _counts(state_where) == (before[0] - due["readings"], before[1] - due["attempts"])
    assert _kept(state_where)["ledger"] == kept["ledger"]
    assert _kept(state_where)["registers"] == kept["registers"]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retention: pruned")]
    assert lines == [report.line()]
    assert f"{due['readings']} readings before 2026-11-21 08:00+08:00" in lines[0]
    assert "longest transaction" in lines[0]


def test_among_collector_nodes_only_the_leader_prunes(pg_url, tmp_path):
    db = Database(pg_url)
    due = _site(db)
    stores = [open_store(db, clock=clock) for _ in range(2)]
    try:
        nodes = [build_node(config(db, f'[cluster]\nnode = "n{i}"\nheartbeat = "200ms"\nlease_time = "1s"\n',
                                   data_dir=tmp_path / f"n{i}"), store, clock=clock)
                 for i, store in enumerate(stores)]
        for node in nodes:
            node.retention.start_delay = 0.3

        first: list[float] = []
        leading: list[list[bool]] = []

        def done() -> bool:  # a prune, then as long again as the start delay and more: the other did not
            if not first and any(n.retention.runs for n in nodes):
                first.append(time.monotonic())
                leading.append([n.cluster.leads("retention") for n in nodes])
            return bool(first) and time.monotonic() - first[0] > 1.5

        asyncio.run(run_until(nodes, done))
        runs = [n.retention.runs for n in nodes]
        assert sorted(runs) == [0, 1], runs
        assert leading == [[r == 1 for r in runs]]  # the one that pruned led the job
        leader = nodes[runs.index(1)]
        assert (leader.retention.last.readings.rows, leader.retention.last.attempts.rows) == (
            due["readings"], due["attempts"])
    finally:
        for store in stores:
            store.close()
        close_pools()
    with open_store(db, clock=clock) as store:
        assert min(r.timestamp for r in store.readings(LIVE)) >= READINGS_CUT
        assert min(a.timestamp for a in store.attempts()) >= ATTEMPTS_CUT - timedelta(seconds=60)
    close_pools()


def test_forever_in_the_config_prunes_nothing(tmp_path, caplog):
    _site(tmp_path)
    before = _counts(tmp_path)
    caplog.set_level(logging.INFO, logger="meterd.storage.retention")
    cfg = parse_config(tomllib.loads(f'[store]\ndata_dir = "{tmp_path}"\nkeep_readings = "forever"\nkeep_attempts = 0\n'),
                       source="site.toml")
    with open_store(tmp_path) as store:
        node = build_node(cfg, store, clock=clock)
        node.retention.start_delay = 0.1
        asyncio.run(run_until([node], lambda: False, timeout=1.0))
        assert node.retention.runs == 0
    assert _counts(tmp_path) == before
    assert any("kept for ever; nothing to prune" in r.getMessage() for r in caplog.records)
