"""Absurd meter values between a decoded reading and the ledger: refused, never charged.

Charging is run both ways a pass runs it (:func:`charge_account` and :class:`DistrictCharger`'s
fast path, with its plans in the memo), since they once disagreed about a value beyond the span.
"""

from __future__ import annotations

import struct
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal as D

import pytest

from meterd.control.charging import Cursor, DistrictCharger, FlagKind, charge_account
from meterd.control.model import Rate, RegisterReading
from meterd.control.tariff import Tariff, TariffKind, TariffVersion
from meterd.plausibility import DEFAULT_RATING, Gate, MeterBounds
from meterd.protocols.modbus import compile_plan, decode_block, get_map
from meterd.protocols.terminal.mqtt import _value_from_json
from meterd.readings import Quality, Reading

M, P = "000000000001", "000000000009"
T = Rate.TOTAL
E = "energy.active.import.total"
T0 = datetime(2026, 11, 2, 2, 0, tzinfo=UTC)
FLAT = Tariff("flat", (TariffVersion(date(2020, 1, 1), TariffKind.FLAT, price=D("0.50")),))


def charged(value: str, cursor: str, *, minutes: float = 15, multiplier: str = "1", fast: bool):
    """Entries, cursors and flags of one reading of ``value`` after ``cursor``, read ``minutes`` before."""
    t0, t1 = T0, T0 + timedelta(minutes=minutes)
    cursors = {(M, T): Cursor(M, T, t0, D(cursor))}
    readings = [RegisterReading(M, T, t1, D(value))]
    multipliers = {M: D(multiplier)}
    charger = DistrictCharger()
    if fast:  # plan the delta first (on a plausible reading), so the fast path may take it
        charger.charge("P", FLAT, [RegisterReading(P, T, t1, D(1))], {(P, T): Cursor(P, T, t0, D(0))}, {})
        charger.take()
    charger.charge("A", FLAT, readings, cursors, {}, multipliers)
    entries, moved, _, flags = charger.take()
    plain = charge_account("A", FLAT, readings, cursors, {}, multipliers=multipliers)
    assert [tuple(e[:5]) for e in entries] == [(e.key, e.account, e.kind, e.amount, e.at) for e in plain.entries]
    assert moved == list(plain.cursors.values()) and [f.kind for f in flags] == [f.kind for f in plain.flags]
    return entries, moved, flags


@pytest.mark.parametrize("fast", [False, True])
def test_a_value_beyond_the_span_is_not_charged_on_either_path(fast):
    # Before: the fast path charged 999999.90 -> 1000000.40 (0.50 kWh) and made 1000000.40 the
    # cursor; charge_account flagged the same reading.  Which one ran depended on the memo.
    entries, moved, flags = charged("1000000.40", "999999.90", fast=fast)
    assert entries == [] and moved == [] and [f.kind for f in flags] == [FlagKind.IMPLAUSIBLE]


@pytest.mark.parametrize("fast", [False, True])
def test_a_cursor_beyond_the_span_is_started_afresh_never_credited(fast):
    # A cursor left beyond the span (by the fast path above, before the fix): the next value's
    # "rollover" came out negative, a CHARGE entry of +0.05 yuan for -0.10 kWh.
    entries, moved, flags = charged("0.30", "1000000.40", fast=fast)
    assert entries == []
    assert [(c.value, c.at) for c in moved] == [(D("0.30"), T0 + timedelta(minutes=15))]
    assert [f.kind for f in flags] == [FlagKind.IMPLAUSIBLE] and "1000000.40" in flags[0].detail


@pytest.mark.parametrize("fast", [False, True])
def test_a_charge_beyond_any_ledger_entry_is_held_not_charged(fast):
    # CT x PT 10^6 (a 500 kV point), a reading 20 days after the last: 3 x 10^10 kWh fits what the
    # rating allows over 480 h, but at 0.50 it is 1.5 x 10^10 yuan, more than any ledger entry may
    # be.  Before: the entry went to the store, which refused the whole pass (every account).
    entries, moved, flags = charged("30000000000", "0", minutes=20 * 24 * 60, multiplier="1000000", fast=fast)
    assert entries == [] and moved == []
    assert [f.kind for f in flags] == [FlagKind.IMPLAUSIBLE]
    assert "30000000000" in flags[0].detail and "1.5000E+10 yuan" in flags[0].detail
    # a plausible one of the same meter is charged as before
    entries, moved, flags = charged("1000000", "0", minutes=20 * 24 * 60, multiplier="1000000", fast=fast)
    assert [e[3] for e in entries] == [D("-500000.00")] and flags == []


