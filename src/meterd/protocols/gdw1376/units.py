"""Data-unit identifiers: DA (which points, pn) and DT (which items, Fn).  Q/GDW 1376.1-2013 clause 5.

::

    DA = DA1 DA2   DA2: point group 1..255, DA1: one bit per point of the group
                   pn = (DA2 - 1) * 8 + bit + 1   (bit 0..7; pn 1..2040)
                   DA1 = DA2 = 0: p0 (the terminal itself);  DA1 = FF, DA2 = 0: every point but p0
    DT = DT1 DT2   DT2: item group 0..30, DT1: one bit per item of the group
                   Fn = DT2 * 8 + bit + 1             (Fn 1..248)

One identifier may name several points of one group and several items of one group; its data then
follows point by point, and within each point item by item, both in ascending order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from meterd.errors import ProtocolError

P0: Final = 0
ALL_POINTS: Final = 0xFFFF  # DA1 = FF, DA2 = 00: every measuring point (not a real pn)
MAX_PN: Final = 2040
MAX_FN: Final = 248


def encode_da(pns: Iterable[int]) -> bytes:
    """Points -> DA1 DA2.  They must all be in one group of eight (or be p0, or ALL_POINTS, alone)."""
    points = sorted(set(pns))
    if not points:
        raise ProtocolError("a data unit names no point (pn)")
    if points == [P0]:
        return b"\x00\x00"
    if points == [ALL_POINTS]:
        return b"\xff\x00"
    if points[0] < 1 or points[-1] > MAX_PN:
        raise ProtocolError(f"points {points} must be p0 alone or within p1..p{MAX_PN}")
    group = (points[0] - 1) // 8
    if (points[-1] - 1) // 8 != group:
        raise ProtocolError(f"points {points} are not in one group of eight (pn {group * 8 + 1}..{group * 8 + 8})")
    bits = 0
    for pn in points:
        bits |= 1 << ((pn - 1) % 8)
    return bytes((bits, group + 1))


def decode_da(da1: int, da2: int) -> tuple[int, ...]:
    if da2 == 0:
        if da1 == 0:
            return (P0,)
        if da1 == 0xFF:
            return (ALL_POINTS,)
        raise ProtocolError(f"DA {da1:02X} {da2:02X}: point group 0 with bits set is neither p0 nor all points")
    if da1 == 0:
        raise ProtocolError(f"DA {da1:02X} {da2:02X} names no point")
    base = (da2 - 1) * 8
    return tuple(base + bit + 1 for bit in range(8) if da1 & (1 << bit))


def encode_dt(fns: Iterable[int]) -> bytes:
    """Items -> DT1 DT2; all in one group of eight."""
    items = sorted(set(fns))
    if not items:
        raise ProtocolError("a data unit names no item (Fn)")
    if items[0] < 1 or items[-1] > MAX_FN:
        raise ProtocolError(f"items F{items} must be within F1..F{MAX_FN}")
    group = (items[0] - 1) // 8
    if (items[-1] - 1) // 8 != group:
        raise ProtocolError(f"items {', '.join(f'F{f}' for f in items)} are not in one group of eight")
    bits = 0
    for fn in items:
        bits |= 1 << ((fn - 1) % 8)
    return bytes((bits, group))


def decode_dt(dt1: int, dt2: int) -> tuple[int, ...]:
    if dt2 > 30:
        raise ProtocolError(f"DT {dt1:02X} {dt2:02X}: item group {dt2} is above 30")
    if dt1 == 0:
        raise ProtocolError(f"DT {dt1:02X} {dt2:02X} names no item")
    return tuple(dt2 * 8 + bit + 1 for bit in range(8) if dt1 & (1 << bit))


def point_name(pn: int) -> str:
    return "all points" if pn == ALL_POINTS else f"p{pn}"
