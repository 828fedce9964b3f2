"""``meterd prune -c site.toml [--dry-run] [--json]`` through the real command, on SQLite and on
PostgreSQL: the dry run counts what would go and changes nothing, the prune deletes exactly that
and says so, a second prune finds nothing; a missing store and a bad key are exit 2."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from test_retention import _counts, _kept, _site

from meterd.storage.database import Database


def site(tmp_path, where, extra: str = 'keep_readings = "10d"\nkeep_attempts = "5d"\n'):
    text = f'[store]\ndata_dir = "data"\n{extra}'
    if isinstance(where, Database):
        text += f'database = "{where.url}"\npool_size = 2\n'
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_dry_run_changes_nothing_then_the_prune_deletes_what_it_counted(state_where, tmp_path, run_meterd):
    where = state_where if isinstance(state_where, Database) else tmp_path / "data"
    config = site(tmp_path, state_where)
    due = _site(where, now=datetime.now(UTC))
    kept, before = _kept(where), _counts(where)

    dry = run_meterd("prune", "-c", str(config), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    doc = json.loads(dry.stdout)
    assert doc["dry_run"] is True
    assert (doc["readings"]["rows"], doc["attempts"]["rows"]) == (due["readings"], due["attempts"])
    assert doc["policy"] == {"keep_readings_days": 10, "keep_attempts_days": 5}
    assert doc["readings"]["before"].endswith("T08:00:00+08:00")  # a UTC day's start, in site time
    assert _counts(where) == before and _kept(where) == kept

    text = run_meterd("prune", "-c", str(config), "--dry-run")
    assert text.returncode == 0, text.stderr
    assert f"readings: {due['readings']:,} would delete (older than 10 days: before " in text.stdout
    assert "the newest of each meter and quantity stays" in text.stdout
    assert f"attempts: {due['attempts']:,} would delete (older than 5 days" in text.stdout
    assert "dry run: nothing was changed" in text.stdout
    assert _counts(where) == before

    done = run_meterd("prune", "-c", str(config))
    assert done.returncode == 0, done.stderr
    assert f"readings: {due['readings']:,} deleted" in done.stdout and f"attempts: {due['attempts']:,} deleted" in done.stdout
    assert "longest transaction" in done.stdout
    assert "retention: pruned" in done.stderr  # the log line the daemon writes too
    assert _counts(where) == (before[0] - due["readings"], before[1] - due["attempts"])
    assert _kept(where)["ledger"] == kept["ledger"] and _kept(where)["registers"] == kept["registers"]

    again = run_meterd("prune", "-c", str(config), "--json")
    assert again.returncode == 0, again.stderr
    assert (json.loads(again.stdout)["readings"]["rows"], json.loads(again.stdout)["attempts"]["rows"]) == (0, 0)


def test_forever_and_bad_input(tmp_path, run_meterd):
    config = site(tmp_path, tmp_path / "data", 'keep_readings = "forever"\nkeep_attempts = "forever"\n')
    missing = run_meterd("prune", "-c", str(config))
    assert missing.returncode == 2 and "no store in" in missing.stderr and "Traceback" not in missing.stderr
    _site(tmp_path / "data", now=datetime.now(UTC))
    before = _counts(tmp_path / "data")
    kept = run_meterd("prune", "-c", str(config))
    assert kept.returncode == 0, kept.stderr
    assert 'readings: kept for ever ([store] keep_readings = "forever"): nothing to delete' in kept.stdout
    assert _counts(tmp_path / "data") == before

    bad = run_meterd("prune", "-c", str(site(tmp_path, tmp_path / "data", 'keep_readings = "1h"\n')))
    assert bad.returncode == 2 and "store.keep_readings: must be at least 2d" in bad.stderr
