"""The .xlsx reports read back with openpyxl and checked against figures worked out by hand from
the readings, ledger entries and attempts of tests/report_site.py; the API serves them to a viewer."""

from __future__ import annotations

import io
import tomllib
import urllib.error
import urllib.request
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import openpyxl
import pytest
from test_api import serve

from meterd.api import TokenStore, create_app
from meterd.clock import CST
from meterd.config.loader import parse_config
from meterd.control.state import ControlStore
from meterd.reports import render, report_periods
from meterd.reports.kinds import balances_report
from meterd.reports.workbook import write_workbook
from report_site import EXPECTED, NOW, SITE, seed

TODAY = NOW.date()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("reports")
    seed(root / "data")
    return parse_config(tomllib.loads(SITE.replace('data_dir = "data"', f'data_dir = "{root / "data"}"')),
                        source="district-7.toml")


def workbook(config: Any, kind: str, period: str, base: str | None = None, by: str | None = None,
             zone: Any = CST) -> openpyxl.Workbook:
    out = io.BytesIO()
    render(kind, config, out, period=period, base=base, by=by, now=NOW, zone=zone, today=TODAY)
    return openpyxl.load_workbook(io.BytesIO(out.getvalue()))


def table(ws: Any) -> list[dict[str, Any]]:
    """The rows under the header row (7), keyed by each header's English part."""
    rows = list(ws.iter_rows(min_row=7, values_only=True))
    keys = [h.split(" ", 1)[1] for h in rows[0]]
    return [dict(zip(keys, r, strict=True)) for r in rows[1:]]


def near(a: Any, b: Any) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and abs(Decimal(str(a)) - Decimal(b)) < Decimal(
        "0.00001"))


def test_line_loss_against_the_readings(site: Any) -> None:
    wb = workbook(site, "lineloss", "2026-11")
    assert wb.sheetnames == ["线损 Line loss"]
    ws = wb["线损 Line loss"]
    assert ws["A1"].value == "线损报表 Line loss report" and ws["A1"].font.b
    assert ws["B2"].value == "district-7.toml (Asia/Shanghai)"
    assert ws["B3"].value == "2026-11-01..2026-11-30 (30 天 days)"
    assert ws["B4"].value == "2026-10-01..2026-10-31 (31 天 days; 环比 period-on-period)"
    assert ws["B5"].value == "2026-12-05 09:30:00+08:00"
    assert ws.freeze_panes == "A8"
    assert ws["C7"].value == "供电量 Supply (kWh)" and ws["O7"].value == "线损率 Loss rate"
    assert ws.column_dimensions["A"].width == 16
    rows = {r["Area / line"]: r for r in table(ws)}
    for unit, (now, before, _) in EXPECTED["lineloss"].items():
        r = rows[unit]
        assert (r["Supply (kWh)"], r["Sales (kWh)"], r["Loss (kWh)"]) == now[:3]
        assert (r["Base supply (kWh)"], r["Base sales (kWh)"], r["Base loss (kWh)"]) == before[:3]
        assert r["Supply difference (kWh)"] == now[0] - before[0]
        assert near(r["Supply change"], (Decimal(now[0] - before[0]) / before[0]).quantize(Decimal("0.0001")))
        assert near(r["Loss rate"], now[3] / 100) and near(r["Base loss rate"], before[3] / 100)
        assert near(r["Loss rate difference (pp)"], now[3] - before[3])
        assert r["Completeness"] == 1 and r["Meters without data"] is None
    assert rows["TA1"]["Loss change"] == 0 and rows["TA1"]["Flags"] is None
    # formats: a rate is a percentage, energy has two decimals, a difference of rates is in points
    first = 8
    assert ws[f"O{first}"].number_format == "0.00%" and ws[f"C{first}"].number_format == "#,##0.00"
    assert ws[f"Q{first}"].number_format == "+0.00;-0.00;0.00"
    assert len(ws._charts) == 2
    rate_chart = ws._charts[0]
    assert rate_chart.x_axis.delete is False and rate_chart.y_axis.delete is False  # axes drawn
    assert rate_chart.y_axis.number_format.formatCode == "0.0%" and len(rate_chart.series) == 2


