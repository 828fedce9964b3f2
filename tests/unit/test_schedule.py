"""Scheduled collection: fire times in China Standard Time with time passed in, what is due when,
what a missed-data re-read must fetch given the store, curve back-fill from the meter's memory,
and an AsyncIOScheduler that never starts a running round twice."""

from __future__ import annotations

import asyncio
import time as _time
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from meterd.collector.channel import Channel, Timing
from meterd.collector.poll import RoundResult
from meterd.clock import CST
from meterd.collector.scheduler import TaskScheduler, poll_task
from meterd.collector.tasks import (
    CurveGap,
    MeterNeed,
    Missed,
    due_tasks,
    fire_times,
    merge_needs,
    meter_target,
    missing_for,
    next_fire_times,
    reread_plan,
    task_reads,
)
from meterd.collector.transports import TcpTransport
from meterd.config.model import MeterConfig, Protocol
from meterd.config.tasks import TaskSpec, TaskSpecError
from meterd.protocols.modbus import ReadPlan, get_map
from meterd.protocols.readspec import ReadSpec
from meterd.readings import Reading
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.model import MeterModel
from meterd.simulators.serve import serve_tcp
from meterd.storage.sqlite import SqliteStore

DAY = date(2025, 3, 4)
T0 = datetime(2025, 3, 4, tzinfo=CST)
NOW = T0 + timedelta(hours=10, minutes=20)
Q15 = timedelta(minutes=15)
ENERGY = "energy.active.import.total"
CURVE = "curve.power.active.total"
FROZEN = "frozen.daily.energy.active.import.total"
PREV1 = "energy.active.import.total.prev1"
A1, A2, A3, A4, A5 = (f"00000000000{i}" for i in range(1, 6))

RT = TaskSpec("rt", "realtime", groups=("res",), quantities=(ENERGY,), items=(0x06100300,), every=900)
DF = TaskSpec("df", "daily_frozen", groups=("res",))
RD = TaskSpec("rd", "reading_day", groups=("res",), options={"day": 4, "time": "01:00"})
RR = TaskSpec("rr", "reread", options={"max_points": 8})

M1 = MeterConfig(A1, "bus", group="res")
M2 = MeterConfig(A2, "bus", group="res")
M3 = MeterConfig(A3, "bus", protocol=Protocol.DLT645_1997, group="res")
M4 = MeterConfig(A4, "gw", protocol=Protocol.MODBUS, group="res", unit=1, regmap=get_map("generic"))
M5 = MeterConfig(A5, "bus", group="other")
METERS = (M1, M2, M3, M4, M5)


def cst(h: int, m: int = 0, d: int = 4) -> datetime:
    return datetime(2025, 3, d, h, m, tzinfo=CST)


# --- fire times --------------------------------------------------------------------------------


def test_cron_next_fire_times_are_cst_whatever_zone_now_is_in():
    df = TaskSpec("df", "daily_frozen", cron="15 0 * * *")
    now_utc = datetime(2025, 3, 3, 16, 20, tzinfo=timezone.utc)  # 2025-03-04 00:20 CST: today's 00:15 is past
    got = next_fire_times(df, now_utc, 3)
    assert got == [cst(0, 15, 5), cst(0, 15, 6), cst(0, 15, 7)]
    assert got[0] == datetime(2025, 3, 4, 16, 15, tzinfo=timezone.utc)
    assert all(t.utcoffset() == timedelta(hours=8) for t in got)
    # at or after now: a fire time equal to now is returned
    assert next_fire_times(df, cst(0, 15), 1) == [cst(0, 15)]
    hourly = TaskSpec("big", "hourly", quantities=(ENERGY,))  # default cron: every full hour
    assert next_fire_times(hourly, cst(23, 59, 3), 2) == [cst(0, 0), cst(1, 0)]
    with pytest.raises(ValueError):
        next_fire_times(df, datetime(2025, 3, 4), 1)  # naive times are refused


