"""The quality store's reads for a terminal's console page and the offline alarm
(``online_intervals``, ``recent_failures``, ``last_online_end``), on SQLite and PostgreSQL: the
API reads them through these, not through the store's connection."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from meterd.storage import open_store
from meterd.storage.quality import QualityStore
from meterd.storage.sqlite import Attempt

T0 = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)


def test_a_terminals_intervals_failures_and_last_online_end(state_where: Any) -> None:
    with open_store(state_where) as store:
        store.record_attempts([
            Attempt("000000000001", "dtu-1", "00010000", T0 + timedelta(minutes=m), outcome, 0.1 if outcome == "ok" else None,
                    f"#{m}")
            for m, outcome in enumerate(["ok", "timeout", "no_record", "link", "ok", "garbled", "timeout"])
        ] + [Attempt("000000000002", "dtu-2", "00010000", T0, "timeout", None, "other channel")])
    with QualityStore(state_where) as quality:
        quality.record_online("dtu-1", T0, T0 + timedelta(hours=1))
        quality.record_online("dtu-1", T0 + timedelta(hours=2), T0 + timedelta(hours=3))
        quality.record_online("dtu-1", T0 + timedelta(hours=4))  # online now
        quality.record_online("dtu-2", T0, T0 + timedelta(minutes=30))
        assert quality.online_intervals("dtu-1", T0 + timedelta(minutes=90)) == [
            (T0 + timedelta(hours=4), None), (T0 + timedelta(hours=2), T0 + timedelta(hours=3))]
        assert quality.online_intervals("dtu-1", T0, limit=1) == [(T0 + timedelta(hours=4), None)]
        assert quality.online_intervals("dtu-9", T0) == []
        failures = quality.recent_failures("dtu-1", limit=3)
        assert [(f.outcome, f.detail, f.timestamp) for f in failures] == [
            ("timeout", "#6", T0 + timedelta(minutes=6)), ("garbled", "#5", T0 + timedelta(minutes=5)),
            ("link", "#3", T0 + timedelta(minutes=3))]  # no ok, no no_record, newest first
        assert all(f.channel == "dtu-1" and f.meter == "000000000001" for f in failures)
        assert quality.last_online_end() == {"dtu-1": T0 + timedelta(hours=3), "dtu-2": T0 + timedelta(minutes=30)}
