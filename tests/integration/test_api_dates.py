"""Dates and times in query parameters: out of range is a 422 with a message, never a 500 (issue #14).

Every date/time query parameter of the API goes through one parser (``meterd.api.app``'s
``_query_day`` / ``_query_time`` / ``_period``); these requests used to fail inside the handlers
(OverflowError from date arithmetic, ValueError from ``date(year, 13, 1)``) and answer 500.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from test_api import Site
from test_api_views import site  # noqa: F401  (the seeded server with a site config)

M = "000000000004"
OUT_OF_RANGE = [
    "/api/v1/quality?day=9999-12-31",
    "/api/v1/quality?day=0001-01-01",
    "/api/v1/curve?unit=TA-1&day=9999-12-31",
    "/api/v1/curve?unit=TA-1&day=0001-01-01",
    "/api/v1/curve?meter=000000000004&day=9999-12-31",
    "/api/v1/lineloss?period=9999-12-31",
    "/api/v1/lineloss?period=0001-01-01",
    "/api/v1/lineloss?period=9999-12",
    "/api/v1/lineloss?period=9999-Q4",
    "/api/v1/lineloss?period=0001-01-01..9999-12-31",
    "/api/v1/energy?period=9999-12-31&by=group",
    "/api/v1/energy?period=0001-01-01..0001-12-31&by=group&split=month",
    "/api/v1/energy?period=9999-Q4&by=group&split=quarter",
    f"/api/v1/meters/{M}/attempts?since=" + quote("0001-01-01T00:00:00+08:00"),
    f"/api/v1/meters/{M}/attempts?since=" + quote("9999-12-31T23:59:59-08:00"),
    f"/api/v1/meters/{M}/attempts?since=" + quote("1000-01-01T00:00:00+00:00"),
    "/api/v1/meters/000000000001/readings?since=" + quote("0001-01-01T00:00:00+08:00"),
    "/api/v1/meters/000000000001/readings?until=" + quote("9999-12-31T23:59:59-08:00"),
]
MALFORMED = [
    "/api/v1/lineloss?period=2026-13",  # month 13: a ValueError inside the handler before
    "/api/v1/lineloss?period=2026-00",
    "/api/v1/energy?period=2026-Q5&by=group",
    "/api/v1/energy?period=99999-01-01&by=group",
    "/api/v1/quality?day=2026-13-01",
    "/api/v1/quality?day=2026-02-30",
    "/api/v1/curve?unit=TA-1&day=+2026-01-01",
    f"/api/v1/meters/{M}/attempts?since=" + quote("2026-11-23T25:00:00+08:00"),
    f"/api/v1/meters/{M}/attempts?since=1e300",
    f"/api/v1/meters/{M}/attempts?since=NaN",
]


def _role(path: str) -> str:
    return "technician" if "/attempts" in path else "viewer"


@pytest.mark.parametrize("path", OUT_OF_RANGE)
def test_dates_out_of_range_are_422_with_a_message(site: Site, path: str) -> None:  # noqa: F811
    status, _, doc = site.call("GET", path, role=_role(path), check=False)
    assert status == 422, (path, status, doc)
    assert "out of range" in doc["error"] and "from 1970-01-01" in doc["error"], doc
    site.validate("GET", path, status, doc)


@pytest.mark.parametrize("path", MALFORMED)
def test_malformed_dates_are_400_with_a_message(site: Site, path: str) -> None:  # noqa: F811
    status, _, doc = site.call("GET", path, role=_role(path), check=False)
    assert status == 400, (path, status, doc)
    assert "query parameter" in doc["error"], doc
    site.validate("GET", path, status, doc)


@pytest.mark.parametrize("path", [
    "/api/v1/quality?day=1970-01-01",
    "/api/v1/lineloss?period=2099-12",
    "/api/v1/energy?period=2026-Q4&by=group&split=month",
    f"/api/v1/meters/{M}/attempts?since=" + quote("1970-01-01T08:00:00+08:00"),
])
def test_dates_inside_the_range_still_work(site: Site, path: str) -> None:  # noqa: F811
    status, _, doc = site.call("GET", path, role=_role(path), check=False)
    assert status == 200, (path, status, doc)