def test_interval_fires_on_the_cst_quarter_hour_grid():
    assert next_fire_times(RT, cst(10, 7) + timedelta(seconds=30), 3) == [cst(10, 15), cst(10, 30), cst(10, 45)]
    assert next_fire_times(RT, cst(10, 15), 1) == [cst(10, 15)]
    assert len(fire_times(RT, T0, T0 + timedelta(days=1), inclusive=False)) == 96
    assert fire_times(RT, cst(10, 0), cst(10, 30), inclusive=False) == [cst(10, 15), cst(10, 30)]


def test_reading_day_cron_from_day_and_time():
    assert RD.cron == "0 1 4 * *"
    assert next_fire_times(RD, NOW, 2) == [datetime(2025, 4, 4, 1, 0, tzinfo=CST),
                                           datetime(2025, 5, 4, 1, 0, tzinfo=CST)]
    default = TaskSpec("settle", "reading_day")
    assert default.cron == "0 1 1 * *" and default.items == (0x0001FF01,)


def test_task_defaults():
    assert DF.items == (0x05060101,) and DF.cron == "15 0 * * *" and DF.grace == 6 * 3600
    assert RT.grace == 450 and RT.curve_points == 4 and RT.curve_interval == Q15
    assert RR.cron == "0 10,16,22 * * *"
    assert TaskSpec("x", "realtime", quantities=(ENERGY,), every=60, misfire_grace=5).grace == 5


@pytest.mark.parametrize("kw, message", [
    (dict(kind="weekly", every=60, quantities=(ENERGY,)), "kind"),
    (dict(kind="realtime", every=60, cron="* * * * *", quantities=(ENERGY,)), "exactly one"),
    (dict(kind="realtime", quantities=(ENERGY,)), "exactly one"),
    (dict(kind="realtime", every=60), "needs quantities"),
    (dict(kind="realtime", every=0, quantities=(ENERGY,)), "must be > 0"),
    (dict(kind="realtime", cron="61 * * * *", quantities=(ENERGY,)), "cron"),
    (dict(kind="realtime", every=60, items=(0x0F000000,)), "not in the DL/T 645-2007 catalogue"),
    (dict(kind="realtime", every=60, quantities=(ENERGY,), options={"day": 3}), "unknown option"),
    (dict(kind="realtime", every=60, quantities=(ENERGY,), options={"curve_interval": 7}), "divide an hour"),
    (dict(kind="reading_day", options={"day": 32}), "option day"),
    (dict(kind="reading_day", options={"time": "25:00"}), "HH:MM"),
    (dict(kind="reread", items=(0x00010000,)), "names no quantities"),
])
def test_task_spec_errors_name_the_task(kw, message):
    with pytest.raises(TaskSpecError, match=message) as exc:
        TaskSpec("t1", **kw)
    assert "task 't1'" in str(exc.value)


# --- what is due -------------------------------------------------------------------------------


def test_daily_frozen_is_due_just_after_midnight_and_once():
    specs = [DF]
    assert due_tasks(specs, {}, cst(23, 59, 3)) == []
    assert due_tasks(specs, {}, cst(0, 14)) == []
    (due,) = due_tasks(specs, {}, cst(0, 16))
    assert (due.task.name, due.fire_time, due.coalesced) == ("df", cst(0, 15), 0)
    assert due_tasks(specs, {"df": cst(0, 15)}, cst(0, 30)) == []  # ran: not again today
    (tomorrow,) = due_tasks(specs, {"df": cst(0, 15)}, cst(0, 15, 5))
    assert tomorrow.fire_time == cst(0, 15, 5)


def test_due_coalesces_missed_fire_times_and_drops_stale_ones():
    (due,) = due_tasks([RT], {"rt": cst(9, 0)}, cst(10, 7))
    assert (due.fire_time, due.coalesced) == (cst(10, 0), 3)  # 09:15, 09:30, 09:45 folded into 10:00
    missed: list[Missed] = []
    assert due_tasks([DF], {}, cst(7, 0), missed=missed) == []  # never ran: only fire times within grace count
    assert missed == []
    assert due_tasks([DF], {"df": cst(0, 15, 3)}, cst(7, 0), missed=missed) == []  # 00:15 is more than 6 h ago
    assert missed == [Missed(DF, cst(0, 15), 1)]
    missed.clear()
    assert due_tasks([RT], {"rt": cst(9, 0)}, cst(10, 8), missed=missed) == []  # 10:00 + 7.5 min grace
    assert missed[0].count == 4


