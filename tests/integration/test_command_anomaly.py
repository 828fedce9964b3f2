"""A failed relay command is an anomaly too (issue 20), against a simulated DL/T 645 meter whose
relay is stuck, over real TCP: the executor's finished hook records a ``command_failed`` anomaly
(critical: the relay did not move), the alarm list shows the command's ``relay_stuck`` alarm once
(not a second one for the anomaly), a confirmed command of another kind leaves both alone, and a
confirmed trip once the relay is fixed closes the anomaly and resolves the alarm."""

from __future__ import annotations

from datetime import timedelta

from test_prepaid_commands import OK, STUCK, queue, rig  # noqa: F401 -- rig: the fixture

from meterd.analytics.anomalies import AnomalyStore, Kind, Severity
from meterd.analytics.outages import OutageStore
from meterd.api.alarms import AlarmWatch
from meterd.control.model import CommandKind, CommandState
from meterd.control.runtime import record_command_anomaly
from meterd.storage.alarms import Action, AlarmKind, AlarmState


async def test_a_stuck_relay_is_an_anomaly_and_one_alarm_until_a_trip_is_confirmed(rig, tmp_path) -> None:  # noqa: F811
    bus, store, executor, clock, _, _ = rig
    anomalies, outages = AnomalyStore(tmp_path), OutageStore(tmp_path)
    executor.finished = lambda command: record_command_anomaly(anomalies, command, clock())
    watch = AlarmWatch(tmp_path, control=store, anomalies=anomalies, outages=outages)
    try:
        queue(store, clock, STUCK, CommandKind.TRIP)
        [done] = await executor.run_once()
        assert done.state is CommandState.FAILED
        [event] = anomalies.events(state="open", meter=STUCK)
        assert event.kind is Kind.COMMAND_FAILED and event.severity is Severity.CRITICAL
        assert "did not move" in event.detail and f"#{done.id}" in event.detail
        watch.refresh(clock(), force=True)
        [alarm] = watch.store.alarms()[0]
        assert (alarm.kind, alarm.subject, alarm.detail["command_id"]) == (AlarmKind.RELAY_STUCK, STUCK, done.id)

        # the policy sends the trip again: still one anomaly and one alarm
        clock.now += timedelta(minutes=10)
        queue(store, clock, STUCK, CommandKind.TRIP)
        await executor.run_once()
        assert len(anomalies.events(meter=STUCK)) == 1
        watch.refresh(clock(), force=True)
        assert [a.id for a in watch.store.alarms()[0]] == [alarm.id]

        # an alarm command confirmed on the meter says nothing about the relay: both stay
        clock.now += timedelta(minutes=10)
        queue(store, clock, STUCK, CommandKind.ALARM)
        [alarmed] = await executor.run_once()
        assert alarmed.state is CommandState.CONFIRMED
        assert len(anomalies.events(state="open", meter=STUCK)) == 1

        # a good meter's confirmed trip opens nothing
        queue(store, clock, OK, CommandKind.TRIP)
        await executor.run_once()
        assert anomalies.events(meter=OK) == []

        # the relay is repaired and the trip confirmed: the anomaly closes, the alarm is resolved
        bus.meter(STUCK).stuck_relay = False
        clock.now += timedelta(minutes=10)
        queue(store, clock, STUCK, CommandKind.TRIP)
        [fixed] = await executor.run_once()
        assert fixed.state is CommandState.CONFIRMED
        assert anomalies.events(state="open", meter=STUCK) == []
        watch.refresh(clock(), force=True)
        resolved = watch.store.alarm(alarm.id)
        assert resolved is not None and resolved.state is AlarmState.CLOSED
        assert [s.action for s in resolved.history] == [Action.RAISED, Action.RESOLVED]
    finally:
        watch.close()
        anomalies.close()
        outages.close()
