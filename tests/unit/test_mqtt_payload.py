"""MQTT payload parsing: out-of-range times and deep nesting are payload errors (issue #14), and
property tests like the DL/T 645 ones: arbitrary input raises nothing but PayloadError, valid
messages round-trip.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from meterd.collector.mqtt import MqttHub
from meterd.protocols.terminal.mqtt import (
    EARLIEST,
    LATEST,
    QUALITIES,
    PayloadError,
    PushedReading,
    ReplyMessage,
    RequestMessage,
    decode_json,
    parse_readings,
    parse_rfc3339,
    readings_payload,
)
from meterd.readings import Quality, Reading

UP = "meterd/terminals/T1/up"


def pushed(timestamp: object, **extra: object) -> dict:
    return {"type": "readings", "meter": "000000000001",
            "readings": [{"quantity": "energy.active.import.total", "value": "1.00", "timestamp": timestamp, **extra}]}


OUT_OF_RANGE = [
    "0001-01-01T00:00:00+08:00",  # before year 1 in UTC: OverflowError before the fix
    "9999-12-31T23:59:59-08:00",  # after year 9999 in UTC: OverflowError before the fix
    "99999-01-01T00:00:00Z",
    "-0001-01-01T00:00:00Z",
    "1969-12-31T23:59:59Z",  # a negative epoch: accepted before the fix
    "2100-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "1e300",
    "NaN",
    "2026-01-01T00:00:00" + "0" * 10_000 + "Z",
]


@pytest.mark.parametrize("text", OUT_OF_RANGE)
def test_times_out_of_range_are_payload_errors(text: str) -> None:
    with pytest.raises(PayloadError):
        parse_rfc3339(text, "'timestamp'")


@pytest.mark.parametrize("value", [1e300, float("nan"), -1, 0, 2**70])
def test_numbers_are_not_times(value: object) -> None:
    with pytest.raises(PayloadError, match="must be an RFC 3339 string"):
        parse_rfc3339(value)


def test_the_window_edges() -> None:
    assert parse_rfc3339("1970-01-01T00:00:00Z") == EARLIEST
    assert parse_rfc3339("2100-01-01T07:59:59+08:00") == LATEST - timedelta(seconds=1)
    assert parse_rfc3339("1970-01-01T08:00:00+08:00") == EARLIEST


def _hub() -> MqttHub:
    return MqttHub("127.0.0.1", 1, client_id="test")  # never connected: messages are fed by hand


@pytest.mark.parametrize("message", [
    *(pushed(t) for t in OUT_OF_RANGE[:6]),
    pushed("2026-01-01T00:00:00Z", value="0001-01-01T00:00:00+01:00", kind="time"),
    {"id": "x1", "frame": "68", "sent": "0001-01-01T00:00:00+01:00"},
    {"id": "x1", "frame": "68", "replied": "9999-12-31T23:00:00-05:00"},
])
def test_the_hub_counts_them_as_malformed_and_logs_no_traceback(message: dict, caplog) -> None:
    hub = _hub()
    got = []
    hub.on_readings = lambda tid, readings: got.append(readings)
    hub._on_message(UP, json.dumps(message).encode())
    assert hub.stats.malformed == 1 and not got
    assert not [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize("payload", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    b'{"id":"x","frame":"68","sent":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
])
def test_deeply_nested_json_is_a_payload_error(payload: bytes, caplog) -> None:
    with pytest.raises(PayloadError, match="nested too deeply"):
        decode_json(payload)
    hub = _hub()
    hub._on_message(UP, payload)
    assert hub.stats.malformed == 1
    assert not [r for r in caplog.records if r.exc_info]


# --- property tests ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
FIELDS = ["type", "id", "frame", "meter", "protocol", "unit", "sent", "replied", "expires", "readings",
          "quantity", "value", "kind", "timestamp", "quality"]
times_text = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda t: t.isoformat()),
    st.text(alphabet="0123456789-+:TZ.", max_size=40),
    st.sampled_from(OUT_OF_RANGE),
)
leaf = st.one_of(json_values, times_text, st.sampled_from(["readings", "reply", "request", "decimal", "integer",
                                                            "boolean", "time", "text", "good", "fefe68", "1e9999"]))
reading_items = st.dictionaries(st.sampled_from(FIELDS), leaf, max_size=8)
messages = st.fixed_dictionaries(
    {}, optional={k: (st.lists(reading_items, max_size=4) if k == "readings" else leaf) for k in FIELDS})


def nearly(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly a valid field, sometimes anything: gets deep into the parsers."""
    return st.one_of(valid, valid, valid, leaf)


