"""Collection quality: daily rollup of the attempts log per meter / channel / area, terminal
online rate from intervals, meters with no data, the 97 % line -- checked against tables worked
out by hand, on SQLite and on PostgreSQL (``state_where``) -- and the ``meterd quality`` command
through its argparse entry (SQLite: it reads a data directory)."""

from __future__ import annotations

import argparse
import json
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from meterd.cli import quality as quality_cli
from meterd.clock import CST, local_date
from meterd.storage import open_store
from meterd.storage.database import Database
from meterd.storage.quality import OnlineTracker, QualityStore, merged_seconds
from meterd.storage.sqlite import Attempt, MeterRecord, SqliteStore

DAY = date(2025, 3, 4)
T0 = datetime(2025, 3, 4, tzinfo=CST)  # 00:00 CST = 2025-03-03 16:00 UTC
AFTER = T0 + timedelta(days=2)  # "now" for a day that is over
A1, A2, A3, A4 = "000000000001", "000000000002", "000000000003", "000000000004"


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def attempts(meter: str, channel: str, outcomes: dict[str, int], start: float = 1.0) -> list[Attempt]:
    """``outcomes`` spread over the day from ``start`` hours, 1 minute apart, ok ones 0.2 s each."""
    out = []
    i = 0
    for outcome, n in outcomes.items():
        for _ in range(n):
            ts = at(start) + timedelta(minutes=i)
            out.append(Attempt(meter, channel, "00010000", ts, outcome, 0.2 if outcome == "ok" else None))
            i += 1
    return out


def fill(s):
    """The day worked out by hand: four meters on two channels in two areas."""
    s.upsert_meters([
        MeterRecord(A1, "bus1", "dlt645-2007", Decimal(1), Decimal(1), group="residential"),
        MeterRecord(A2, "bus1", "dlt645-2007", Decimal(1), Decimal(1), group="residential"),
        MeterRecord(A3, "bus2", "dlt645-2007", Decimal(1), Decimal(1), group="large"),
        MeterRecord(A4, "bus2", "modbus", Decimal(1), Decimal(1), group="large"),  # never answers a thing
    ])
    s.record_attempts([
        # A1: 10 attempts, all ok (one at 00:00:00.000 exactly: it belongs to the day)
        Attempt(A1, "bus1", "00010000", T0, "ok", 0.2),
        *attempts(A1, "bus1", {"ok": 9}),
        # A2: 10 attempts, 7 ok, 2 timeouts, 1 garbled -> 70 %
        *attempts(A2, "bus1", {"ok": 7, "timeout": 2, "garbled": 1}),
        # A3: 100 attempts, 97 ok, 3 abnormal -> exactly 97 %: on the line, not under it
        *attempts(A3, "bus2", {"ok": 97, "abnormal": 3}),
        # A4: only failures -> no data
        *attempts(A4, "bus2", {"timeout": 4}),
        # the days around: not counted for DAY
        Attempt(A1, "bus1", "00010000", T0 - timedelta(milliseconds=1), "timeout"),
        Attempt(A2, "bus1", "00010000", T0 + timedelta(days=1), "ok", 0.2),
    ])


@pytest.fixture
def store(state_where):
    with open_store(state_where) as s:
        fill(s)
        yield s


def online(q):
    """The terminals' online intervals worked out by hand."""
    # bus1: 00:00-12:00 and 11:00-23:30 overlap -> 23.5 h online = 97.92 %
    q.record_online("bus1", at(0), at(12))
    q.record_online("bus1", at(11), at(23.5))
    # bus2: online since the evening before until 06:00 (6 h of the day), then from 08:00 on, still
    # online (no end): 6 + 16 = 22 h = 91.67 %
    q.record_online("bus2", at(-2), at(6))
    q.record_online("bus2", at(8))


@pytest.fixture
def quality(store):
    with QualityStore(store, clock=lambda: AFTER) as q:
        online(q)
        yield q


@pytest.fixture
def sqlite_quality(tmp_path):
    """The same day in a data directory, for the command (which reads one)."""
    with SqliteStore(tmp_path) as s, QualityStore(s, clock=lambda: AFTER) as q:
        fill(s)
        online(q)
        yield q


