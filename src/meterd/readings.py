"""The reading: the one record every collection path produces and every store keeps.

``value`` is a ``Decimal`` for numbers (energy is money), a ``datetime`` for times, an ``int`` for
status words and a ``str`` for text.  ``timestamp`` is when the value is valid: the master's
collection time for instantaneous values, the meter's own record time for frozen and curve data.
Timestamps are timezone-aware UTC.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

Value = Decimal | datetime | int | str | bool

_T = TypeVar("_T")


def quick_init(cls: type[_T]) -> type[_T]:
    """Give a frozen, slotted dataclass an ``__init__`` that sets each slot through its descriptor.

    The one dataclasses writes for a frozen class calls ``object.__setattr__(self, name, value)``
    per field, which looks the slot up by name each time; a collector makes a reading and an
    attempt per read, and this one takes half the instructions.  It is written from
    :func:`dataclasses.fields` (same parameters, order and defaults; the class stays frozen, its
    ``__eq__``, ``__hash__``, ``__repr__`` and pickling are the dataclass's own), and refuses a
    class it could not write exactly (a ``__post_init__``, a default factory, keyword-only or
    ``init=False`` fields).  ``tests/unit/test_collector_shortcuts.py`` holds it to the dataclass's.
    """
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if hasattr(cls, "__post_init__") or not hasattr(cls, "__slots__"):
        raise TypeError(f"quick_init: {cls.__name__} needs slots and no __post_init__")
    namespace: dict[str, Any] = {}
    params, body = [], []
    for i, f in enumerate(fields):
        if not f.init or f.kw_only or f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"quick_init: field {cls.__name__}.{f.name} is not a plain positional field")
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            namespace[f"_default{i}"] = f.default
            params.append(f"{f.name}=_default{i}")
        namespace[f"_set{i}"] = cls.__dict__[f.name].__set__
        body.append(f"    _set{i}(self, {f.name})\n")
    exec(f"def __init__(self, {', '.join(params)}):\n{''.join(body)}", namespace)  # noqa: S102 -- as dataclasses does
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__annotations__ = {**{f.name: f.type for f in fields}, "return": None}
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[misc, method-assign]
    return cls


class Quality(enum.StrEnum):
    GOOD = "good"  # read from the meter and decoded
    SUSPECT = "suspect"  # read, but the meter flagged a problem (e.g. clock battery, status bits)
    ESTIMATED = "estimated"  # not read; filled in by the master (never mixed silently with good)
    IMPLAUSIBLE = "implausible"  # read, but impossible (NaN, beyond the register, more than the meter can carry)


@quick_init
@dataclass(frozen=True, slots=True)
class Reading:
    meter: str
    quantity: str
    timestamp: datetime
    value: Value
    unit: str = ""
    quality: Quality = Quality.GOOD


def address_key(text: str) -> str:
    """A meter address as the archive, the ledger and the config key it: all digits -> the
    12-digit form (``1`` is ``000000000001``); anything else stripped and kept as written."""
    text = text.strip()
    return text.zfill(12) if text.isdigit() else text
