"""MeterModel.advance's same-minute shortcut against the boundary walk it skips.

Within one meter minute advance() integrates with the minute's cached step and returns; these
tests drive one model with the shortcut and one without through the same history and want the
same registers, demand window and values, to the microsecond unit.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from meterd.simulators.model import LoadProfile, MeterModel

T0 = datetime(2025, 6, 1, 23, 58, 30)  # meter-local; crosses midnight, an hour and minutes early on


class _NoShortcut(MeterModel):
    def advance(self, now: datetime) -> None:
        self._minute_end = None  # forget the minute: always walk
        super().advance(now)


def _pair(**kw: object) -> tuple[MeterModel, MeterModel]:
    return (MeterModel("000001000001", start=T0, seed=3, **kw),  # type: ignore[arg-type]
            _NoShortcut("000001000001", start=T0, seed=3, **kw))  # type: ignore[arg-type]


def _same(fast: MeterModel, slow: MeterModel, now: datetime) -> None:
    assert fast._reg == slow._reg
    assert fast._minute_acc == slow._minute_acc
    assert fast.time == slow.time
    assert fast.values(now) == slow.values(now)


@pytest.mark.parametrize("kw", [{}, {"profile": LoadProfile(pv_peak_kw=5.0)}, {"phases": 1},
                                {"clock_offset": timedelta(seconds=-41, microseconds=7)}])
def test_reads_many_times_a_minute_integrate_as_the_walk_does(kw: dict[str, object]) -> None:
    fast, slow = _pair(**kw)
    now = T0
    for i in range(4000):  # steps of a few ms to a few s: many in a minute, some on a boundary
        now += timedelta(microseconds=(i * 7919) % 3_000_000 + 1)
        if i % 500 == 0:
            now = now.replace(second=0, microsecond=0) + timedelta(minutes=1)  # exactly on a boundary
        if i == 1500:
            for m in (fast, slow):
                m.relay_open = True
        if i == 1700:
            for m in (fast, slow):
                m.relay_open = False
        fast.advance(now)
        slow.advance(now)
        if i % 97 == 0:
            fast.advance(now - timedelta(seconds=1))  # backwards: a no-op in both
            slow.advance(now - timedelta(seconds=1))
            _same(fast, slow, now)
    _same(fast, slow, now)


def test_a_clock_set_mid_minute_is_walked_not_shortcut() -> None:
    fast, slow = _pair()
    now = T0
    for i in range(600):
        now += timedelta(milliseconds=730)
        if i in (100, 300):
            shift = timedelta(seconds=95 if i == 100 else -20)
            for m in (fast, slow):
                m.set_clock(m.meter_clock(now) + shift, now=now)
        fast.advance(now)
        slow.advance(now)
    _same(fast, slow, now)
