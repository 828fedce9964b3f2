"""``meterd migrate`` through the real command, on SQLite and on PostgreSQL: every store's tables
made, the versions before and after printed, a second run finds nothing to do, and a database
written by a later meterd is refused (exit 2) -- by ``meterd run`` too -- with nothing written."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from meterd.control.state import ControlStore
from meterd.storage.database import Database, Location


def site(tmp_path: Path, where: Location) -> Path:
    text = '[store]\ndata_dir = "data"\n'
    if isinstance(where, Database):
        text += f'database = "{where.url}"\npool_size = 2\n'
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def sql(where: Location, statement: str, params: tuple = ()) -> list[tuple]:
    """Run one statement on the site's state database, as an operator's psql/sqlite3 would."""
    if isinstance(where, Database):
        import psycopg

        with psycopg.connect(where.url, autocommit=True) as conn:
            cur = conn.execute(statement.replace("?", "%s"), params)
            return cur.fetchall() if cur.description else []
    with sqlite3.connect(Path(where) / "data" / "state.sqlite3") as conn:
        return conn.execute(statement, params).fetchall()


@pytest.fixture
def where(state_where: Location, tmp_path: Path) -> Location:
    """The site's location as the config names it: data_dir under tmp_path, or the database."""
    return state_where if isinstance(state_where, Database) else tmp_path


def test_migrate_makes_every_store_and_prints_the_versions(where, tmp_path, run_meterd):
    config = site(tmp_path, where)
    latest = len(ControlStore.MIGRATIONS)
    first = run_meterd("migrate", "-c", str(config), "--json")
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    assert doc["backend"] == ("postgresql" if isinstance(where, Database) else "sqlite")
    versions = {v["store"]: (v["before"], v["after"]) for v in doc["versions"]}
    assert versions["control"] == (0, latest)
    assert versions["readings"] == versions["archive"] == (0, 1)  # the readings/archive store, on both backends
    if isinstance(where, Database):  # the nodes' lease table versions its own too
        assert "cluster" in versions
        assert all(before == 0 and after >= 1 for before, after in versions.values())
        assert "cluster leases" in doc["opened"]
    assert doc["migrated"] is True
    assert {"readings and archive", "control", "quality", "sync", "tokens", "anomalies", "outages"} <= set(doc["opened"])
    tables = {r[0] for r in sql(where, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
                                if isinstance(where, Database) else "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"accounts", "ledger", "commands", "meters", "attempts", "api_tokens", "sync_jobs", "anomalies", "outages",
            "daily_registers", "lineloss_history", "schema_versions"} <= tables
    if isinstance(where, Database):
        assert not (tmp_path / "data" / "state.sqlite3").exists()  # nothing of the state on local disk

    again = run_meterd("migrate", "-c", str(config))
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout
    assert re.search(rf"^\s+control\s+{latest}\s+{latest}$", again.stdout, re.MULTILINE), again.stdout


def test_a_database_newer_than_this_meterd_is_refused_and_left_alone(where, tmp_path, run_meterd):
    config = site(tmp_path, where)
    assert run_meterd("migrate", "-c", str(config)).returncode == 0
    newer = len(ControlStore.MIGRATIONS) + 5
    sql(where, "UPDATE schema_versions SET version = ? WHERE store = 'control'", (newer,))
    before = sorted(sql(where, "SELECT store, version FROM schema_versions"))

    refused = run_meterd("migrate", "-c", str(config))
    assert refused.returncode == 2
    assert f"the control tables are at schema version {newer}, newer than this meterd knows" in refused.stderr
    assert "upgrade meterd" in refused.stderr and "nothing was migrated" in refused.stderr
    assert refused.stdout == ""
    assert sorted(sql(where, "SELECT store, version FROM schema_versions")) == before

    run = run_meterd("run", "-c", str(config), "--duration", "1")
    assert run.returncode == 2
    assert "newer than this meterd knows" in run.stderr and "nothing was started" in run.stderr
    assert sorted(sql(where, "SELECT store, version FROM schema_versions")) == before


def test_a_readings_store_newer_than_this_meterd_is_refused_by_migrate_and_run(where, tmp_path, run_meterd):
    config = site(tmp_path, where)
    assert run_meterd("migrate", "-c", str(config)).returncode == 0
    if isinstance(where, Database):
        sql(where, "UPDATE schema_versions SET version = 4 WHERE store = 'readings'")
    else:
        with sqlite3.connect(Path(where) / "data" / "readings.sqlite3") as conn:
            conn.execute("UPDATE schema_versions SET version = 4 WHERE store = 'readings'")
    for command in (("migrate",), ("run", "--duration", "1")):
        refused = run_meterd(*command, "-c", str(config))
        assert refused.returncode == 2, refused.stderr
        assert "the readings tables are at schema version 4, newer than this meterd knows (1)" in refused.stderr
        assert "Traceback" not in refused.stderr


def test_an_unreachable_database_is_exit_1(tmp_path, run_meterd):
    from conftest import free_port

    path = tmp_path / "site.toml"
    path.write_text(f'[store]\ndata_dir = "data"\ndatabase = "postgresql://meterd@127.0.0.1:{free_port()}/meterd"\n'
                    "pool_size = 1\n")
    result = run_meterd("migrate", "-c", str(path), timeout=120)
    assert result.returncode == 1, result.stderr
    assert "cannot reach the database postgresql://meterd@127.0.0.1" in result.stderr
