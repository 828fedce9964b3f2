"""A small district with known readings, ledger entries and collection attempts, for the report
tests (tests/integration/test_reports.py, tests/e2e/test_cli_report.py; tests/e2e/test_cli_analytics.py
runs its reports over the same five meters with units of its own, :func:`district_site`).  Every
figure the reports should show is worked out by hand in the comments and in :data:`EXPECTED`, not by
the analytics.

Topology: TA1 (area): supply m1; sales m2 (residential, group north) and m3 (commercial,
multiplier 2, groups north and south).  TA2 (area): supply m4; sales m5 (residential, group south).
Daily registers (the value at 00:00 CST of the day) on the first of the months around November
2026 and November 2025.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from meterd.analytics.energy import IMPORT_DAILY, DailyRegisterStore
from meterd.clock import CST
from meterd.control.model import EntryKind, LedgerEntry
from meterd.control.state import AccountSpec, ControlStore
from meterd.readings import Quality, Reading
from meterd.storage.quality import QualityStore
from meterd.storage.sqlite import Attempt, MeterRecord, SqliteStore

# The district's five meters on one (unreachable) bus, and where they stand: TA1 supplied by m1,
# selling to m2 (residential) and m3 (commercial, multiplier 2); TA2 supplied by m4, selling to m5
# (residential).
POINTS = (
    {"meter": "1", "unit": "TA1", "role": "supply"},
    {"meter": "2", "unit": "TA1", "role": "sales", "industry": "residential"},
    {"meter": "3", "unit": "TA1", "role": "sales", "industry": "commercial", "multiplier": "2"},
    {"meter": "4", "unit": "TA2", "role": "supply"},
    {"meter": "5", "unit": "TA2", "role": "sales", "industry": "residential"},
)

BUS_AND_POLL = """
[store]
data_dir = "data"
[channels.bus1]
tcp = { host = "127.0.0.1", port = 9 }
""" + "".join(f'[[meters]]\naddress = "{i:012d}"\nchannel = "bus1"\n' for i in range(1, 6)) + """
[[polls]]
name = "p"
interval = 60
quantities = ["energy.active.import.total"]

"""


def tables(name: str, rows: list[dict[str, Any]]) -> str:
    """TOML ``[[name]]`` tables of string (or list of string) values."""
    return "".join(f"[[{name}]]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in row.items())
                   for row in rows)


def district_site(units: dict[str, dict[str, str]], groups: dict[str, list[str]] | None = None) -> str:
    """The site config of the district (data in ``data`` next to it): ``units`` each unit's name and
    keys of its own, ``groups`` the groups of a point by its meter."""
    groups = groups or {}
    points = [{**point, "groups": groups[point["meter"]]} if point["meter"] in groups else point for point in POINTS]
    return (BUS_AND_POLL + tables("topology.units", [{"name": name, **keys} for name, keys in units.items()]) + "\n"
            + tables("topology.points", points))


SITE = district_site({"TA1": {"kind": "area"}, "TA2": {"kind": "area"}},
                     groups={"2": ["north"], "3": ["north", "south"], "5": ["south"]})

# meter -> {first day of a month: register}; energy of a month = next first - this first
REGISTERS = {
    1: {date(2025, 11, 1): "1000", date(2025, 12, 1): "1800",  # Nov 2025: 800
        date(2026, 10, 1): "5000", date(2026, 11, 1): "6000", date(2026, 12, 1): "7200"},  # Oct 1000, Nov 1200
    2: {date(2025, 11, 1): "100", date(2025, 12, 1): "500",  # 400
        date(2026, 10, 1): "2000", date(2026, 11, 1): "2450", date(2026, 12, 1): "3000"},  # 450, 550
    3: {date(2025, 11, 1): "50", date(2025, 12, 1): "200",  # 150 x 2 = 300
        date(2026, 10, 1): "600", date(2026, 11, 1): "850", date(2026, 12, 1): "1150"},  # 500, 600
    4: {date(2026, 10, 1): "300", date(2026, 11, 1): "400", date(2026, 12, 1): "520"},  # 100, 120; none in 2025
    5: {date(2026, 10, 1): "10", date(2026, 11, 1): "100", date(2026, 12, 1): "210"},  # 90, 110
}

# November 2026 against October (mom) and November 2025 (yoy), by hand:
EXPECTED = {
    # unit: (supply, sales, loss, rate %) for Nov 2026, Oct 2026, Nov 2025
    "lineloss": {
        "TA1": ((1200, 1150, 50, Decimal("4.17")), (1000, 950, 50, Decimal("5.00")),
                (800, 700, 100, Decimal("12.50"))),
        "TA2": ((120, 110, 10, Decimal("8.33")), (100, 90, 10, Decimal("10.00")), (0, 0, 0, None)),
    },
    # industry: (Nov 2026, Oct 2026, Nov 2025) kWh of the sales points
    "industry": {"residential": (660, 540, 400), "commercial": (600, 500, 300)},
    "group": {"north": (1150, 950, 700), "south": (710, 590, 300)},
}

NOW = datetime(2026, 12, 5, 9, 30, tzinfo=CST)  # the reports' "now": generated at 2026-12-05 09:30:00+08:00


def cst(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=CST)


def daily_register(meter: int, day: date, kwh: str, quality: Quality = Quality.GOOD) -> Reading:
    """Meter ``meter``'s daily register (the value at 00:00 CST of ``day``)."""
    return Reading(f"{meter:012d}", IMPORT_DAILY, cst(day.year, day.month, day.day).astimezone(UTC), Decimal(kwh),
                   "kWh", quality)