def test_line_loss_year_on_year_with_a_missing_base(site: Any) -> None:
    rows = {r["Area / line"]: r for r in table(workbook(site, "lineloss", "2026-11", "yoy").active)}
    ta1, ta2 = rows["TA1"], rows["TA2"]
    assert (ta1["Base supply (kWh)"], ta1["Base loss (kWh)"]) == (800, 100)
    assert near(ta1["Base loss rate"], Decimal("0.125")) and near(ta1["Loss rate difference (pp)"], Decimal("-8.33"))
    assert near(ta1["Loss change"], Decimal("-0.5"))
    # TA2 had no meters a year ago: no rate, no difference, shown as incomplete -- not as zero loss
    assert ta2["Base loss rate"] is None and ta2["Loss rate difference (pp)"] is None
    assert ta2["Base completeness"] == 0 and ta2["Supply change"] is None
    ws = workbook(site, "lineloss", "2026-11", "yoy").active
    assert ws["B4"].value.endswith("同比 year-on-year)")


@pytest.mark.parametrize("by, key", [("industry", "Industry"), ("group", "Group")])
def test_energy_by_industry_and_group(site: Any, by: str, key: str) -> None:
    ws = workbook(site, "energy", "2026-11", by=by).active
    rows = {r[key]: r for r in table(ws)}
    for name, (now, before, _) in EXPECTED[by].items():
        r = rows[name]
        assert (r["Energy (kWh)"], r["Base energy (kWh)"], r["Difference (kWh)"]) == (now, before, now - before)
        assert near(r["Change"], (Decimal(now - before) / before).quantize(Decimal("0.0001")))
    if by == "industry":  # a meter has one industry: a total row that adds up
        assert rows["合计 Total"]["Energy (kWh)"] == 1260 and rows["合计 Total"]["Base energy (kWh)"] == 1040
    else:
        assert "合计 Total" not in rows  # groups overlap (m3 is in both): no total
    assert len(ws._charts) == 1
    yoy = {r[key]: r for r in table(workbook(site, "energy", "2026-11", "yoy", by=by).active)}
    assert {n: r["Base energy (kWh)"] for n, r in yoy.items() if n != "合计 Total"} == \
        {n: v[2] for n, v in EXPECTED[by].items()}


def test_energy_by_area_is_the_sales_of_each_area(site: Any) -> None:
    rows = {r["Area / line"]: r for r in table(workbook(site, "energy", "2026-11", "2026-10", by="area").active)}
    assert (rows["TA1"]["Energy (kWh)"], rows["TA1"]["Base energy (kWh)"]) == (1150, 950)
    assert (rows["TA2"]["Energy (kWh)"], rows["TA2"]["Base energy (kWh)"]) == (110, 90)


def test_collection_quality_against_the_attempts(site: Any) -> None:
    wb = workbook(site, "quality", "2026-11-20..2026-11-21")
    assert wb.sheetnames == ["采集质量 Quality by area", "每日 Daily"]
    rows = {r["Name"]: r for r in table(wb["采集质量 Quality by area"])}
    ta1, ta2, total = rows["TA1"], rows["TA2"], rows["total"]
    assert (ta1["Attempts"], ta1["Successes"]) == (6, 5)
    assert near(ta1["Success rate"], "0.833333") and ta1["Base success rate"] == 1
    assert near(ta1["Success difference (pp)"], "-16.6667")
    assert near(ta2["Success rate"], "0.75") and near(ta2["Data rate (meter-days)"], "0.75")
    assert near(ta2["Base data rate"], "0.75") and ta2["Data difference (pp)"] == 0  # m5 silent on the 19th
    assert (total["Attempts"], total["Successes"]) == (10, 8) and total["Level"] == "合计 total"
    assert near(total["Success rate"], "0.8") and near(total["Base success rate"], "1")
    assert near(total["Data rate (meter-days)"], "0.8") and near(total["Base data rate"], "0.9")
    assert (total["Meter-days without data"], total["Base meter-days without data"]) == (2, 1)
    assert total["Terminal online rate"] is None  # a bus, no terminal: no online rate, not 0 %
    daily = table(wb["每日 Daily"])
    assert [(d["Date"].date().isoformat(), d["Base date"].date().isoformat()) for d in daily] == [
        ("2026-11-20", "2026-11-18"), ("2026-11-21", "2026-11-19")]
    assert [d["Success rate"] for d in daily] == [1, 0.6] and [d["Base data rate"] for d in daily] == [1, 0.8]
    assert len(wb["每日 Daily"]._charts) == 1
    channels = {r["Name"]: r for r in table(workbook(site, "quality", "2026-11-20..2026-11-21", by="channel").active)}
    assert set(channels) == {"bus1", "total"} and channels["bus1"]["Successes"] == 8