nearly_valid_items = st.fixed_dictionaries(
    {"quantity": nearly(st.text(min_size=1, max_size=10)),
     "value": nearly(st.decimals(allow_nan=False, allow_infinity=False).map(str)),
     "timestamp": nearly(times_text)},
    optional={"unit": nearly(st.text(max_size=4)), "kind": nearly(st.sampled_from(["decimal", "time", "integer"])),
              "quality": nearly(st.sampled_from(["good", "suspect"]))})
nearly_valid = st.one_of(
    st.fixed_dictionaries({"type": st.just("readings"), "meter": nearly(st.just("000000000001")),
                           "readings": nearly(st.lists(nearly_valid_items, min_size=1, max_size=3))}),
    st.fixed_dictionaries({"id": nearly(st.text(min_size=1, max_size=8)), "frame": nearly(st.just("fefe68"))},
                          optional={"sent": nearly(times_text), "replied": nearly(times_text),
                                    "expires": nearly(times_text), "type": st.sampled_from(["reply", "request"]),
                                    "unit": nearly(st.integers(0, 255))}),
)
messages = st.one_of(messages, nearly_valid)


def _all_parsers(payload: bytes) -> None:
    for parse in (RequestMessage.parse, lambda p: ReplyMessage.from_json(decode_json(p)),
                  lambda p: parse_readings(decode_json(p))):
        try:
            parse(payload)
        except PayloadError:
            pass


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_payload_errors(raw: bytes) -> None:
    _all_parsers(raw)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_arbitrary_json_objects_raise_only_payload_errors(obj: dict) -> None:
    _all_parsers(json.dumps(obj).encode())


@settings(max_examples=300, deadline=None)
@given(messages)
def test_the_hub_never_fails_on_a_message(obj: dict) -> None:
    hub = _hub()
    hub.on_readings = lambda tid, readings: None
    hub._dispatch(UP, json.dumps(obj).encode())  # _dispatch, not _on_message: no catch-all to hide behind


in_window = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2099, 12, 30),
                         timezones=st.just(timezone.utc)).map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))
values = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False, places=None).map(lambda d: d.normalize() if d else Decimal(0)),
    st.integers(-(2**63), 2**63),
    st.booleans(),
    in_window,
    st.text(max_size=30),
)
readings = st.builds(Reading, st.just("000000000001"), st.text(min_size=1, max_size=30), in_window, values,
                     st.text(max_size=8), st.sampled_from(list(Quality)))


@settings(max_examples=300, deadline=None)
@given(st.lists(readings, max_size=10), st.none() | in_window)
def test_pushed_readings_round_trip(items: list[Reading], sent: datetime | None) -> None:
    meter, back = parse_readings(decode_json(readings_payload("000000000001", items, sent)))
    assert meter == "000000000001" and [_fields(p) for p in back] == [_fields(r) for r in items]


def _fields(r: Reading | PushedReading) -> tuple[object, ...]:
    """A reading's fields, its quality as the payload's text (a PushedReading's is a str)."""
    return r.meter, r.quantity, r.timestamp, r.value, r.unit, str(r.quality)


def test_the_payload_qualities_are_the_readings_qualities() -> None:
    assert QUALITIES == tuple(q.value for q in Quality)


ids = st.text(min_size=1, max_size=128)
frames = st.binary(min_size=1, max_size=300)
protocols = st.none() | st.sampled_from(["dlt645-2007", "dlt645-1997", "modbus"])


@settings(max_examples=300, deadline=None)
@given(ids, frames, protocols, st.none() | st.text(max_size=20), st.none() | st.integers(0, 255),
       st.none() | in_window, st.none() | in_window)
def test_requests_round_trip(cid, frame, protocol, meter, unit, sent, expires) -> None:
    message = RequestMessage(cid, frame, protocol, meter, unit, sent, expires)
    assert RequestMessage.parse(message.payload()) == message


@settings(max_examples=300, deadline=None)
@given(ids, frames, protocols, st.none() | st.text(max_size=20), st.none() | in_window, st.none() | in_window)
def test_replies_round_trip(cid, frame, protocol, meter, sent, replied) -> None:
    message = ReplyMessage(cid, frame, protocol, meter, sent, replied)
    assert ReplyMessage.from_json(decode_json(message.payload())) == message