def seed(data: Path) -> None:
    data.mkdir(exist_ok=True)
    meters = [f"{i:012d}" for i in range(1, 6)]
    with DailyRegisterStore(data) as store:
        store.record([daily_register(m, d, v) for m, days in REGISTERS.items() for d, v in days.items()])
    # collection: 2026-11-18..19 (the base of 20..21): every meter ok, but m5 has no attempt on the 19th;
    # 2026-11-20: all ok; 2026-11-21: m3 and m5 time out
    attempts = []
    for day, failing, absent in ((18, (), ()), (19, (), (5,)), (20, (), ()), (21, (3, 5), ())):
        for i, m in enumerate(meters, start=1):
            if i in absent:
                continue
            outcome = "timeout" if i in failing else "ok"
            attempts.append(Attempt(m, "bus1", "00010000", cst(2026, 11, day, 9).astimezone(UTC), outcome,
                                    0.1 if outcome == "ok" else None))
    with SqliteStore(data) as archive:
        archive.upsert_meters([MeterRecord(m, "bus1", "dlt645-2007", Decimal(1), Decimal(1)) for m in meters])
        archive.record_attempts(attempts)
    with QualityStore(data) as quality:
        quality.set_areas({meters[0]: "TA1", meters[1]: "TA1", meters[2]: "TA1", meters[3]: "TA2", meters[4]: "TA2"})
    seed_ledger(data)


def seed_ledger(where: Any) -> None:
    """The accounts and their ledger, in a data directory or a PostgreSQL database."""
    meters = [f"{i:012d}" for i in range(1, 6)]
    with ControlStore(where) as control:
        # A1 (TA1): opened 2026-09-01 with 100.00; Oct: +50.00, -30.25; Nov: +20.00, -45.50; Dec 1 00:00: -10.00
        control.upsert_accounts([AccountSpec("A1", "res", {meters[1]: Decimal(1)}, customer="张三", area="TA1",
                                             opening_balance=Decimal("100.00"))], actor="test", now=cst(2026, 9, 1))
        control.pay("A1", Decimal("50.00"), "r-1", actor="test", now=cst(2026, 10, 15, 10))
        control.pay("A1", Decimal("20.00"), "r-2", actor="test", now=cst(2026, 11, 10, 10))
        # A2 (TA2): opened 2026-11-15 with 0.00; +5.00 adjustment on the 20th, -7.01 on the 25th: -2.01, in arrears
        control.upsert_accounts([AccountSpec("A2", "res", {meters[4]: Decimal(1)}, customer="李四", area="TA2",
                                             opening_balance=Decimal(0))], actor="test", now=cst(2026, 11, 15))
        control.adjust("A2", Decimal("5.00"), "adj-1", actor="test", now=cst(2026, 11, 20, 8), reason="meter test")
        # A3 (TA2): opened after November: blank closing balances
        control.upsert_accounts([AccountSpec("A3", "res", {}, area="TA2", opening_balance=Decimal("8.00"))],
                                actor="test", now=cst(2026, 12, 3))
        control.apply([
            LedgerEntry("c-1", "A1", EntryKind.CHARGE, Decimal("-30.25"), cst(2026, 10, 31, 23, 59)),
            LedgerEntry("c-2", "A1", EntryKind.CHARGE, Decimal("-45.50"), cst(2026, 11, 30, 23)),
            LedgerEntry("c-3", "A1", EntryKind.CHARGE, Decimal("-10.00"), cst(2026, 12, 1)),
            LedgerEntry("c-4", "A2", EntryKind.CHARGE, Decimal("-7.01"), cst(2026, 11, 25)),
        ], actor="test", now=cst(2026, 12, 1, 1))


def write_site(root: Path) -> Path:
    (root / "site.toml").write_text(SITE)
    seed(root / "data")
    return root / "site.toml"
