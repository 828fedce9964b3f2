"""Collection quality: daily rollup of the attempts log per meter / channel / area, terminal
online rate from intervals, meters with no data, the 97 % line -- checked against tables worked
out by hand, on SQLite and on PostgreSQL (``state_where``) -- and the ``meterd quality`` command
through its argparse entry (SQLite: it reads a data directory)."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, date, datetime, timedelta
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


#: The topology's areas (台区); the meters' groups (what polls are bound to) cut across them.
AREAS = {A1: "residential", A2: "residential", A3: "large", A4: "large"}


def fill(s):
    """The day worked out by hand: four meters on two channels in two areas."""
    s.upsert_meters([
        MeterRecord(A1, "bus1", "dlt645-2007", Decimal(1), Decimal(1), group="north"),
        MeterRecord(A2, "bus1", "dlt645-2007", Decimal(1), Decimal(1), group="south"),
        MeterRecord(A3, "bus2", "dlt645-2007", Decimal(1), Decimal(1), group="north"),
        MeterRecord(A4, "bus2", "modbus", Decimal(1), Decimal(1), group="south"),  # never answers a thing
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
    """The meters' areas, and the terminals' online intervals worked out by hand."""
    q.set_areas(AREAS)
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


def test_area_filter_keeps_only_that_area(quality):
    report = quality.report(DAY, area="large")
    assert [r.key for r in report.meters] == [A3, A4]
    assert [r.key for r in report.channels] == ["bus2"]
    assert [r.key for r in report.areas] == ["large"]
    assert (report.total.attempts, report.total.ok, report.total.meters) == (104, 97, 2)
    assert report.total.online_rate == pytest.approx(22 / 24)


def test_meter_in_the_archive_without_any_attempt_has_no_data(store, quality):
    store.upsert_meters([MeterRecord("000000000005", "bus3", "dlt645-2007", Decimal(1), Decimal(1), group="north")])
    quality.set_areas({**AREAS, "000000000005": "large"})
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
    s = datetime(2025, 1, 1, tzinfo=UTC)
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
    # recompute from scratch gives the same numbers (no double counting); a meter the topology moved
    # to another area counts there
    quality.set_areas({**AREAS, A2: "large"})
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


# --- what is not a failure, what is not offline, which area (issue 18) -----------------------------

A5, A6, A7 = "000000000005", "000000000006", "000000000007"


def meter(address: str, channel: str, group: str = "north") -> MeterRecord:
    return MeterRecord(address, channel, "dlt645-2007", Decimal(1), Decimal(1), group=group)


def test_no_record_yet_is_neither_a_success_nor_a_failure(store, quality):
    """Meters that answer "no such record yet" for today's freeze (they have not passed a midnight
    since they were installed): the answer is not due -- out of the success rate's attempts, and a
    meter whose every answer of the day was one is out of the data rate -- and nothing is flagged."""
    store.upsert_meters([meter(A5, "bus5"), meter(A6, "bus5")])
    quality.set_areas({**AREAS, A5: "new", A6: "new"})
    store.record_attempts([
        *attempts(A5, "bus5", {"ok": 30, "no_record": 10}),  # real-time reads, and the freeze not there yet
        *attempts(A6, "bus5", {"no_record": 5}),  # polled for the freeze alone: not due today
    ])
    report = quality.report(DAY)
    m = rows_by_key(report.meters)
    assert (m[A5].attempts, m[A5].ok, m[A5].no_record, m[A5].due, m[A5].failures) == (40, 30, 10, 30, {})
    assert (m[A5].success_rate, m[A5].flags) == (1.0, [])
    assert (m[A6].success_rate, m[A6].no_data, m[A6].not_due, m[A6].flags) == (None, [], [A6], [])
    bus5 = rows_by_key(report.channels)["bus5"]
    assert (bus5.attempts, bus5.ok, bus5.no_record, bus5.failed, bus5.success_rate) == (45, 30, 15, 0, 1.0)
    assert (bus5.meters, bus5.meters_due, bus5.meters_with_data, bus5.data_rate, bus5.flags) == (2, 1, 1, 1.0, [])
    assert rows_by_key(report.areas)["new"].flags == []
    total = report.total
    assert (total.attempts, total.ok, total.no_record, total.failed) == (124 + 45, 114 + 30, 15, 10)
    assert total.success_rate == pytest.approx((114 + 30) / (124 + 30))
    assert (total.meters, total.meters_due, total.meters_with_data) == (6, 5, 4)
    assert "no_record" not in report.failure_kinds
    doc = next(c for c in report.as_dict()["channels"] if c["key"] == "bus5")
    assert (doc["no_record"], doc["due"], doc["failed"], doc["not_due"], doc["meters_due"]) == (15, 30, 0, [A6], 1)
    flat = quality.metrics(DAY)
    assert (flat["quality.channel.bus5.no_record"], flat["quality.channel.bus5.meters_not_due"]) == (15, 1)
    assert "quality.meter.000000000005.failures.no_record" not in flat


def test_online_time_counts_from_the_masters_first_round_on_the_terminal(store, quality):
    """A system started at noon: the morning before it is not offline time.  Per terminal and day,
    the span runs from the later of 00:00 and the master's first round on the terminal."""
    store.upsert_meters([meter(A5, "bus5"), meter(A6, "bus6")])
    tracker = OnlineTracker(quality)
    tracker.observe("bus5", [Attempt(A5, "bus5", "00010000", at(12), "ok")], at(12))  # first round: up
    tracker.observe("bus6", [Attempt(A6, "bus6", "00010000", at(12), "link")], at(12))  # watched, never up
    tracker.observe("bus5", [Attempt(A5, "bus5", "00010000", at(17), "link")], at(17))  # down at 17:00
    now = at(18)
    assert quality.online(["bus5", "bus6", "bus9"], T0, now) == {"bus5": (5 * 3600, 6 * 3600),
                                                                 "bus6": (0.0, 6 * 3600)}  # bus9: never watched
    report = quality.report(DAY, now=now)
    ch = rows_by_key(report.channels)
    assert (ch["bus5"].online_seconds, ch["bus5"].span_seconds) == (5 * 3600, 6 * 3600)
    assert ch["bus5"].online_rate == pytest.approx(5 / 6)
    assert (ch["bus6"].online_rate, ch["bus6"].flags) == (0.0, ["data", "online"])
    # bus1 online all 18 h so far, bus2 00-06 and 08-18 (as watched since before the day began)
    assert ch["bus1"].online_rate == 1.0 and ch["bus2"].online_rate == pytest.approx(16 / 18)
    assert report.total.online_rate == pytest.approx((18 + 16 + 5 + 0) / (18 + 18 + 6 + 6))
    # a restart later that day does not move the start of the watch
    restarted = OnlineTracker(quality)
    restarted.observe("bus5", [Attempt(A5, "bus5", "00010000", at(20), "ok")], at(20))
    assert quality.watched_since()["bus5"] == at(12)
    # the next day counts whole: bus5 online since 20:00 the day before, down at 06:00
    restarted.down("bus5", at(24 + 6))
    nxt = rows_by_key(quality.report(DAY + timedelta(days=1), now=at(24 + 12)).channels)
    assert nxt["bus5"].online_rate == pytest.approx(6 / 12)
    # the day before the first round: not watched, so unknown -- not 0 %
    before = rows_by_key(quality.report(DAY - timedelta(days=1), now=now).channels)
    assert (before["bus5"].online_rate, before["bus5"].flags) == (None, ["data"])