def rows_by_key(rows):
    return {r.key: r for r in rows}


def test_meter_rows_hand_computed(quality):
    report = quality.report(DAY)
    m = rows_by_key(report.meters)
    assert set(m) == {A1, A2, A3, A4}
    assert (m[A1].attempts, m[A1].ok, m[A1].failures, m[A1].success_rate) == (10, 10, {}, 1.0)
    assert (m[A2].attempts, m[A2].ok, m[A2].failures) == (10, 7, {"timeout": 2, "garbled": 1})
    assert m[A2].success_rate == pytest.approx(0.70)
    assert (m[A3].attempts, m[A3].ok, m[A3].failures) == (100, 97, {"abnormal": 3})
    assert m[A3].success_rate == pytest.approx(0.97)
    assert (m[A4].attempts, m[A4].ok, m[A4].failures, m[A4].success_rate) == (4, 0, {"timeout": 4}, 0.0)
    assert m[A1].latency_mean == pytest.approx(0.2)
    assert [r.key for r in report.meters] == [A3, A4, A1, A2]  # by area, channel, meter
    assert (m[A1].area, m[A1].channel, m[A4].area) == ("residential", "bus1", "large")
    # flags: 97 % exactly is not under the line
    assert (m[A1].flags, m[A2].flags, m[A3].flags, m[A4].flags) == ([], ["success"], [], ["success", "no_data"])
    assert [r.no_data for r in report.meters] == [[], [A4], [], []]


def test_channel_area_and_total_rows_hand_computed(quality):
    report = quality.report(DAY)
    ch = rows_by_key(report.channels)
    # bus1: 20 attempts, 17 ok (85 %), 2 meters both with data, online 23.5 h of 24
    assert (ch["bus1"].attempts, ch["bus1"].ok, ch["bus1"].failures) == (20, 17, {"timeout": 2, "garbled": 1})
    assert ch["bus1"].success_rate == pytest.approx(0.85)
    assert (ch["bus1"].meters, ch["bus1"].meters_with_data, ch["bus1"].data_rate) == (2, 2, 1.0)
    assert ch["bus1"].online_seconds == 23.5 * 3600
    assert ch["bus1"].online_rate == pytest.approx(23.5 / 24)
    assert ch["bus1"].flags == ["success"]
    # bus2: 104 attempts, 97 ok, 1 of 2 meters without data, online 22 h
    assert (ch["bus2"].attempts, ch["bus2"].ok, ch["bus2"].failures) == (104, 97, {"abnormal": 3, "timeout": 4})
    assert ch["bus2"].success_rate == pytest.approx(97 / 104)
    assert (ch["bus2"].meters, ch["bus2"].no_data, ch["bus2"].data_rate) == (2, [A4], 0.5)
    assert ch["bus2"].online_rate == pytest.approx(22 / 24)
    assert ch["bus2"].flags == ["success", "data", "online"]

    area = rows_by_key(report.areas)
    assert set(area) == {"residential", "large"}
    assert (area["residential"].attempts, area["residential"].ok) == (20, 17)
    assert area["residential"].online_rate == pytest.approx(23.5 / 24)
    assert (area["large"].attempts, area["large"].ok, area["large"].no_data) == (104, 97, [A4])
    assert area["large"].online_rate == pytest.approx(22 / 24)

    total = report.total
    assert (total.attempts, total.ok, total.failed) == (124, 114, 10)
    assert total.failures == {"timeout": 6, "garbled": 1, "abnormal": 3}
    assert total.success_rate == pytest.approx(114 / 124)
    assert (total.meters, total.meters_with_data, total.data_rate) == (4, 3, 0.75)
    assert total.online_rate == pytest.approx((23.5 + 22) / 48)
    assert total.flags == ["success", "data", "online"]
    assert report.failure_kinds == ["timeout", "garbled", "abnormal"]
    assert {r.key for r in report.flagged} == {A2, A4, "bus1", "bus2", "residential", "large", "total"}


def test_area_filter_keeps_only_that_group(quality):
    report = quality.report(DAY, area="large")
    assert [r.key for r in report.meters] == [A3, A4]
    assert [r.key for r in report.channels] == ["bus2"]
    assert [r.key for r in report.areas] == ["large"]
    assert (report.total.attempts, report.total.ok, report.total.meters) == (104, 97, 2)
    assert report.total.online_rate == pytest.approx(22 / 24)