# --- what a task reads -------------------------------------------------------------------------


def test_task_reads_per_protocol():
    spec = task_reads(RT, M1)
    assert isinstance(spec, ReadSpec)
    assert spec.items == (0x06100300, 0x00010000) and spec.keep[0x00010000] == {ENERGY}
    assert task_reads(RT, M3).items == (0x9010,)  # the 2007 curve item does not apply to a 1997 meter
    plan = task_reads(RT, M4)
    assert isinstance(plan, ReadPlan) and ENERGY in plan.quantities
    assert task_reads(DF, M4) is None and task_reads(DF, M3) is None  # items only: nothing for them
    assert task_reads(RT, M5) is None  # not in the task's groups
    assert task_reads(RR, M1) is None


# --- what a re-read must fetch -----------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    with SqliteStore(tmp_path) as s:
        # M1 has everything of today but curve slots 02:00, 02:15, 02:30 and 09:45
        slots = [T0 + i * Q15 for i in range(42)]  # 00:00 .. 10:15
        lost = {cst(2, 0), cst(2, 15), cst(2, 30), cst(9, 45)}
        s.write_readings([Reading(A1, CURVE, t, Decimal("1.5"), "kW") for t in slots if t not in lost])
        s.write_readings([
            Reading(A1, ENERGY, cst(10, 15), Decimal("100.00"), "kWh"),
            Reading(A1, FROZEN, T0, Decimal("98.00"), "kWh"),  # stamped with the meter's freeze time
            Reading(A1, PREV1, cst(1, 0) + timedelta(seconds=3), Decimal("90.00"), "kWh"),
            Reading(A2, "voltage.a", cst(10, 15), Decimal("230.0"), "V"),  # not asked for by any task
        ])
        yield s


def test_reread_fetches_only_what_is_missing(store):
    # M1: only the four lost curve points, as two back-fill runs
    need = missing_for(store, M1, RT, DAY, NOW)
    assert need.spec is None and need.quantities == ()
    assert need.curves == (CurveGap(0x06100300, cst(2, 0), 3, Q15), CurveGap(0x06100300, cst(9, 45), 1, Q15))
    assert need.tasks == ("rt",)
    assert missing_for(store, M1, DF, DAY, NOW).empty
    assert missing_for(store, M1, RD, DAY, NOW).empty
    # M2 has nothing: the present value, the whole curve so far, today's freeze, the settlement data
    rt2 = missing_for(store, M2, RT, DAY, NOW)
    assert rt2.spec.items == (0x00010000,) and rt2.spec.keep[0x00010000] == {ENERGY}
    assert [(g.start, g.count) for g in rt2.curves] == [(T0, 24), (cst(6, 0), 18)]  # 42 slots, 24 a request
    assert missing_for(store, M2, DF, DAY, NOW).spec.items == (0x05060101,)
    assert missing_for(store, M2, RD, DAY, NOW).spec.items == (0x0001FF01,)
    # other protocols: the 1997 identifier, the Modbus quantity
    assert missing_for(store, M3, RT, DAY, NOW).spec.items == (0x9010,)
    assert missing_for(store, M4, RT, DAY, NOW).quantities == (ENERGY,)
    assert missing_for(store, M5, RT, DAY, NOW).empty  # not in the task's groups