def test_a_system_started_at_noon_is_not_flagged(state_where):
    """The whole day as the daemon leaves it: healthy meters polled from 12:00, one of them new (no
    freeze yet), reported at 18:00 -- every rate at or above the line, nothing flagged."""
    with open_store(state_where) as s, QualityStore(s, clock=lambda: at(18)) as q:
        s.upsert_meters([meter(A1, "bus1"), meter(A2, "bus1"), meter(A3, "bus2")])
        q.set_areas({A1: "TA-1", A2: "TA-1", A3: "TA-2"})
        tracker = OnlineTracker(q)
        for minute in range(0, 6 * 60, 15):
            t = at(12 + minute / 60)
            rounds = {"bus1": [Attempt(A1, "bus1", "0001FF00", t, "ok", 0.1),
                               Attempt(A2, "bus1", "0001FF00", t, "ok", 0.1)],
                      "bus2": [Attempt(A3, "bus2", "0001FF00", t, "ok", 0.1),
                               Attempt(A3, "bus2", "05060101", t, "no_record")]}  # A3 new: no freeze yet
            for channel, made in rounds.items():
                s.record_attempts(made)
                tracker.observe(channel, made, t)
        report = q.report(DAY)
    assert report.flagged == []
    assert (report.total.success_rate, report.total.data_rate, report.total.online_rate) == (1.0, 1.0, 1.0)


