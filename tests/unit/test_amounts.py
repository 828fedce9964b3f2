"""The amount grammar (meterd.control.amounts): every case of issue #14 refused with its reason,
the good forms accepted exactly, and arbitrary text never raising anything but AmountError."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterd.control.amounts import (
    DEFAULT_LIMIT,
    MAX_TEXT,
    AmountError,
    AmountLimits,
    JsonNumber,
    amount_text,
    parse_adjustment,
    parse_amount,
    parse_payment,
)

# (text, what the refusal says) -- refused for payments and for adjustments alike
REFUSED = [
    ("92233720368547758.07", "more than the limit of 1000000 yuan"),
    ("1e3", "exponent"),
    ("1E+2", "exponent"),
    ("1.5e1", "exponent"),
    ("1_000", "separators"),
    ("1,000", "separators"),
    ("１０", "U+FF11 FULLWIDTH DIGIT ONE"),
    ("١٠", "U+0661 ARABIC-INDIC DIGIT ONE"),
    ("१०", "DEVANAGARI"),
    (" 10", "whitespace"),
    ("10 ", "whitespace"),
    ("10\n", "whitespace"),
    ("\u300010", "whitespace"),
    (".5", "before the point"),
    ("10.", "after the point"),
    ("NaN", "NaN"),
    ("-NaN", "NaN"),
    ("sNaN", "NaN"),
    ("Infinity", "infinity"),
    ("-Infinity", "infinity"),
    ("inf", "infinity"),
    ("", "empty"),
    ("0", "zero"),
    ("0.00", "zero"),
    ("1.234", "more than two decimals"),
    ("10.500", "more than two decimals"),
    ("abc", "not an amount"),
    ("1.2.3", "not an amount"),
    ("--1", "not an amount"),
    ("0x10", "not an amount"),
    ("1" * 200, "longer than 24 characters"),
    ("1" * 1_000_000, "longer than 24 characters"),
]


@pytest.mark.parametrize("parse", [parse_payment, parse_adjustment], ids=["payment", "adjustment"])
@pytest.mark.parametrize(("text", "says"), REFUSED, ids=[repr(t)[:30] for t, _ in REFUSED])
def test_refused_everywhere(parse, text: str, says: str) -> None:
    with pytest.raises(AmountError) as caught:
        parse(text)
    message = str(caught.value)
    assert says in message or (parse is parse_payment and text[:1] in "+-" and "takes no sign" in message)
    assert message.startswith(("payment amount ", "adjustment amount ")) and "\n" not in message
    assert len(message) < 200  # a 1 MB paste is quoted cut short


@pytest.mark.parametrize("text", ["+10", "-10", "-0", "+0.50", "-0.01"])
def test_a_payment_carries_no_sign(text: str) -> None:
    with pytest.raises(AmountError, match="takes no sign"):
        parse_payment(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("10", "10.00"), ("10.5", "10.50"), ("88.50", "88.50"), ("0.01", "0.01"), ("007", "7.00"),
    ("1000000", "1000000.00"), ("1000000.00", "1000000.00"),
])
def test_good_payments(text: str, expected: str) -> None:
    value = parse_payment(text)
    assert str(value) == expected and value.as_tuple().exponent == -2


@pytest.mark.parametrize(("text", "expected"), [
    ("-12.30", "-12.30"), ("+12.3", "12.30"), ("5", "5.00"), ("-1000000", "-1000000.00"),
])
def test_good_adjustments(text: str, expected: str) -> None:
    assert str(parse_adjustment(text)) == expected


@pytest.mark.parametrize("text", ["-0", "0", "+0.00"])
def test_an_adjustment_of_nothing_is_refused(text: str) -> None:
    with pytest.raises(AmountError, match="zero"):
        parse_adjustment(text)


def test_zero_where_zero_is_an_amount() -> None:
    assert str(parse_amount("-0", signed=True, limit=DEFAULT_LIMIT, what="x", zero=True)) == "0.00"


def test_the_limit_is_per_kind_and_named() -> None:
    limits = AmountLimits(max_payment=Decimal(500), max_adjustment=Decimal(20))
    assert parse_payment("500", limits) == 500
    with pytest.raises(AmountError, match=r"more than the limit of 500 yuan \(set by \[prepaid\] max_payment\)"):
        parse_payment("500.01", limits)
    assert parse_adjustment("-20", limits) == -20
    with pytest.raises(AmountError, match=r"max_adjustment"):
        parse_adjustment("-20.01", limits)
    with pytest.raises(AmountError, match="more than the limit of 1000000 yuan"):
        parse_payment("1000000.01")


def test_the_message_names_the_field_and_quotes_the_text() -> None:
    with pytest.raises(AmountError) as caught:
        parse_amount("1e3", signed=False, limit=DEFAULT_LIMIT, what="argument AMOUNT")
    assert str(caught.value) == 'argument AMOUNT "1e3" refused: an exponent is not accepted'


# --- JSON values -------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "text"), [("10.50", "10.50"), (10, "10"), (JsonNumber("10.50"), "10.50"),
                                             (JsonNumber("1e3"), "1e3"), (JsonNumber("1.5e1"), "1.5e1"),
                                             (Decimal("1E+3"), "1E+3")])
def test_json_numbers_keep_their_text_where_numbers_are_accepted(value, text: str) -> None:
    assert amount_text(value, what="amount", numbers=True) == text


@pytest.mark.parametrize("value", [True, False, 10.5, 1e3, None, [1], {"a": 1}])
def test_booleans_floats_and_others_are_never_amounts(value) -> None:
    with pytest.raises(AmountError, match="must be a number or string"):
        amount_text(value, what="amount", numbers=True)


@pytest.mark.parametrize("value", [10, JsonNumber("10.50"), True, 10.5])
def test_only_strings_where_money_travels_as_strings(value) -> None:
    with pytest.raises(AmountError, match='must be a JSON string such as "88.50"'):
        amount_text(value, what="field amount", numbers=False)


# --- properties --------------------------------------------------------------------------------

_GRAMMAR = re.compile(r"[0-9]+(\.[0-9]{1,2})?")


@given(st.text(max_size=40))
def test_any_text_is_an_amount_by_the_grammar_or_an_amount_error(text: str) -> None:
    try:
        value = parse_adjustment(text)
    except AmountError:
        body = text[1:] if text[:1] in ("+", "-") else text
        assert (not _GRAMMAR.fullmatch(body) or len(text) > MAX_TEXT or Decimal(body) == 0
                or Decimal(body) > DEFAULT_LIMIT)
        return
    assert value == Decimal(text) and value.as_tuple().exponent == -2 and 0 < abs(value) <= DEFAULT_LIMIT


@given(st.integers(min_value=1, max_value=100_000_000))
def test_every_fen_amount_up_to_the_limit_round_trips(fen: int) -> None:
    yuan, rest = divmod(fen, 100)
    text = f"{yuan}.{rest:02d}"
    assert parse_payment(text) == Decimal(fen).scaleb(-2) and str(parse_payment(text)) == text
    assert parse_adjustment(f"-{text}") == -Decimal(fen).scaleb(-2)