def test_curve_backfill_slots_split_and_settle(store):
    need = missing_for(store, M1, RT, DAY, NOW, max_points=2)
    assert [(g.start, g.count) for g in need.curves] == [(cst(2, 0), 2), (cst(2, 30), 1), (cst(9, 45), 1)]
    assert str(need.curves[0]) == "06100300 2 record(s) from 2025-03-04 02:00"
    # 10:30 is a fire time, but not 5 minutes old at 10:33: its slot is not owed yet
    assert missing_for(store, M1, RT, DAY, cst(10, 33)).curves[-1] == CurveGap(0x06100300, cst(9, 45), 1, Q15)
    later = missing_for(store, M1, RT, DAY, cst(10, 36))
    assert later.curves[-1] == CurveGap(0x06100300, cst(10, 30), 1, Q15)
    assert later.spec is None  # the present value read at 10:15 still counts for the day


def test_nothing_is_owed_before_the_task_fires(store):
    assert missing_for(store, M2, DF, DAY, cst(0, 14)).empty  # daily frozen fires 00:15
    assert missing_for(store, M2, DF, DAY, cst(0, 19)).empty  # ... and settles 5 minutes
    assert missing_for(store, M2, DF, DAY, cst(0, 21)).spec.items == (0x05060101,)
    assert missing_for(store, M2, RD, date(2025, 3, 3), NOW).empty  # no reading day on the 3rd


def test_older_days_shift_the_freeze_index(store):
    yesterday = date(2025, 3, 3)
    # the freeze of 03-03 00:00 is the 2nd last one on 03-04
    assert missing_for(store, M2, DF, yesterday, NOW).spec.items == (0x05060102,)
    assert missing_for(store, M2, DF, date(2025, 2, 1), NOW).spec.items == (0x05060100 + 32,)
    need = missing_for(store, M2, RT, yesterday, NOW, max_points=96)
    assert [(g.start, g.count) for g in need.curves] == [(cst(0, 0, 3), 96)]
    # a present value read today satisfies yesterday's task too: it cannot be read for yesterday
    assert missing_for(store, M1, RT, yesterday, NOW).spec is None


def test_reread_plan_merges_tasks_and_leaves_out_complete_meters(store):
    plan = reread_plan(store, RR, [RT, DF, RD], METERS, NOW)
    assert set(plan) == {A1, A2, A3, A4}
    assert plan[A1].spec is None and [(g.start, g.count) for g in plan[A1].curves] == [(cst(2, 0), 3), (cst(9, 45), 1)]
    assert plan[A2].spec.items == (0x00010000, 0x05060101, 0x0001FF01)
    assert [g.count for g in plan[A2].curves] == [8, 8, 8, 8, 8, 2]  # max_points 8
    assert plan[A2].tasks == ("rt", "df", "rd")
    assert plan[A3].spec.items == (0x9010,)
    assert plan[A4].quantities == (ENERGY,)
    only_df = TaskSpec("rr2", "reread", groups=("res",), options={"tasks": ["df"], "lookback_days": 1})
    plan2 = reread_plan(store, only_df, [RT, DF, RD], METERS, NOW)
    assert set(plan2) == {A1, A2}  # both lack yesterday's freeze; only M2 lacks today's
    assert plan2[A1].spec.items == (0x05060102,)
    assert plan2[A2].spec.items == (0x05060102, 0x05060101)


def test_merge_needs_joins_curve_runs_and_keeps():
    a = MeterNeed(A1, ReadSpec((1,), {1: frozenset({"x"})}), curves=(CurveGap(0x06100300, cst(1, 0), 2),))
    b = MeterNeed(A1, ReadSpec((1, 2), {1: frozenset({"y"}), 2: None}), curves=(CurveGap(0x06100300, cst(1, 30), 2),))
    m = merge_needs(A1, [a, b], max_points=3)
    assert m.spec.items == (1, 2) and m.spec.keep == {1: {"x", "y"}, 2: None}
    assert m.curves == (CurveGap(0x06100300, cst(1, 0), 3), CurveGap(0x06100300, cst(1, 45), 1))
    assert merge_needs(A1, []).empty


# --- re-read end to end: a simulated meter's memory back-fills the store -----------------------


