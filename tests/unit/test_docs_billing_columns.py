"""docs/analytics.md lists every billing column meterd accepts, in English and in the billing
system's Chinese spellings, so that the docs cannot drift from ``records.ALIASES`` (issue 17: the
column names were documented only in error messages)."""

from __future__ import annotations

import re
from pathlib import Path

from meterd.billing_link.records import ACCOUNT_FIELDS, ALIASES, PAYMENT_FIELDS

DOC = Path(__file__).resolve().parents[2] / "docs" / "analytics.md"
OPTIONAL = ("channel", "customer", "area", "protected", "opening_balance", "activate")


def _table_rows() -> dict[str, tuple[set[str], str]]:
    """field -> (its aliases as the doc lists them, 'yes'/'no') from the column tables."""
    rows: dict[str, tuple[set[str], str]] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"`[a-z_]+`", cells[0]):
            name = cells[0].strip("`")
            aliases = set(re.findall(r"`([^`]+)`", cells[1]))
            seen = rows.get(name, (set(), cells[2]))
            rows[name] = (seen[0] | aliases, cells[2])
    return rows


def test_every_field_is_documented_with_whether_it_is_required():
    rows = _table_rows()
    for field in PAYMENT_FIELDS + ACCOUNT_FIELDS:
        assert rows[field][1] == "yes", field
    for field in OPTIONAL:
        assert rows[field][1] == "no", field


def test_every_alias_is_documented_against_its_field():
    rows = _table_rows()
    for alias, field in ALIASES.items():
        assert alias in rows[field][0], f"{alias} -> {field} is not in docs/analytics.md"
    for field, (aliases, _) in rows.items():
        assert all(ALIASES.get(a) == field for a in aliases), (field, aliases)