def _balances(config: Any, period: str, zone: Any = CST) -> tuple[dict[str, Any], dict[str, Any], Any]:
    wb = workbook(config, "balances", period, zone=zone)
    summary = {r["Area"]: r for r in table(wb["余额汇总 By area"])}
    detail = {r["Account"]: r for r in table(wb["余额明细 Accounts"])}
    return summary, detail, wb


def test_balances_from_the_ledger(site: Any) -> None:
    summary, detail, wb = _balances(site, "2026-11")
    assert wb.sheetnames == ["余额汇总 By area", "余额明细 Accounts"]
    a1, a2, a3 = detail["A1"], detail["A2"], detail["A3"]
    # A1: 100.00 + 50.00 - 30.25 before November; +20.00 - 45.50 in it; the Dec 1 00:00 charge is December's
    assert (a1["Opening balance (元)"], a1["Payments (元)"], a1["Charges (元)"]) == (119.75, 20, -45.5)
    assert (a1["Closing balance (元)"], a1["Base closing balance (元)"], a1["Difference (元)"]) == (94.25, 119.75, -25.5)
    assert a1["Change"] == -0.2129 and a1["Customer"] == "张三" and a1["State"].endswith("normal")
    # A2: opened in November with 0.00, +5.00 adjusted, -7.01 charged: in arrears; no base balance (not open then)
    assert (a2["Opening balance (元)"], a2["Adjustments, other (元)"], a2["Closing balance (元)"]) == (0, 5, -2.01)
    assert a2["Base closing balance (元)"] is None and a2["Difference (元)"] is None and a2["Change"] is None
    assert a3["Closing balance (元)"] is None  # opened in December
    assert (summary["TA1"]["Accounts"], summary["TA2"]["Accounts"], summary["TA2"]["Accounts in arrears"]) == (1, 2, 1)
    total = summary["合计 Total"]
    assert (total["Closing balances (元)"], total["Base closing balances (元)"], total["Difference (元)"]) == \
        (92.24, 119.75, -27.51)
    assert total["Change"] == -0.2297 and total["Payments (元)"] == 20 and total["Charges (元)"] == -52.51
    ws = wb["余额明细 Accounts"]
    assert ws["I8"].number_format == "#,##0.00" and ws["L8"].number_format == "0.00%" and ws.freeze_panes == "A8"
    assert len(wb["余额汇总 By area"]._charts) == 1


def test_balances_of_a_period_reaching_now_are_the_kept_balances(site: Any) -> None:
    _, detail, _ = _balances(site, "2026-12")
    with ControlStore(site.store.state) as control:
        kept = {a.account: a.balance for a in control.accounts()}
    assert {k: Decimal(str(v["Closing balance (元)"])).quantize(Decimal("0.01")) for k, v in detail.items()} == kept
    assert kept["A1"] == Decimal("84.25")


def test_balances_cut_at_the_site_zone_midnight(site: Any) -> None:
    """In Asia/Urumqi (UTC+6) 2026-12-01 00:00 CST is still 30 November: that charge is November's."""
    _, detail, wb = _balances(site, "2026-11", ZoneInfo("Asia/Urumqi"))
    assert detail["A1"]["Closing balance (元)"] == 84.25
    assert wb.active["B5"].value == "2026-12-05 07:30:00+06:00"


def test_balances_stream_page_by_page(site: Any, tmp_path: Path) -> None:
    periods = report_periods("2026-11", None, today=TODAY)
    sizes = {}
    for page in (1, 2, 5000):
        out = tmp_path / f"b{page}.xlsx"
        sizes[page] = write_workbook(balances_report(site, periods, now=NOW, zone=CST, page=page), str(out))
        assert [r["Account"] for r in table(openpyxl.load_workbook(out)["余额明细 Accounts"])] == ["A1", "A2", "A3"]
    assert sizes[1] == sizes[2] == sizes[5000] == {"余额汇总 By area": 3, "余额明细 Accounts": 3}


