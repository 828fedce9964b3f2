"""The one-step read-reply decoder must give exactly what the plain three steps give.

:func:`~meterd.protocols.dlt645.fastpath.decode_read_reply` stands in for ``decode_frame`` ->
``decode_response`` -> ``catalogue.decode`` on the polling hot path.  It may decline (None) and
leave a frame to the plain path, but whatever it returns must be the plain path's answer to the
digit and exponent, and for every plain normal read reply of an identifier it lays out it must
not decline.  Checked on golden frames, on valid replies of every such identifier with values
Hypothesis picks, on those replies damaged, and on arbitrary bytes.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterd.errors import ProtocolError
from meterd.protocols.dlt645 import catalogue
from meterd.protocols.dlt645.catalogue import DecodedValue, Kind
from meterd.protocols.dlt645.fastpath import as_decoded, decode_read_reply, layout, layout_of
from meterd.protocols.dlt645.frame import PREAMBLE, Function, decode_frame, encode_frame
from meterd.protocols.dlt645.messages import (
    AbnormalResponse,
    MeterErrorBits,
    ReadResponse,
    decode_response,
    encode_response,
)

# identifiers of every shape the fast path lays out, and some it leaves to the plain path
SIMPLE = [
    0x00010000,  # energy, unsigned XXXXXX.XX
    0x00000000,  # combined active energy, signed
    0x00030000,  # combined reactive 1, signed
    0x0001040C,  # rate 4, 12th settlement day
    0x02010100,  # voltage XXX.X
    0x02020100,  # current, signed XXX.XXX
    0x02030000,  # active power, signed
    0x02060000,  # power factor, signed X.XXX
    0x02800002,  # frequency
    0x04000501,  # status word 1 (a WORD)
    0x03110000,  # power-down count, XXXXXX
]
PLAIN_ONLY = [
    0x0001FF00,  # block of total + rates
    0x04000503,  # status word 3: flags too
    0x04000101,  # date
    0x01010000,  # demand + its time
    0x06100101,  # load curve records
]


def plain(raw: bytes) -> tuple[str, int, list[DecodedValue]] | None:
    """The long way: a normal read reply without follow-up frames, decoded, or None."""
    try:
        frame = decode_frame(raw)
        resp = decode_response(frame)
        if not isinstance(resp, ReadResponse) or resp.follow_up or frame.control != 0x91:
            return None
        return frame.address, resp.di, catalogue.decode(resp.di, resp.data)
    except ProtocolError:
        return None


def fast(raw: bytes) -> tuple[str, int, list[DecodedValue]] | None:
    got = decode_read_reply(raw)
    if got is None:
        return None
    address, di, fields, values = got
    return address, di, as_decoded(fields, values)


def exact(result: tuple[str, int, list[DecodedValue]] | None) -> object:
    """Comparable to the digit: Decimal('1.0') == Decimal('1.00'), their text differs."""
    if result is None:
        return None
    address, di, values = result
    return address, di, [(v.quantity, type(v.value), str(v.value), v.unit, v.scaling) for v in values]


def agree(raw: bytes) -> None:
    f = fast(raw)
    if f is not None:
        assert exact(f) == exact(plain(raw)), raw.hex(" ")


def reply(address: str, di: int, data: bytes, *, preamble: bytes = PREAMBLE) -> bytes:
    return preamble + encode_frame(encode_response(ReadResponse(address, di, data)))


# --- golden frames ------------------------------------------------------------------------------


def test_energy_reply_golden() -> None:
    raw = bytes.fromhex("FEFEFEFE 68 010000000000 68 91 08 33333433 89674533 9F 16")
    address, di, fields, values = decode_read_reply(raw)  # type: ignore[misc]
    assert (address, di) == ("000000000001", 0x00010000)
    assert [f.quantity for f in fields] == ["energy.active.import.total"]
    assert values == [Decimal("1234.56")] and str(values[0]) == "1234.56"
    assert exact(fast(raw)) == exact(plain(raw))


@pytest.mark.parametrize("di", SIMPLE)
def test_every_simple_item_is_laid_out(di: int) -> None:
    assert layout(di) is not None and layout_of(di) is not None


@pytest.mark.parametrize("di", PLAIN_ONLY)
def test_others_are_left_to_the_plain_path(di: int) -> None:
    assert layout(di) is None
    item = catalogue.lookup(di)
    if not item.records:
        size = item.size
        raw = reply("000000000001", di, bytes(size))
        assert decode_read_reply(raw) is None  # declined, though the plain path may decode it


def test_declines_what_is_not_a_plain_read_reply() -> None:
    good = reply("000000001234", 0x00010000, bytes.fromhex("56341200"))
    assert decode_read_reply(good) is not None
    assert decode_read_reply(good[4:]) is not None  # no preamble
    follow = PREAMBLE + encode_frame(encode_response(ReadResponse("000000001234", 0x00010000, b"\x00" * 4, True)))
    abnormal = encode_frame(encode_response(AbnormalResponse("000000001234", Function.READ_DATA,
                                                             MeterErrorBits.NO_DATA)))
    not_bcd = reply("000000001234", 0x00010000, bytes.fromhex("5A341200"))
    unknown = reply("000000001234", 0x7F7F7F7F, b"\x00" * 4)
    cases = [follow, abnormal, not_bcd, unknown, good[:-1], good + b"\x00", b"\x00" + good,
             good[:-2] + bytes(((good[-2] + 1) & 0xFF,)) + good[-1:]]
    for raw in cases:
        assert decode_read_reply(raw) is None, raw.hex(" ")
        agree(raw)
    assert plain(not_bcd) is None and plain(unknown) is None


def test_wrong_length_for_the_item_is_declined() -> None:
    raw = reply("000000001234", 0x00010000, bytes.fromhex("563412"))  # 3 value bytes, 4 needed
    assert decode_read_reply(raw) is None and plain(raw) is None


def test_signed_values_and_negative_zero() -> None:
    # combined active energy, sign bit set on a zero magnitude: the plain path gives 0.00, not -0.00
    for data, text in [("00000080", "0.00"), ("56341280", "-1234.56"), ("56341200", "1234.56")]:
        raw = reply("000000000007", 0x00000000, bytes.fromhex(data))
        got = fast(raw)
        assert got is not None and str(got[2][0].value) == text
        assert exact(got) == exact(plain(raw))


# --- properties ----------------------------------------------------------------------------------

addresses = st.integers(0, 999_999_999_999).map(lambda n: f"{n:012d}")


def _value_strategy(f: catalogue.Field) -> st.SearchStrategy[object]:
    if f.kind is Kind.WORD:
        return st.integers(0, 256**f.size - 1)
    limit = 100**f.size
    if f.signed:
        limit = limit * 8 // 10
    return st.integers(-(limit - 1) if f.signed else 0, limit - 1).map(lambda n: Decimal(n).scaleb(-f.decimals))


@st.composite
def simple_replies(draw: st.DrawFn) -> bytes:
    di = draw(st.sampled_from(SIMPLE))
    item = catalogue.lookup(di)
    values = {f.quantity: draw(_value_strategy(f)) for f in item.fields}
    data = catalogue.encode(di, values)  # type: ignore[arg-type]
    return reply(draw(addresses), di, data, preamble=PREAMBLE[: draw(st.integers(0, 4))])


@settings(max_examples=400)
@given(simple_replies())
def test_valid_replies_decode_the_same(raw: bytes) -> None:
    f = fast(raw)
    assert f is not None, raw.hex(" ")  # every plain reply of a laid-out identifier is taken
    assert exact(f) == exact(plain(raw))
    # the layout's own decoder (decode_read_reply does the commonest item inline) agrees too
    fields, decode = layout_of(f[1])  # type: ignore[misc]
    data = decode_frame(raw).data
    assert exact((f[0], f[1], as_decoded(fields, decode(data)))) == exact(f)  # type: ignore[arg-type]


@settings(max_examples=400)
@given(st.sampled_from(SIMPLE), addresses, st.binary(min_size=0, max_size=12))
def test_any_payload_of_a_simple_item_agrees(di: int, address: str, data: bytes) -> None:
    raw = reply(address, di, data)
    agree(raw)
    p = plain(raw)
    if p is not None:  # BCD that decodes, of the right size: the fast path must take it
        assert fast(raw) is not None


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(simple_replies(), st.integers(0, 30), st.integers(1, 255))
def test_damaged_replies_agree(raw: bytes, at: int, delta: int) -> None:
    damaged = bytearray(raw)
    i = at % len(damaged)
    damaged[i] = (damaged[i] + delta) & 0xFF
    agree(bytes(damaged))


@settings(max_examples=500)
@given(st.binary(max_size=60))
def test_arbitrary_bytes_never_raise_and_agree(raw: bytes) -> None:
    agree(raw)
    agree(PREAMBLE + b"\x68" + raw)
