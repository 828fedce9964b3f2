"""The simulated Q/GDW 1376.1 terminal without sockets: requests through the codec in, frames out,
time passed in -- the timers of its control turns, protection, time sync, Tp, the event ring, the
freezes it gives up on, the archive replacing a point's meter."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import pytest

from meterd.protocols.gdw1376.catalogue import EventPointers, MeterArchive, MeterEntry, ProtectOn, RemoteTrip
from meterd.protocols.gdw1376.events import EventRecord, ParameterChange, ReadFailure, TerminalFault
from meterd.protocols.gdw1376.frame import Afn, TerminalAddress, decode_frame, encode_frame, make_time_label
from meterd.protocols.gdw1376.messages import DataUnit, Message, decode_message, encode, request, unit
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.gdw_terminal import Gdw1376Terminal, parse_control_state
from meterd.simulators.model import MeterModel

ADDRESS = TerminalAddress("3201", 0x12)
START = datetime(2025, 3, 10, 10, 0)
PW = bytes(16)


def terminal(kind: str = "special", start: datetime = START, **kw: Any) -> Gdw1376Terminal:
    bus = Dlt645Bus([MeterModel(f"{i:012d}", start=start, seed=i) for i in (1, 2)])
    return Gdw1376Terminal(ADDRESS, bus, start=start, kind=kind, **kw)


def ask(t: Gdw1376Terminal, now: datetime, afn: int, units: list[DataUnit], **kw: Any) -> list[Any]:
    """Through the wire format both ways; the answer's frames decoded (F5/F6 left raw)."""
    if afn in (Afn.CONTROL, Afn.SET_PARAMETERS, Afn.FORWARD):
        kw.setdefault("pw", PW)
    msg = decode_message(decode_frame(encode(request(ADDRESS, afn, units, seq=5, **kw))))
    out: list[Any] = []
    for frame in t.handle(msg, now):
        raw = decode_frame(encode_frame(frame))
        out.append(raw if raw.afn == Afn.CLASS1_DATA and raw.data[:2] == b"\x00\x00" and raw.data[3] == 0
                   and raw.data[2] in (0x10, 0x20, 0x30) else decode_message(raw))
    return out


def ok(answer: list[Message]) -> bool:
    (msg,) = answer
    return msg.afn == Afn.CONFIRM and msg.units[0].fns == (1,)


def state(t: Gdw1376Terminal, now: datetime) -> dict[int, dict[str, Any]]:
    (frame,) = ask(t, now, Afn.CLASS1_DATA, [DataUnit((0,), (5, 6))])
    return parse_control_state(frame.data)


def test_a_trip_with_alarm_and_limit_runs_its_timers_on_the_terminal_clock():
    t = terminal()
    assert ok(ask(t, START, Afn.CONTROL, [unit(2, 1, RemoteTrip(limit_half_hours=2, alarm_minutes=5))]))
    assert state(t, START + timedelta(minutes=1))[6] == {"tripped": set(), "reminder": False}
    assert t.turns[2].alarm_until is not None  # the pre-trip alarm runs; F6 shows no trip yet
    assert state(t, START + timedelta(minutes=5))[6] == {"tripped": {2}, "reminder": False}
    assert state(t, START + timedelta(minutes=64))[6]["tripped"] == {2}
    assert state(t, START + timedelta(minutes=65))[6]["tripped"] == set()  # 5 min alarm + 1 h limit


def test_protection_closes_tripped_turns_and_refuses_trips_until_released():
    t = terminal()
    assert ok(ask(t, START, Afn.CONTROL, [unit(1, 1, RemoteTrip())]))
    assert ok(ask(t, START, Afn.CONTROL, [unit(0, 25, ProtectOn(0))]))
    assert state(t, START) == {5: {"protected": True, "reminder": False}, 6: {"tripped": set(), "reminder": False}}
    (denied,) = ask(t, START, Afn.CONTROL, [unit(1, 1, RemoteTrip())])
    assert denied.units[0].fns == (2,)
    assert ok(ask(t, START, Afn.CONTROL, [unit(0, 33)]))
    assert ok(ask(t, START, Afn.CONTROL, [unit(1, 1, RemoteTrip())]))
    assert state(t, START)[6]["tripped"] == {1}