def test_meter_in_the_archive_without_any_attempt_has_no_data(store, quality):
    store.upsert_meters([MeterRecord("000000000005", "bus3", "dlt645-2007", Decimal(1), Decimal(1), group="large")])
    report = quality.report(DAY)
    m5 = rows_by_key(report.meters)["000000000005"]
    assert (m5.attempts, m5.success_rate, m5.no_data, m5.flags) == (0, None, ["000000000005"], ["no_data"])
    bus3 = rows_by_key(report.channels)["bus3"]
    assert (bus3.meters, bus3.data_rate, bus3.online_rate) == (1, 0.0, None)  # no online intervals: unknown
    assert rows_by_key(report.areas)["large"].no_data == [A4, "000000000005"]
    assert report.total.data_rate == pytest.approx(3 / 5)


def test_today_is_cut_at_now(quality):
    noon = at(12)
    report = quality.report(DAY, now=noon)
    ch = rows_by_key(report.channels)
    assert report.end == noon
    assert ch["bus1"].online_rate == 1.0  # online 00:00-12:00 of 12 h so far
    assert ch["bus2"].online_rate == pytest.approx(10 / 12)  # 00:00-06:00 and 08:00-12:00
    assert local_date(noon) == DAY
    assert local_date(T0 - timedelta(milliseconds=1)) == DAY - timedelta(days=1)


def test_online_intervals_merge_and_clip():
    s = datetime(2025, 1, 1, tzinfo=timezone.utc)
    h = timedelta(hours=1)
    assert merged_seconds([], s, s + 24 * h) == 0
    assert merged_seconds([(s - h, s + 2 * h), (s + h, s + 3 * h), (s + 5 * h, s + 6 * h), (s + 5 * h, s + 5 * h)],
                          s, s + 24 * h) == 4 * 3600
    assert merged_seconds([(s + 23 * h, s + 30 * h)], s, s + 24 * h) == 3600
    assert merged_seconds([(s + 2 * h, s + 3 * h), (s, s + 4 * h)], s, s + 24 * h) == 4 * 3600


def test_open_interval_closed_later_replaces_it(quality):
    quality.record_online("bus9", at(1))
    assert quality.online_seconds("bus9", at(0), at(3)) == 2 * 3600
    quality.record_online("bus9", at(1), at(2))
    assert quality.online_seconds("bus9", at(0), at(3)) == 3600
    assert quality.online_seconds("nowhere", at(0), at(3)) is None
    with pytest.raises(ValueError):
        quality.record_online("bus9", at(2), at(1))


def test_online_tracker_from_rounds(store, quality):
    tracker = OnlineTracker(quality)
    ok = Attempt(A1, "bus7", "00010000", at(1), "ok")
    link = Attempt(A1, "bus7", "00010000", at(3), "link")
    timeout = Attempt(A1, "bus7", "00010000", at(4), "timeout")
    tracker.observe("bus7", [ok], at(1))
    tracker.observe("bus7", [ok], at(2))  # still up: one open interval
    assert quality.online_seconds("bus7", at(0), at(2.5)) == 1.5 * 3600
    tracker.observe("bus7", [link, link], at(3))  # only link failures: down at the round
    tracker.observe("bus7", [timeout], at(4))  # the link works, the meter is silent: up
    tracker.observe("bus7", [], at(5))  # an empty round says nothing
    assert quality.online_seconds("bus7", at(0), at(6)) == 2 * 3600 + 2 * 3600
    tracker.stop(at(7))
    assert quality.online_seconds("bus7", at(0), at(24)) == 2 * 3600 + 3 * 3600
    # a run that died with an interval open: the next start closes it at the last answered attempt
    quality.record_online("bus8", at(8))
    store.record_attempts([Attempt(A1, "bus8", "00010000", at(9), "ok"), Attempt(A1, "bus8", "x", at(10), "link")])
    OnlineTracker(quality).start()
    assert quality.online_seconds("bus8", at(0), at(24)) == 3600


