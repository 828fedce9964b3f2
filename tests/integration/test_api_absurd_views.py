"""A view asked for an absurd period, over real HTTP (the site of ``test_api_views.py``).

Energy split by month or quarter is one pass over every metering point per sub-period: 1970..2099
by month (1,560 passes) held a worker thread for 15 s at 10,000 meters (and ten times that at
100,000).  It is now 400 over ten years, the span a report covers; a period without ``split``
is one pass, and line loss reads the registers of the period's two ends only, so both keep
answering for any period inside 1970..2099.
"""

from __future__ import annotations

import pytest
from test_api import Site
from test_api_views import site  # noqa: F401 -- the fixture


@pytest.mark.parametrize("split", ["month", "quarter"])
def test_energy_split_over_more_than_ten_years_is_400_naming_the_limit(site: Site, split: str) -> None:  # noqa: F811
    status, _, doc = site.call("GET", f"/api/v1/energy?period=1970-01-01..2099-12-31&split={split}", role="viewer")
    assert status == 400
    assert doc["error"] == (f"query parameter split={split}: period '1970-01-01..2099-12-31' is 47482 days, "
                            "at most ten years (3653 days)")


def test_ten_years_split_by_month_and_any_period_unsplit_still_answer(site: Site) -> None:  # noqa: F811
    status, _, doc = site.call("GET", "/api/v1/energy?period=2016-12-01..2026-11-30&split=month", role="viewer")
    assert status == 200 and len({row["start"] for row in doc}) <= 120
    for path in ("/api/v1/energy?period=1970-01-01..2099-12-31", "/api/v1/lineloss?period=1970-01-01..2099-12-31"):
        status, _, doc = site.call("GET", path, role="viewer")
        assert status == 200, doc