async def test_reread_backfills_curve_and_frozen_from_a_simulated_meter(tmp_path):
    sim_now = [datetime(2025, 3, 4, 10, 15)]  # meter-local
    model = MeterModel(A1, start=datetime(2025, 3, 3, 0, 0), seed=3)
    running = await serve_tcp(Dlt645Bus([model]), clock=lambda: sim_now[0])
    host, port = running.endpoint.rsplit(":", 1)
    channel = Channel("bus", TcpTransport("bus", host, int(port)), timing=Timing(1.0, 0.5))
    rr = TaskSpec("rr", "reread", cron="25 10 * * *", options={"max_points": 24})
    try:
        with SqliteStore(tmp_path) as store:
            async def run_round(task, meters_by_channel, reads, now):
                ((name, meters),) = meters_by_channel.items()
                assert name == "bus"
                result = await poll_task(channel, task, [(meter_target(m), reads[m.address]) for m in meters], now)
                store.write_readings(result.readings)
                store.record_attempts(result.attempts)
                return result

            sched = TaskScheduler([RT, DF, rr], [M1], run_round, store=store)
            # the routine round at 10:15 reads the present value and the last 4 curve records
            first = await sched.run_task("rt", "bus", now=cst(10, 15))
            assert {r.timestamp for r in first.readings if r.quantity == CURVE} == {cst(9, 30), cst(9, 45), cst(10, 0),
                                                                                      cst(10, 15)}
            # the daily frozen round never ran; at 10:25 the re-read owes 00:00..09:15 and the freeze
            sim_now[0] = datetime(2025, 3, 4, 10, 25)
            need = sched.reads_for("rr", "bus", cst(10, 25))[A1]
            assert need.spec.items == (0x05060101,)
            assert [(g.start, g.count) for g in need.curves] == [(T0, 24), (cst(6, 0), 14)]
            result = await sched.run_task("rr", "bus", now=cst(10, 25))
            assert [a.outcome for a in result.attempts] == ["ok"] * 3
            assert [a.item for a in result.attempts] == ["05060101", "06100300", "06100300"]
            frozen = [r for r in result.readings if r.quantity == FROZEN]
            assert [r.timestamp for r in frozen] == [T0]
            stored = store.readings(A1, since=T0, quantity=CURVE)
            assert [r.timestamp for r in stored] == [T0 + i * Q15 for i in range(42)]
            assert [r.value for r in stored] == [Decimal(v) for v in (
                model.curve(CURVE, datetime(2025, 3, 4), 42)[1])]
            # nothing left: the next pass is idle and reads nothing
            assert sched.reads_for("rr", "bus", cst(10, 30)) == {}
            assert await sched.run_task("rr", "bus", now=cst(10, 30)) is None
            stats = sched.stats["rr@bus"]
            assert (stats.runs, stats.idle, stats.last_readings) == (1, 1, len(result.readings))
    finally:
        await channel.close()
        await running.close()


# --- running: never twice at once --------------------------------------------------------------


def slow_round_factory(delay: float):
    state = {"running": 0, "peak": 0, "calls": 0, "starts": []}

    async def run_round(task, meters_by_channel, reads, now):
        state["running"] += 1
        state["calls"] += 1
        state["starts"].append(_time.monotonic())
        state["peak"] = max(state["peak"], state["running"])
        try:
            await asyncio.sleep(delay)
        finally:
            state["running"] -= 1
        ((channel, _),) = meters_by_channel.items()
        return RoundResult(channel, now)

    return run_round, state


FAST = TaskSpec("fast", "realtime", quantities=(ENERGY,), every=0.1)


async def test_scheduler_never_starts_a_running_round_twice_and_counts_the_skips():
    run_round, state = slow_round_factory(0.35)
    sched = TaskScheduler([FAST], [M1], run_round)
    aps = sched.start()
    job = aps.get_job("fast@bus")
    assert (job.max_instances, job.coalesce, job.misfire_grace_time) == (1, True, 1)
    try:
        await asyncio.sleep(1.25)
    finally:
        sched.shutdown()
        await asyncio.sleep(0.05)
    stats = sched.stats["fast@bus"]
    assert state["peak"] == 1  # never two rounds of the job at once
    assert 2 <= state["calls"] <= 4  # ~1.25 s / 0.4 s, not 12 piled-up rounds
    assert stats.skipped >= 4  # fire times that came while the round was running
    assert stats.runs in (state["calls"] - 1, state["calls"])  # the last one may be cut by the shutdown