def test_items_of_one_control_frame_are_confirmed_one_by_one_when_some_fail():
    t = terminal(turns=2)
    (answer,) = ask(t, START, Afn.CONTROL, [unit(1, 1, RemoteTrip()), unit(3, 1, RemoteTrip())])
    results = answer.value(3)
    assert answer.units[0].fns == (3,) and [(r.pns, r.error) for r in results.items] == [((1,), 0), ((3,), 1)]


def test_time_sync_sets_the_terminal_clock():
    t = terminal()
    assert ok(ask(t, START, Afn.CONTROL, [unit(0, 31, datetime(2025, 3, 10, 9, 0, 30))]))
    (answer,) = ask(t, START + timedelta(minutes=1), Afn.CLASS1_DATA, [unit(0, 2)])
    assert answer.value(2) == datetime(2025, 3, 10, 9, 1, 30)


def test_a_request_whose_time_label_expired_is_dropped():
    t = terminal()
    stale = make_time_label(START - timedelta(minutes=10), 1, 5)  # sent 10 min ago, 5 min allowed
    assert ask(t, START, Afn.CLASS1_DATA, [unit(0, 2)], tp=stale) == []
    fresh = make_time_label(START - timedelta(minutes=1), 2, 5)
    assert len(ask(t, START, Afn.CLASS1_DATA, [unit(0, 2)], tp=fresh)) == 1
    assert t.stats.expired == 1


def test_nothing_is_answered_while_the_terminal_has_no_power():
    t = terminal()
    t.power_down(START)
    assert ask(t, START + timedelta(minutes=1), Afn.CLASS1_DATA, [unit(0, 2)]) == []
    record = t.power_up(START + timedelta(minutes=90))
    assert record is not None and (record.off, record.on) == (START, START + timedelta(minutes=90))


def test_event_pointers_wrap_and_only_records_held_are_sent():
    t = terminal()
    now = START
    for _ in range(300):  # more than the 255 records a byte of pointers can span
        t.power_down(now)
        now += timedelta(minutes=2)
        t.power_up(now)
    assert t.event_counter.important == 300 % 256
    # record i (from 0) has pointer i % 256; the last 255 are kept: pointers 45..255 and 0..43
    (answer,) = ask(t, now, Afn.CLASS3_DATA, [unit(0, 1, EventPointers(40, 46))])
    log = answer.value(1)
    assert (log.start, log.end, len(log.records)) == (40, 44, 4) and answer.ec is None  # read up to EC1: no ACD
    assert log.records[-1].on == now  # record 299
    (oldest,) = ask(t, now, Afn.CLASS3_DATA, [unit(0, 1, EventPointers(45, 46))])
    assert oldest.value(1).records == (t._events[0][1],) and t._events[0][1].on == START + timedelta(minutes=2 * 46)
    (gone,) = ask(t, now, Afn.CLASS3_DATA, [unit(0, 1, EventPointers(44, 45))])  # overwritten
    assert gone.afn == Afn.CONFIRM and gone.units[0].fns == (2,)


def test_a_day_the_meter_has_no_freeze_for_is_given_up_not_asked_again():
    t = terminal("concentrator", start=datetime(2025, 3, 10, 0, 5))  # catch-up days 7th..9th: the meters are new
    t.advance(t._true)
    reads = t.stats.meter_reads
    t.advance(datetime(2025, 3, 10, 0, 20))
    per_meter = (t.stats.meter_reads - reads) / 2
    assert per_meter == 11  # energy and power only: no freeze asked again
    assert t.points[1].given_up == {date(2025, 3, 7), date(2025, 3, 8), date(2025, 3, 9)}


def test_changing_a_points_meter_drops_what_was_collected_for_it():
    t = terminal("concentrator")
    t.advance(START)
    assert t.points[1].energy is not None
    entries = (MeterEntry(1, 1, 2, 0, 30, "000000000002"), MeterEntry(2, 2, 2, 0, 30, "000000000001"))
    assert ok(ask(t, START, Afn.SET_PARAMETERS, [unit(0, 10, MeterArchive(entries))]))
    assert t.points[1].energy is None and t.points[1].address == "000000000002"


