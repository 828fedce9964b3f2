"""The one grammar for money typed or sent in: payments, adjustments, amount thresholds.

Every path that turns money *text* into a ``Decimal`` -- ``meterd pay`` / ``adjust``, the HTTP
API, billing imports, yuan thresholds in the config -- goes through :func:`parse_amount`, so an
amount is accepted or refused the same way wherever it comes from::

    amount  = [sign] digits ["." digit [digit]]      sign only where a sign makes sense
    digits  = 1*("0"-"9")                            ASCII only

Refused, each with its reason: an empty text, surrounding whitespace, any non-ASCII character
(full-width ``１０``, Arabic-Indic ``١٠``), a sign where none belongs (a payment is never ``+10``
or ``-0``), an exponent (``1e3``), underscores or separators (``1_000``, ``1,000``), ``NaN`` and
``Infinity``, a bare point (``.5``, ``10.``), more than two decimals, zero where zero means
nothing, and more than the limit.  Text longer than :data:`MAX_TEXT` characters is refused
before any ``Decimal`` work.

Bounds, and why SQLite's integers cannot overflow (balances are integer fen in SQLite, int64):

- one payment or adjustment: at most its configured limit (``[prepaid] max_payment`` /
  ``max_adjustment``, default :data:`DEFAULT_LIMIT`), which may not be set above
  :data:`ENTRY_LIMIT`;
- any ledger entry at all, charges included: at most :data:`ENTRY_LIMIT` (10^12 fen), refused by
  :func:`meterd.control.state.to_fen` otherwise;
- any balance: at most :data:`BALANCE_LIMIT` (10^18 fen) either way, enforced by the state
  database itself (a trigger refuses a balance that is not an integer or is out of range).

So ``balance + entry`` stays below 1.000001 × 10^18 < 2^63 ≈ 9.22 × 10^18 and never turns REAL
(SQLite's ``+`` does on overflow); a ``SUM`` of entries could only overflow past 8 million
entries of 10 billion yuan each, and SQLite's ``SUM`` raises "integer overflow" then rather than
return a float.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Self

from meterd.errors import MeterdError

MAX_TEXT: Final = 24  # characters: "-1000000000000.00" is 17
DEFAULT_LIMIT: Final = Decimal(1_000_000)  # yuan, per payment and per adjustment
ENTRY_LIMIT: Final = Decimal(10_000_000_000)  # yuan: no ledger entry of any kind beyond this
BALANCE_LIMIT_FEN: Final = 10**18  # |balance| in fen; int64 ends at 9,223,372,036,854,775,807
FEN: Final = Decimal("0.01")

_AMOUNT: Final = re.compile(r"([+-]?)([0-9]+)(?:\.([0-9]{1,2}))?")
_HINT: Final = "write yuan with at most two decimals, e.g. 100 or 88.50"


class AmountError(MeterdError, ValueError):
    """An amount refused by the grammar or its bound; the message names the field, quotes the
    text and says why."""


@dataclass(frozen=True, slots=True)
class AmountLimits:
    """The most one payment or one adjustment (either sign) may be, in yuan."""

    max_payment: Decimal = DEFAULT_LIMIT
    max_adjustment: Decimal = DEFAULT_LIMIT


DEFAULT_LIMITS: Final = AmountLimits()  # the defaults, shared (frozen)


def quote(text: str) -> str:
    """``text`` as shown in a message: in double quotes, control characters escaped (one line),
    cut if long."""
    shown = text if len(text) <= 40 else f"{text[:20]}…{text[-8:]}"
    return json.dumps(shown, ensure_ascii=False) + (f" ({len(text)} characters)" if len(text) > 40 else "")


def _why(text: str, *, signed: bool) -> str | None:
    """Why ``text`` is not an amount by the grammar, or None."""
    if not text:
        return "it is empty"
    if text != text.strip():
        return "it has whitespace around it"
    for ch in text:
        if not ch.isascii():
            name = unicodedata.name(ch, "")
            what = f"U+{ord(ch):04X} {name}".rstrip()
            return f"only ASCII digits 0-9 are accepted, not {what}"
    if text[0] in "+-" and not signed:
        return "it takes no sign"
    body = text[1:] if text[0] in "+-" else text
    lower = body.lower()
    if lower in ("nan", "snan", "inf", "infinity"):
        return "NaN and infinity are not amounts"
    if "e" in lower and lower.replace("e", "").replace("+", "").replace("-", "").replace(".", "").isdigit():
        return "an exponent is not accepted"
    if "_" in body or "," in body or " " in body:
        return "digit separators are not accepted"
    if body.startswith("."):
        return "a digit is needed before the point (0.5, not .5)"
    if body.endswith("."):
        return "digits are needed after the point, or no point (10 or 10.00, not 10.)"
    match = _AMOUNT.fullmatch(text)
    if match is None:
        if re.fullmatch(r"[+-]?[0-9]+\.[0-9]{3,}", text):
            return "more than two decimals (the fen is the smallest unit)"
        return f"it is not an amount: {_HINT}"
    return None


def parse_amount(text: str, *, signed: bool, limit: Decimal, what: str, zero: bool = False,
                 limit_key: str = "") -> Decimal:
    """``text`` as yuan with two places, or :class:`AmountError` naming ``what``.

    ``signed``: a leading ``-`` or ``+`` is allowed (adjustments, thresholds).  ``limit``: the
    largest absolute value accepted (``limit_key`` names the config key that sets it, for the
    message).  ``zero``: whether zero is an amount here (a threshold may be 0; a payment of
    nothing is refused)."""
    if not isinstance(text, str):
        raise AmountError(f"{what} must be text such as \"88.50\", not {type(text).__name__} {text!r:.40}")
    if len(text) > MAX_TEXT:
        raise AmountError(f"{what} {quote(text)} refused: longer than {MAX_TEXT} characters")
    why = _why(text, signed=signed)
    if why is not None:
        raise AmountError(f"{what} {quote(text)} refused: {why}")
    value = Decimal(text).quantize(FEN)  # at most 24 ASCII digits: exact, no context traps
    if value == 0 and not zero:
        raise AmountError(f"{what} {quote(text)} refused: zero is not an amount here")
    if abs(value) > limit:
        where = f" (set by [prepaid] {limit_key})" if limit_key else ""
        shown = f"{limit:f}" if limit != limit.to_integral_value() else f"{limit.to_integral_value():f}"
        raise AmountError(f"{what} {quote(text)} refused: more than the limit of {shown} yuan{where}")
    return abs(value) if value == 0 else value  # -0.00 -> 0.00


def amount_text(value: Any, *, what: str, numbers: bool) -> str:
    """The text of an amount as received.  ``numbers``: JSON numbers are accepted as the text
    they were written as (billing imports parse them exactly: ``int`` or a ``Decimal`` that
    keeps its literal, see :class:`JsonNumber`); otherwise only a JSON string is an amount (the
    HTTP API: money travels as strings).  Booleans and binary floats are never amounts."""
    if isinstance(value, str):
        return value
    if numbers and not isinstance(value, bool):
        literal = getattr(value, "literal", None)
        if isinstance(literal, str):
            return literal
        if isinstance(value, int):
            return str(value)
        if isinstance(value, Decimal):
            return str(value)
    kind = {bool: "true/false", float: "floating-point number", int: "JSON number", Decimal: "JSON number",
            JsonNumber: "JSON number", type(None): "null", list: "list", dict: "object"}.get(type(value),
                                                                                           type(value).__name__)
    shown = "true" if value is True else "false" if value is False else f"{value!s:.40}"
    wanted = 'a number or string such as 88.50 or "88.50"' if numbers else 'a JSON string such as "88.50"'
    raise AmountError(f"{what} must be {wanted}, not a {kind} ({shown})")


class JsonNumber(Decimal):
    """A JSON number kept exact *and* with the text it was written as, for
    ``json.loads(parse_float=JsonNumber)``: ``1.5e1`` is refused as an amount (an exponent)
    although its value, 15, would pass."""

    literal: str

    def __new__(cls, text: str) -> Self:
        self = super().__new__(cls, text)
        self.literal = text
        return self


def parse_payment(text: str, limits: AmountLimits = AmountLimits(), *, what: str = "payment amount") -> Decimal:
    """A payment: no sign, more than zero, at most ``limits.max_payment``."""
    return parse_amount(text, signed=False, limit=limits.max_payment, what=what, limit_key="max_payment")


def parse_adjustment(text: str, limits: AmountLimits = AmountLimits(), *,
                     what: str = "adjustment amount") -> Decimal:
    """An adjustment: signed (``-12.30`` debits), not zero, at most ``limits.max_adjustment`` either way."""
    return parse_amount(text, signed=True, limit=limits.max_adjustment, what=what, limit_key="max_adjustment")