async def test_missed_fire_times_are_coalesced_into_one_run():
    run_round, state = slow_round_factory(0.0)
    task = TaskSpec("tick", "realtime", quantities=(ENERGY,), every=0.2)
    sched = TaskScheduler([task], [M1], run_round)
    sched.start()
    try:
        await asyncio.sleep(0.05)
        before = state["calls"]
        _time.sleep(0.9)  # the event loop is blocked: 4 fire times go by
        unblocked = _time.monotonic()
        await asyncio.sleep(0.15)
    finally:
        sched.shutdown()
        await asyncio.sleep(0.05)
    after = [t for t in state["starts"] if t >= unblocked]
    assert state["calls"] - before <= 2 and 1 <= len(after) <= 2  # one run for the backlog (+ the next tick)
    assert sched.stats["tick@bus"].missed == 0


async def test_run_task_guard_and_channel_turns():
    run_round, state = slow_round_factory(0.1)
    other = TaskSpec("other", "hourly", quantities=(ENERGY,))
    sched = TaskScheduler([FAST, other], [M1, M2], run_round)
    first, second, third = await asyncio.gather(
        sched.run_task("fast", "bus", now=NOW),
        sched.run_task("fast", "bus", now=NOW),  # the same job while it runs: skipped, counted
        sched.run_task("other", "bus", now=NOW),  # another task on the bus: waits its turn
    )
    assert first is not None and second is None and third is not None
    assert state["peak"] == 1
    assert sched.stats["fast@bus"].skipped == 1 and sched.stats["fast@bus"].runs == 1
    assert sched.stats["other@bus"].runs == 1
    assert sched.last_runs == {"fast": NOW, "other": NOW}


async def test_run_round_failure_is_counted_not_raised():
    def broken(task, meters_by_channel, reads, now):
        raise RuntimeError("bus on fire")

    sched = TaskScheduler([FAST], [M1], broken)
    assert await sched.run_task("fast", "bus", now=NOW) is None
    assert sched.stats["fast@bus"].errors == 1 and sched.stats["fast@bus"].runs == 0


def test_scheduler_plan_and_description(store):
    sched = TaskScheduler([RT, DF, RD, RR], METERS, lambda *a: None, store=store)
    assert [m.address for m in sched.meters_of("rt")] == [A1, A2, A3, A4]
    assert sched.channels_of("rt") == ("bus", "gw") and sched.channels_of("df") == ("bus",)
    assert set(sched.stats) == {"rt@bus", "rt@gw", "df@bus", "rd@bus", "rr@bus", "rr@gw"}
    reads = sched.reads_for("rt", "bus", NOW)
    assert set(reads) == {A1, A2, A3}
    assert sched.missing(A1, "rt", DAY, NOW).curves[0].start == cst(2, 0)
    lines = sched.describe(cst(0, 0))
    assert lines[1].startswith(
        "task df (daily_frozen, cron '15 0 * * *', groups res): 2 meter(s) on bus; next 2025-03-04 00:15:00+08:00")
    assert [d.task.name for d in sched.due(cst(0, 16))] == ["rt", "df"]
    with pytest.raises(TaskSpecError, match="used twice"):
        TaskScheduler([RT, RT], METERS, lambda *a: None)
    with pytest.raises(TaskSpecError, match="needs the store"):
        TaskScheduler([RT, RR], METERS, lambda *a: None)
    with pytest.raises(TaskSpecError, match="unknown task"):
        TaskScheduler([TaskSpec("r", "reread", options={"tasks": ["nope"]})], METERS, lambda *a: None, store=store)
