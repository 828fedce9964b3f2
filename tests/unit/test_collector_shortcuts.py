"""Shortcuts of the collection hot path against the plain code they stand in for.

* the fast path's values (at most 16 digits) of a direct-connected meter (CT = PT = 1) are not
  multiplied by its ratios: the reading must be what the multiplication gives, digit and
  exponent; a ratio written ``1.0`` is not 1 (it changes the exponent) and is multiplied;
* the writer takes a round's readings in one step: the same queue as adding them one by one, and
  a naive timestamp refuses the lot;
* the store works out the milliseconds of a timestamp once per run of readings / attempts sharing
  it: rows equal to the row of each on its own;
* readings and attempts are made by :func:`meterd.readings.quick_init`'s ``__init__``: the same
  parameters as the dataclass's own, and the same frozen, hashable, picklable objects.
"""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterd.collector.poll import MeterTarget, fields_to_readings
from meterd.protocols.dlt645.catalogue import Field, Kind, Scaling
from meterd.readings import Quality, Reading, quick_init
from meterd.storage.sqlite import Attempt, SqliteStore, _reading_row, _reading_rows
from meterd.storage.writer import BatchWriter

T0 = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)

# what the fast path yields: up to 16 digits (catalogue numbers have 8 at most), any exponent
decimals = st.builds(lambda n, e: Decimal(n).scaleb(-e), st.integers(-(10**16) + 1, 10**16 - 1), st.integers(0, 6))


def _multiplied(value: Decimal, scaling: Scaling, ct: Decimal, pt: Decimal) -> Decimal:
    return {Scaling.CTPT: value * ct * pt, Scaling.CT: value * ct, Scaling.PT: value * pt}.get(scaling, value)


def _field(scaling: Scaling) -> Field:
    return Field("energy.active.import.total", Kind.NUMBER, 4, 2, False, "kWh", scaling)


@settings(max_examples=300)
@given(decimals, st.sampled_from(list(Scaling)))
def test_unity_ratios_give_what_the_multiplication_gives(value: Decimal, scaling: Scaling) -> None:
    target = MeterTarget("000000000001")
    assert target.unity
    (got,) = fields_to_readings(target, [_field(scaling)], [value], T0)
    want = _multiplied(value, scaling, Decimal(1), Decimal(1))
    assert str(got.value) == str(want) == str(target.scale(value, scaling))


@pytest.mark.parametrize(("ct", "pt"), [(Decimal("1.0"), Decimal(1)), (Decimal(1), Decimal("1.00")),
                                        (Decimal(50), Decimal(1)), (Decimal(1), Decimal(100))])
def test_other_ratios_are_multiplied(ct: Decimal, pt: Decimal) -> None:
    target = MeterTarget("000000000001", ct=ct, pt=pt)
    assert not target.unity
    for scaling in Scaling:
        (got,) = fields_to_readings(target, [_field(scaling)], [Decimal("1234.56")], T0)
        assert str(got.value) == str(_multiplied(Decimal("1234.56"), scaling, ct, pt))
    assert str(fields_to_readings(target, [_field(Scaling.CTPT)], [Decimal("1234.56")], T0)[0].value) != "1234.56"


def _reading(i: int, ts: datetime = T0) -> Reading:
    return Reading(f"{i:012d}", "energy.active.import.total", ts, Decimal(i) / 100, "kWh")


async def test_add_many_queues_what_adding_one_by_one_queues(tmp_path) -> None:
    readings = [_reading(i) for i in range(7)]
    with SqliteStore(tmp_path) as store:
        one, many = BatchWriter(store, batch_size=5), BatchWriter(store, batch_size=5)
        for r in readings:
            one.add(r)
        many.add_many(iter(readings))  # any iterable
        assert many._readings == one._readings and many._full.is_set() == one._full.is_set()
        naive = Reading("000000000009", "q", T0.replace(tzinfo=None), Decimal(1))
        with pytest.raises(ValueError, match="naive"):
            many.add_many([_reading(8), naive])
        assert many.pending == 7  # nothing of the refused lot was queued
        await many.close()
        assert many.written == 7


def test_reading_rows_equal_each_row_on_its_own() -> None:
    later = T0 + timedelta(minutes=15)
    same_instant_other_object = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)
    readings = [_reading(1), _reading(2), _reading(3, later), _reading(4, later), _reading(5, same_instant_other_object),
                _reading(6), Reading("000000000007", "t", T0 + timedelta(microseconds=999), Decimal(1))]
    assert _reading_rows(readings) == [_reading_row(r) for r in readings]


def test_attempt_rows_keep_each_timestamp(tmp_path) -> None:
    stamps = [T0, T0, T0 + timedelta(seconds=1), T0 + timedelta(seconds=1, milliseconds=5), T0]
    attempts = [Attempt(f"{i:012d}", "c", "00010000", ts, "ok", 0.01, "") for i, ts in enumerate(stamps)]
    with SqliteStore(tmp_path) as store:
        store.record_attempts(attempts)
        got = store.attempts()
    assert sorted((a.meter, a.timestamp) for a in got) == sorted((a.meter, a.timestamp) for a in attempts)


# --- quick_init: readings and attempts made through their slots' descriptors -------------------------


def _twin(cls: type) -> type:
    """The same dataclass with the __init__ dataclasses writes."""
    return dataclasses.make_dataclass(
        cls.__name__, [(f.name, f.type, dataclasses.field(default=f.default)) if f.default is not dataclasses.MISSING
                       else (f.name, f.type) for f in dataclasses.fields(cls)], frozen=True, slots=True)


@pytest.mark.parametrize("cls", [Reading, Attempt])
def test_quick_init_takes_what_the_dataclass_init_takes(cls: type) -> None:
    twin = _twin(cls)
    assert list(inspect.signature(cls.__init__).parameters.items()) == \
        list(inspect.signature(twin.__init__).parameters.items())


def test_readings_and_attempts_are_the_dataclasses_they_were() -> None:
    r = Reading("000000000001", "voltage.a", T0, Decimal("220.1"))
    assert (r.unit, r.quality) == ("", Quality.GOOD)
    assert r == Reading(meter="000000000001", quantity="voltage.a", timestamp=T0, value=Decimal("220.1"), unit="",
                        quality=Quality.GOOD)
    assert hash(r) == hash(Reading("000000000001", "voltage.a", T0, Decimal("220.1")))
    assert repr(r).startswith("Reading(meter='000000000001', quantity='voltage.a'")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.value = Decimal(1)  # type: ignore[misc]
    assert dataclasses.replace(r, unit="V").unit == "V" and pickle.loads(pickle.dumps(r)) == r
    with pytest.raises(TypeError):
        Reading("000000000001", "voltage.a", T0)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Reading("000000000001", "voltage.a", T0, Decimal(1), "V", Quality.GOOD, "extra")  # type: ignore[call-arg]
    a = Attempt("000000000001", "c", "00010000", T0, "ok")
    assert (a.latency, a.detail) == (None, "") and pickle.loads(pickle.dumps(a)) == a
    assert dataclasses.astuple(a) == ("000000000001", "c", "00010000", T0, "ok", None, "")


def test_quick_init_refuses_what_it_could_not_write_exactly() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class WithFactory:
        items: list = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(frozen=True, slots=True)
    class WithPostInit:
        x: int

        def __post_init__(self) -> None:
            pass

    for cls in (WithFactory, WithPostInit):
        with pytest.raises(TypeError):
            quick_init(cls)