def test_incremental_update_and_recompute(store, quality):
    first = quality.report(DAY)
    assert first.total.attempts == 124
    assert quality.update() == 0  # nothing new since the report folded everything in
    store.record_attempts(attempts(A4, "bus2", {"ok": 1}, start=20))
    assert quality.update() == 1
    again = quality.report(DAY)
    assert again.total.attempts == 125
    assert rows_by_key(again.meters)[A4].no_data == []
    # the next day got its one attempt too, and the day before its one
    assert quality.report(DAY + timedelta(days=1)).total.attempts == 1
    assert quality.report(DAY - timedelta(days=1)).total.attempts == 1
    # recompute from scratch gives the same numbers (no double counting), with the archive's new group
    store.upsert_meters([MeterRecord(A2, "bus1", "dlt645-2007", Decimal(1), Decimal(1), group="large")])
    assert quality.rollup(DAY) == 125
    redone = quality.report(DAY)
    assert redone.total.attempts == 125
    assert rows_by_key(redone.meters)[A2].area == "large"
    assert rows_by_key(redone.areas)["large"].attempts == 115
    assert quality.update() == 0


def test_sqlite_state_db_path_or_data_dir(tmp_path):
    with SqliteStore(tmp_path) as store:
        fill(store)
    with QualityStore(tmp_path / "state.sqlite3") as by_path, QualityStore(tmp_path) as by_dir:
        assert by_path.report(DAY, now=AFTER).total.attempts == 124
        assert by_dir.report(DAY, now=AFTER).total.attempts == 124  # the second one finds it folded in


def test_postgresql_database_url_or_store(pg_url):
    with open_store(Database(pg_url)) as store:
        fill(store)
        with QualityStore(pg_url) as by_url, QualityStore(Database(pg_url)) as by_db, QualityStore(store) as by_store:
            assert by_url.report(DAY, now=AFTER).total.attempts == 124
            assert by_db.report(DAY, now=AFTER).total.attempts == 124  # the second one finds it folded in
            assert by_store.report(DAY, now=AFTER).total.attempts == 124


def test_fresh_state_gets_its_tables(tmp_path, pg_url):
    for where in (tmp_path / "new.sqlite3", Database(pg_url)):
        with QualityStore(where) as q:
            report = q.report(DAY, now=AFTER)
        assert (report.meters, report.total.attempts, report.total.success_rate) == ([], 0, None)


def test_two_nodes_fold_each_attempt_once(state_where):
    """Two quality stores on one state (two processes, or two nodes on PostgreSQL) updating while
    two writers keep recording attempts: every attempt is counted exactly once -- none twice (both
    folding from one watermark), none never (an attempt committed below a watermark already
    moved past it)."""
    import threading

    with open_store(state_where) as store, open_store(state_where) as other:
        fill(store)
        a, b = QualityStore(state_where, clock=lambda: AFTER), QualityStore(state_where, clock=lambda: AFTER)
        stop = threading.Event()

        def update(q):
            while not stop.is_set():
                q.update()

        def record(s, meter):
            for n in range(40):
                s.record_attempts(attempts(meter, "bus2", {"ok": 2, "timeout": 1}, start=12 + n / 60))

        updaters = [threading.Thread(target=update, args=(q,)) for q in (a, b)]
        writers = [threading.Thread(target=record, args=args) for args in ((store, A3), (other, A4))]
        for t in updaters + writers:
            t.start()
        for t in writers:
            t.join()
        stop.set()
        for t in updaters:
            t.join()
        with a, b:
            a.update()
            assert a.report(DAY, refresh=False).total.attempts == 124 + 240
            assert b.rollup(DAY) == 124 + 240  # recomputed from the log: the same


def test_metrics_flat_names(quality):
    m = quality.metrics(DAY)
    assert m["quality.total.attempts"] == 124
    assert m["quality.total.success_rate"] == pytest.approx(114 / 124)
    assert m["quality.total.data_rate"] == 0.75
    assert m["quality.total.below_threshold"] == 1
    assert m["quality.channel.bus2.online_rate"] == pytest.approx(22 / 24)
    assert m["quality.channel.bus1.online_seconds"] == 23.5 * 3600
    assert m["quality.meter.000000000002.failures.timeout"] == 2
    assert m["quality.meter.000000000003.below_threshold"] == 0
    assert m["quality.area.large.meters_no_data"] == 1
    assert "quality.meter.000000000004.latency_mean" not in m  # nothing to average
    assert all(isinstance(v, (int, float)) for v in m.values())