@pytest.mark.parametrize("text", ["0." + "1" * 10_000, "1E-999999", "-1E-999999", "1" * 5000])
def test_a_pushed_value_of_absurd_digits_is_parsed_then_flagged_at_the_door(text):
    # Before: "0.111..." (10,000 digits) and "1E-999999" were good readings and were charged
    # (1E-999999 as a 0.00 entry of "1E-999999 kWh"); "1" * 5000 was flagged only as beyond the span.
    value = _value_from_json(text, "decimal")  # as the MQTT terminal push parses it: a finite Decimal
    for quantity in (E, "power.active.total"):
        out, found = Gate({}).screen([Reading(M, quantity, T0, value, "kWh")])
        assert out[0].quality is Quality.IMPLAUSIBLE and len(found) == 1
        assert M in found[0].describe() and quantity in found[0].describe()
        assert len(found[0].describe()) < 200  # the value is shown cut short


@pytest.mark.parametrize("text", ["0", "-0", "0E-999999", "1E-45", "4.9E-324", "123456.78", "1.2345678901234567E-308",
                                  "12345.678901234567"])
def test_a_meters_own_numbers_still_pass(text):
    # float32 and float64 subnormals, zeros of any exponent, a float64's 17 digits: a meter's numbers
    out, found = Gate({}).screen([Reading(M, "voltage.a", T0, D(text), "V")])
    assert out[0].quality is Quality.GOOD and found == []


def test_power_beyond_ten_times_what_the_meter_can_carry_is_flagged():
    # the default rating carries 79.2 kW; a CT x PT 1000 point 79,200 kW (primary)
    gate = Gate({"000000000002": MeterBounds.of(DEFAULT_RATING, D(1000))})
    readings = [Reading(M, "power.active.total", T0, D(792), "kW"), Reading(M, "power.active.a", T0, D("-792.01"), "kW"),
                Reading(M, "power.reactive.total", T0, D("5E+11"), "kvar"),
                Reading("000000000002", "power.active.total", T0, D(500000), "kW"),
                Reading("000000000002", "power.active.total", T0, D(792001), "kW"),
                Reading(M, "power.active.total", T0, D(5000), "W")]  # another unit: not judged here
    out, found = gate.screen(readings)
    assert [r.quality for r in out] == [Quality.GOOD, Quality.IMPLAUSIBLE, Quality.IMPLAUSIBLE, Quality.GOOD,
                                        Quality.IMPLAUSIBLE, Quality.GOOD]
    assert "79.2" in found[0].reason and "79200" in found[2].reason


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_a_float_register_a_meter_cannot_fill_costs_only_its_own_value(bad):
    # SDM630: energy shares a block with pf.total and demand.active.now.  Before: demand FFFF FFFF
    # (NaN, "not available") was a ProtocolError for the whole block, so the energy register was
    # lost every round and the account never charged.
    block = next(b for b in compile_plan(get_map("eastron-sdm630")) if b.address == 52)
    registers = [0] * block.count

    def put(quantity: str, number: float) -> None:
        f = next(f for f in block.fields if f.entry.quantity == quantity)
        registers[f.offset : f.offset + 2] = struct.unpack(">2H", struct.pack(">f", number))

    put("energy.active.import.total", 1234.5)
    put("demand.active.now", float(bad))
    values = {v.quantity: v.value for v in decode_block(block, registers)}
    assert values["energy.active.import.total"] == D("1234.5") and not values["demand.active.now"].is_finite()
    out, found = Gate({}).screen([Reading(M, q, T0, v, "") for q, v in values.items()])
    assert {r.quantity for r in out if r.quality is Quality.IMPLAUSIBLE} == {"demand.active.now"}
    assert [f.reason for f in found] == ["not a number"] and "demand.active.now" in found[0].describe()
