"""Schema versions of the embedded store's own tables (readings.sqlite3's ``readings``,
state.sqlite3's ``archive``): recorded when a store is opened, an unversioned data directory as
meterd wrote it before versions were kept is brought to version 1 with its rows intact, and a file
newer than this meterd is refused before anything is written to it."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from meterd.errors import ConfigError
from meterd.readings import Reading
from meterd.storage.sqlite import (
    _READINGS_SCHEMA,
    _STATE_SCHEMA,
    ARCHIVE_MIGRATIONS,
    READINGS_FILE,
    READINGS_MIGRATIONS,
    STATE_FILE,
    Attempt,
    MeterRecord,
    SqliteStore,
)

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
M1 = "000000000001"


def versions(path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT store, version FROM schema_versions").fetchall())
    finally:
        conn.close()


def test_a_new_data_directory_records_both_versions(tmp_path):
    SqliteStore(tmp_path).close()
    assert versions(tmp_path / READINGS_FILE) == {"readings": len(READINGS_MIGRATIONS)} == {"readings": 1}
    assert versions(tmp_path / STATE_FILE) == {"archive": len(ARCHIVE_MIGRATIONS)} == {"archive": 1}
    SqliteStore(tmp_path).close()  # opened again: nothing to do, nothing changed
    assert versions(tmp_path / READINGS_FILE) == {"readings": 1}


def test_an_unversioned_data_directory_is_migrated_with_its_rows(tmp_path, caplog):
    """Files as meterd wrote them before versions were kept (version 0): the same tables, no
    ``schema_versions``."""
    with sqlite3.connect(tmp_path / READINGS_FILE) as conn:
        conn.executescript(_READINGS_SCHEMA)
        conn.execute("INSERT INTO readings VALUES (?, 'energy.active.import.total', ?, '123.45', 'decimal', 'kWh', "
                     "'good')", (M1, int(T0.timestamp() * 1000)))
    with sqlite3.connect(tmp_path / STATE_FILE) as conn:
        conn.executescript(_STATE_SCHEMA)
        conn.execute("INSERT INTO meters VALUES (?, 'bus1', 'dlt645-2007', '1', '1', 'old', 'default')", (M1,))
        conn.execute("INSERT INTO attempts (meter, channel, item, ts, outcome) VALUES (?, 'bus1', '00010000', ?, 'ok')",
                     (M1, int(T0.timestamp() * 1000)))
    caplog.set_level("INFO", logger="meterd.storage.sqlite")
    with SqliteStore(tmp_path) as store:
        assert store.readings(M1) == [Reading(M1, "energy.active.import.total", T0, Decimal("123.45"), "kWh")]
        assert store.meter(M1) == MeterRecord(M1, "bus1", "dlt645-2007", Decimal(1), Decimal(1), "old")
        assert [a.item for a in store.attempts()] == ["00010000"]
        store.record_attempts([Attempt(M1, "bus1", "00010000", T0, "timeout")])  # the log goes on
    assert versions(tmp_path / READINGS_FILE) == {"readings": 1}
    assert versions(tmp_path / STATE_FILE) == {"archive": 1}
    migrated = [r.getMessage() for r in caplog.records if "migrated" in r.getMessage()]
    assert any("readings tables migrated from schema version 0 to 1" in m for m in migrated), migrated
    assert any("archive tables migrated from schema version 0 to 1" in m for m in migrated), migrated


@pytest.mark.parametrize(("file", "store"), [(READINGS_FILE, "readings"), (STATE_FILE, "archive")])
def test_a_file_newer_than_this_meterd_is_refused_untouched(tmp_path, file, store):
    SqliteStore(tmp_path).close()
    conn = sqlite3.connect(tmp_path / file, isolation_level=None)
    conn.execute("UPDATE schema_versions SET version = 9 WHERE store = ?", (store,))
    assert conn.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)  # a later meterd's choice
    conn.close()
    before = (tmp_path / file).read_bytes()
    with pytest.raises(ConfigError, match=rf"{file}: the {store} tables are at schema version 9, newer than this "
                                          r"meterd knows \(1\): upgrade meterd"):
        SqliteStore(tmp_path)
    assert (tmp_path / file).read_bytes() == before
    assert not (tmp_path / f"{file}-wal").exists()


def test_a_new_data_directory_says_its_tables_were_created_not_migrated(tmp_path, caplog):
    # a new user's first run: "migrated from schema version 0" read as if an old database were there
    from meterd.control.state import ControlStore

    caplog.set_level("INFO", logger="meterd.storage")
    SqliteStore(tmp_path).close()
    ControlStore(tmp_path).close()
    lines = [r.getMessage() for r in caplog.records if "schema version" in r.getMessage()]
    assert any(m.endswith("readings tables created at schema version 1") for m in lines), lines
    assert any(m.endswith("archive tables created at schema version 1") for m in lines), lines
    assert any("control tables created at schema version" in m for m in lines), lines
    assert not any("migrated" in m for m in lines), lines
    caplog.clear()
    SqliteStore(tmp_path).close()  # opened again: nothing to say
    ControlStore(tmp_path).close()
    assert not [r for r in caplog.records if "schema version" in r.getMessage()]


def test_a_new_state_database_says_created_on_either_backend(state_where, caplog):
    from meterd.control.state import ControlStore

    caplog.set_level("INFO", logger="meterd.storage")
    ControlStore(state_where).close()
    lines = [r.getMessage() for r in caplog.records if "schema version" in r.getMessage()]
    assert any("control tables created at schema version" in m for m in lines), lines
    assert not any("migrated" in m for m in lines), lines