@pytest.mark.parametrize("kind, turns", [("concentrator", 2), ("special", 0), ("special", 9), ("other", None)])
def test_impossible_terminals_are_refused_with_a_reason(kind, turns):
    with pytest.raises(ValueError, match="terminal 3201-0012"):
        terminal(kind, turns=turns)


# --- events other than ERC14, 催费告警 --------------------------------------------------------------


def test_a_meter_that_stops_answering_raises_erc31_and_again_when_it_answers():
    t = terminal(kind="concentrator")
    t.collect(START)  # both meters answer
    last = t.points[2].energy
    assert last is not None
    t.bus.meter("000000000002").power_down(START)
    t.collect(START + timedelta(minutes=15))
    t.collect(START + timedelta(minutes=30))  # still silent: no second record
    t.bus.meter("000000000002").power_up(START + timedelta(minutes=40))
    t.collect(START + timedelta(minutes=45))
    began, ended = t.events()
    assert isinstance(began, ReadFailure) and began.pn == 2 and began.began
    assert began.at == START + timedelta(minutes=15) and began.last_read == START
    assert began.energy == last.total  # the registers at the last good read
    assert ended == ReadFailure(START + timedelta(minutes=45), 2, False, None, None, None)
    assert t.events_waiting  # ACD until the master reads them


def test_no_meter_answering_is_one_erc21_and_a_meter_never_read_raises_no_erc31():
    t = terminal(kind="concentrator")
    for m in t.bus.meters:
        m.power_down(START)
    t.collect(START)
    t.collect(START + timedelta(minutes=15))
    assert t.events() == [TerminalFault(START, 4)]  # once; no ERC31: neither meter was ever read


def test_parameters_set_by_the_master_are_erc3_and_any_record_can_be_put_in():
    t = terminal()
    entries = MeterArchive((MeterEntry(seq=3, pn=3, port=2, baud=2400, protocol=30, address="000000000003"),))
    assert ask(t, START, Afn.SET_PARAMETERS, [unit(0, 10, entries)])[0].afn == Afn.CONFIRM
    (erc3,) = t.events()
    assert isinstance(erc3, ParameterChange) and erc3.item_names() == ["p0 F10"] and erc3.master == ADDRESS.master
    t.record_event(EventRecord(77, b"\xff"))
    (log,) = ask(t, START, Afn.CLASS3_DATA, [unit(0, 1, EventPointers(0, 2))])
    assert log.value(1).records == (erc3, EventRecord(77, b"\xff"))


def test_the_payment_reminder_alarm_is_set_and_cleared_and_shown_in_f5_and_f6():
    t = terminal()
    assert ok(ask(t, START, Afn.CONTROL, [unit(0, 26)]))
    assert state(t, START) == {5: {"protected": False, "reminder": True}, 6: {"tripped": set(), "reminder": True}}
    assert ok(ask(t, START, Afn.CONTROL, [unit(0, 34)]))
    assert state(t, START)[5]["reminder"] is False
    (denied,) = ask(terminal(kind="concentrator"), START, Afn.CONTROL, [unit(0, 26)])
    assert denied.units[0].fns == (2,)  # a concentrator has no 催费告警 output


def test_general_events_go_to_their_own_queue_without_acd_and_the_counters_show_them():
    t = terminal(kind="concentrator", general_ercs={31})
    t.collect(START)
    t.bus.meter("000000000001").power_down(START)
    t.collect(START + timedelta(minutes=15))  # ERC31: general
    t.record_event(EventRecord(77, b"\x01"))  # important
    assert [r.erc for r in t.events(general=True)] == [31] and [r.erc for r in t.events()] == [77]
    (counters,) = ask(t, START, Afn.CLASS1_DATA, [unit(0, 7)])
    assert counters.value(7).important == 1 and counters.value(7).general == 1
    (log,) = ask(t, START, Afn.CLASS3_DATA, [unit(0, 2, EventPointers(0, 1))])
    assert [r.erc for r in log.value(2).records] == [31]
    assert t.events_waiting  # the important one still waits (ACD); reading general events clears nothing
