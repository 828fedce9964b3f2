"""Restoring a PostgreSQL backup taken before the anomalies' evidence moved to a table of its own
(schema step 1) into the same database after the upgrade: pg_restore --clean replaces only the
tables the backup holds, so ``anomaly_evidence`` is still there with the newer events' evidence,
and step 1 runs again on the restored ``anomalies``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg

from meterd.control.state import ControlStore
from meterd.storage.anomalies import _SCHEMA, AnomalyStore, Finding, Kind, Severity
from meterd.storage.backup import backup, restore
from meterd.storage.database import Database, translate_schema

T0 = datetime(2026, 12, 1, tzinfo=UTC)
OLD = [{"meter": "000000000001", "quantity": "energy.active.import.total", "timestamp": "2026-11-30T00:00:00+00:00",
        "value": "12.5"}]


def test_a_backup_from_before_the_evidence_table_restores_over_an_upgraded_database(pg_server, tmp_path):
    url = pg_server.new_database()
    db = Database(url, pool_size=2)
    ControlStore(db).close()  # the old release's stores: schema_versions with the control store in it
    with psycopg.connect(url, autocommit=True) as conn:  # the anomalies table as the old release made it
        for statement in translate_schema(_SCHEMA):
            conn.execute(statement)
        conn.execute("INSERT INTO anomalies (meter, kind, severity, opened_ts, last_seen_ts, detail, evidence) "
                     "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                     ("000000000001", "no_data", "warning", 1, 2, "old event", json.dumps(OLD)))
    backup(db, tmp_path / "before", now=T0)

    with AnomalyStore(db) as store:  # the upgrade: the evidence moves to anomaly_evidence
        assert [e.evidence for e in store.events()] == [tuple(OLD)]

    restore(tmp_path / "before", db)  # back to the day before the upgrade

    with AnomalyStore(db) as store:  # step 1 again, over the table the restore left
        (event,) = store.events()
        assert event.evidence == tuple(OLD)
        store.update([Finding("000000000001", Kind.NO_DATA, Severity.WARNING, T0, "still no data", ())],
                     [], T0 + timedelta(minutes=1))
        assert store.events()[0].evidence == tuple(OLD)