# --- the command -------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="meterd")
    sub = parser.add_subparsers(dest="command", required=True)
    quality_cli.add_parser(sub)
    return parser.parse_args(["quality", *argv])


def test_cli_table(sqlite_quality, tmp_path, capsys):
    args = parse("--data-dir", str(tmp_path), "--date", "2025-03-04")
    assert quality_cli.run(args, clock=lambda: AFTER) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("collection quality 2025-03-04 (China Standard Time, 00:00-24:00)")
    header = lines[1].split()
    assert header == ["AREA", "CHANNEL", "METER", "ATTEMPTS", "OK", "TIMEOUT", "GARBLED", "ABNORMAL",
                      "SUCCESS%", "DATA%", "ONLINE%", "NO-DATA"]
    a2 = next(line for line in lines if A2 in line)
    assert a2.split() == ["!", "residential", "bus1", A2, "10", "7", "2", "1", "0", "70.0", "-"]
    a1 = next(line for line in lines if A1 in line and "meters with no data" not in line)
    assert not a1.startswith("!") and "100.0" in a1
    a3 = next(line for line in lines if A3 in line)
    assert not a3.startswith("!") and "97.0" in a3
    a4 = next(line for line in lines if A4 in line and "no data:" not in line)
    assert a4.startswith("!") and a4.rstrip().endswith("yes")
    bus2 = next(line for line in lines if "bus2" in line and "(channel)" in line)
    assert bus2.startswith("!") and "1/2" in bus2 and "91.7" in bus2 and "50.0" in bus2
    total = next(line for line in lines if "(total)" in line)
    assert total.split()[:4] == ["!", "(total)", "124", "114"]
    assert f"meters with no data: {A4}" in out
    assert "! channel bus2: under 97 % on success, data, online" in out
    assert "! total: under 97 % on success, data, online" in out


def test_cli_json_and_area(sqlite_quality, tmp_path, capsys):
    args = parse("--data-dir", str(tmp_path), "--date", "2025-03-04", "--area", "residential", "--json")
    assert quality_cli.run(args, clock=lambda: AFTER) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["day"] == "2025-03-04" and doc["area"] == "residential" and doc["threshold"] == 0.97
    assert [m["key"] for m in doc["meters"]] == [A1, A2]
    assert doc["total"]["attempts"] == 20 and doc["total"]["ok"] == 17
    assert doc["total"]["flags"] == ["success"]
    assert doc["channels"][0]["online_rate"] == pytest.approx(23.5 / 24)


def test_cli_threshold_recompute_and_flagged_only(sqlite_quality, tmp_path, capsys):
    args = parse("--data-dir", str(tmp_path), "--date", "2025-03-04", "--threshold", "60", "--recompute",
                 "--meters", "flagged")
    assert quality_cli.run(args, clock=lambda: AFTER) == 0
    out = capsys.readouterr().out
    assert A2 not in out and A1 not in out  # 70 % is above a 60 % line; only A4 (no data) is listed
    assert next(line for line in out.splitlines() if A4 in line).startswith("!")


def test_cli_defaults_to_today_in_cst(sqlite_quality, tmp_path, capsys):
    args = parse("--data-dir", str(tmp_path))
    # 2025-03-04 20:00 UTC is already 2025-03-05 04:00 in China
    assert quality_cli.run(args, clock=lambda: datetime(2025, 3, 4, 20, 0, tzinfo=timezone.utc)) == 0
    out = capsys.readouterr().out
    assert out.startswith("collection quality 2025-03-05 (China Standard Time, 00:00-04:00)")


def test_cli_bad_input(tmp_path, capsys):
    assert quality_cli.run(parse("--data-dir", str(tmp_path / "none"))) == 2
    assert "no state store" in capsys.readouterr().err
    assert quality_cli.run(parse("--data-dir", str(tmp_path), "--date", "2025-13-01")) == 2
    assert "--date" in capsys.readouterr().err
    assert quality_cli.run(parse("--data-dir", str(tmp_path), "--threshold", "0")) == 2