def test_areas_are_the_topologys_not_the_meter_groups(quality):
    from meterd.analytics.topology import Point, Role, Topology, Unit
    from meterd.storage.quality import topology_areas

    topology = Topology.of([Unit("TA-1", "area"), Unit("TA-2", "area"), Unit("L-10kV", "line")], [
        Point(A1, "TA-1", Role.SUPPLY), Point(A2, "TA-1", Role.SALES),
        Point(A1, "L-10kV", Role.SALES),  # also a point of its line: its area is still TA-1
        Point(A3, "L-10kV", Role.SUPPLY),  # of a line alone: in no area
        Point(A2, "TA-2", Role.AUXILIARY),  # listed in a second area: the first listed counts
    ])
    assert topology_areas(topology) == {A1: "TA-1", A2: "TA-1"}
    assert topology_areas(None) == {}
    assert quality.set_areas(topology_areas(topology)) == 4  # A1, A2 moved; A3, A4 left their areas
    assert quality.set_areas(topology_areas(topology)) == 0
    report = quality.report(DAY)
    assert {r.key: r.area for r in report.meters} == {A1: "TA-1", A2: "TA-1", A3: "-", A4: "-"}
    assert [(r.key, r.attempts) for r in report.areas] == [("-", 104), ("TA-1", 20)]  # no "north" or "south"
    assert [r.key for r in quality.report(DAY, area="-").meters] == [A3, A4]
    assert quality.report(DAY, area="north").meters == []  # a group is not an area
    with pytest.raises(ValueError, match="000000000001"):
        quality.set_areas({A1: "-"})


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
    assert lines[0].startswith("collection quality 2025-03-04 (Asia/Shanghai +08:00, 00:00-24:00)")
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
    assert quality_cli.run(args, clock=lambda: datetime(2025, 3, 4, 20, 0, tzinfo=UTC)) == 0
    out = capsys.readouterr().out
    assert out.startswith("collection quality 2025-03-05 (Asia/Shanghai +08:00, 00:00-04:00)")


def test_cli_bad_input(tmp_path, capsys):
    assert quality_cli.run(parse("--data-dir", str(tmp_path / "none"))) == 2
    assert "no state store" in capsys.readouterr().err
    assert quality_cli.run(parse("--data-dir", str(tmp_path), "--date", "2025-13-01")) == 2
    assert "--date" in capsys.readouterr().err
    assert quality_cli.run(parse("--data-dir", str(tmp_path), "--threshold", "0")) == 2


def test_cli_no_record_column_not_due_meters_and_areas(sqlite_quality, tmp_path, capsys):
    with SqliteStore(tmp_path) as s:
        s.upsert_meters([meter(A5, "bus5"), meter(A6, "bus5")])
        s.record_attempts([*attempts(A5, "bus5", {"ok": 3, "no_record": 2}), *attempts(A6, "bus5", {"no_record": 1})])
    assert quality_cli.run(parse("--data-dir", str(tmp_path), "--date", "2025-03-04"), clock=lambda: AFTER) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].split() == ["AREA", "CHANNEL", "METER", "ATTEMPTS", "OK", "NO-RECORD", "TIMEOUT", "GARBLED",
                                "ABNORMAL", "SUCCESS%", "DATA%", "ONLINE%", "NO-DATA"]
    a5 = next(line for line in lines if A5 in line)
    assert a5.split() == ["-", "bus5", A5, "5", "3", "2", "0", "0", "0", "100.0", "-"]  # in no area: "-"
    a6 = next(line for line in lines if A6 in line and ":" not in line)
    assert a6.split() == ["-", "bus5", A6, "1", "0", "1", "0", "0", "0", "-", "-", "not", "due"]
    bus5 = next(line for line in lines if "bus5" in line and "(channel)" in line)
    assert not bus5.startswith("!") and "0/1" in bus5  # one meter due, and it has data
    assert f"meters with no record yet (not due): {A6}" in out
    assert "residential" in out and "north" not in out  # areas, not the meters' groups
    args = parse("--data-dir", str(tmp_path), "--date", "2025-03-04", "--area", "-", "--json")
    assert quality_cli.run(args, clock=lambda: AFTER) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [m["key"] for m in doc["meters"]] == [A5, A6]
    assert (doc["total"]["no_record"], doc["total"]["due"], doc["total"]["success_rate"]) == (3, 3, 1.0)
