"""``GET /api/v1/reports/{kind}.xlsx``: the reports of :mod:`meterd.reports` as a download.

``kind`` is ``lineloss``, ``energy``, ``quality`` or ``balances``; ``period`` (default yesterday,
site time), ``base`` (``mom`` 环比 by default, ``yoy`` 同比, or a period) and ``by`` as for
``meterd report``.  The answer is the workbook with ``Content-Disposition: attachment`` and a file
name that says what it is (``meterd-lineloss-2026-11-base-2026-10.xlsx``).  Errors are JSON like
every other endpoint: an unknown kind 404; a parameter that is no period, no base or no grouping
of that report 400; a period outside 1970..2099 or longer than ten years 422; without the site
config 503.  The workbook is built in the thread pool, into memory (write-only mode keeps the
rows themselves streamed; the finished file is what is held).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from meterd.clock import local_date
from meterd.errors import ConfigError

if TYPE_CHECKING:
    from meterd.api.app import Api, Caller

XLSX: Final = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
REPORT_QUERY: Final = (
    ("period", {"type": "string"}, ("reporting period: YYYY-MM-DD, YYYY-MM, YYYY-Qn, YYYY or START..END "
                                    "(default yesterday, site time)")),
    ("base", {"type": "string"}, "base period: mom (环比, default), yoy (同比) or a period"),
    ("by", {"type": "string", "enum": ["area", "line", "group", "industry", "channel", "unit"]},
     ("grouping: lineloss area|line|group (default all); energy area|industry|group; quality area|channel; "
      "balances area")),
    ("role", {"type": "string", "enum": ["sales", "supply", "auxiliary", "all"]}, "energy: which points (sales)"),
)


async def report_xlsx(api: Api, request: Request, caller: Caller | None) -> Response:
    from meterd.api.app import ApiError
    from meterd.reports import KINDS, render
    from meterd.reports.periods import RangeError

    kind = request.path_params["kind"]
    if kind not in KINDS:
        raise ApiError(404, f"unknown report {kind!r}: one of {', '.join(KINDS)}")
    config = api._need_config("a report")
    q = request.query_params
    role = q.get("role", "sales")
    if role not in ("sales", "supply", "auxiliary", "all"):
        raise ApiError(400, f"query parameter role={role!r} must be one of sales, supply, auxiliary, all")
    if kind in ("lineloss", "energy") and (config.analytics is None or config.analytics.topology is None):
        raise ApiError(404, "no topology configured ([[topology.units]] / [[topology.points]])")
    now = api.clock()

    def work() -> tuple[bytes, str]:
        out = io.BytesIO()
        try:
            render(kind, config, out, period=q.get("period"), base=q.get("base"), by=q.get("by"), now=now,
                   zone=api.zone, today=local_date(now, api.zone), role=role, period_name="query parameter period",
                   base_name="query parameter base", by_name="query parameter by")
        except ConfigError as exc:  # a period too long or out of range is 422, any other 400
            raise ApiError(422 if isinstance(exc, RangeError) else 400, "; ".join(exc.problems)) from None
        return out.getvalue(), _file_name(kind, q.get("period"), q.get("base"), q.get("by"))

    body, name = await run_in_threadpool(work)
    return Response(body, media_type=XLSX, headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _file_name(kind: str, period: str | None, base: str | None, by: str | None) -> str:
    parts: list[Any] = ["meterd", kind, period or "yesterday", "base", base or "mom"]
    if by:
        parts += ["by", by]
    text = "-".join(str(p) for p in parts)
    # a header value: ASCII letters, digits and a few marks only (a period is digits, '-', 'Q', '..')
    return "".join(c if c.isascii() and (c.isalnum() or c in "-.") else "_" for c in text) + ".xlsx"