# --- the API -----------------------------------------------------------------------------------


def _get(base: str, path: str, token: str | None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers), timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_api_serves_the_workbook_to_a_viewer(site: Any) -> None:
    data = Path(site.store.state)
    with TokenStore(data) as tokens:
        viewer = tokens.create("viewer-user", "viewer", NOW)[1]
    with serve(create_app(data, clock=lambda: NOW, config=site)) as base:
        status, headers, body = _get(base, "/api/v1/reports/lineloss.xlsx?period=2026-11&base=yoy", viewer)
        assert status == 200, body
        assert headers["content-type"] == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        assert headers["content-disposition"] == 'attachment; filename="meterd-lineloss-2026-11-base-yoy.xlsx"'
        rows = {r["Area / line"]: r for r in table(openpyxl.load_workbook(io.BytesIO(body)).active)}
        assert rows["TA1"]["Base supply (kWh)"] == 800 and rows["TA1"]["Supply (kWh)"] == 1200
        status, _, body = _get(base, "/api/v1/reports/balances.xlsx?period=2026-11", viewer)
        assert status == 200 and openpyxl.load_workbook(io.BytesIO(body)).sheetnames[1] == "余额明细 Accounts"
        for kind in ("lineloss", "energy", "quality", "balances"):  # as the console asks: by=unit for any report
            status, _, body = _get(base, f"/api/v1/reports/{kind}.xlsx?period=2026-11-20&base=yoy&by=unit", viewer)
            assert status == 200, (kind, body)
        for path, code, words in (
            ("/api/v1/reports/lineloss.xlsx", 401, b"Bearer"),
            ("/api/v1/reports/bills.xlsx", 404, b"unknown report 'bills'"),
            ("/api/v1/reports/energy.xlsx?period=2026-13", 400, b"query parameter period '2026-13'"),
            ("/api/v1/reports/energy.xlsx?by=channel", 400, b"grouped by area, industry, group"),
            ("/api/v1/reports/quality.xlsx?base=soon", 400, b"query parameter base 'soon'"),
            ("/api/v1/reports/energy.xlsx?period=2000-01-01..2026-01-01", 422, b"at most ten years"),
            ("/api/v1/reports/quality.xlsx?period=2025-01-01..2026-06-30", 422, b"at most 366 days"),
        ):
            status, _, body = _get(base, path, None if code == 401 else viewer)
            assert status == code and words in body, (path, body)


def test_by_unit_or_empty_is_each_reports_own_grouping() -> None:
    """The console sends by=unit (the word of /api/v1/energy) or nothing whatever the report."""
    from meterd.errors import ConfigError
    from meterd.reports import check_by

    assert [check_by(k, "unit") for k in ("lineloss", "energy", "quality", "balances")] == [None, "area", "area", "area"]
    assert [check_by(k, "") for k in ("lineloss", "energy", "quality", "balances")] == [None, "area", "area", "area"]
    with pytest.raises(ConfigError, match="the balances report is grouped by area"):
        check_by("balances", "industry")


def test_the_generated_time_is_passed_in(site: Any) -> None:
    out = io.BytesIO()
    later = datetime(2027, 1, 2, 3, 4, 5, tzinfo=CST)
    render("energy", site, out, period="2026-11", base=None, by=None, now=later, zone=CST, today=later.date())
    assert openpyxl.load_workbook(out).active["B5"].value == "2027-01-02 03:04:05+08:00"


def test_balances_on_both_backends(state_where: Any) -> None:
    """The ledger sums are SQL: the same figures from SQLite and PostgreSQL."""
    from types import SimpleNamespace

    from report_site import seed_ledger

    seed_ledger(state_where)
    config = SimpleNamespace(source="pg.toml", store=SimpleNamespace(state=state_where))
    out = io.BytesIO()
    write_workbook(balances_report(config, report_periods("2026-11", None, today=TODAY), now=NOW, zone=CST, page=2),
                   out)
    detail = {r["Account"]: r for r in table(openpyxl.load_workbook(out)["余额明细 Accounts"])}
    assert (detail["A1"]["Closing balance (元)"], detail["A1"]["Base closing balance (元)"]) == (94.25, 119.75)
    assert (detail["A2"]["Closing balance (元)"], detail["A3"]["Closing balance (元)"]) == (-2.01, None)
