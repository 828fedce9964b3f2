"""``meterd report`` as an operator runs it: the workbook written and read back, to stdout with
``-o -``, and bad periods, bases, groupings and outputs refused with what is wrong (exit 2)."""

from __future__ import annotations

import io
import subprocess

import openpyxl
import pytest

from report_site import write_site


@pytest.fixture
def site(tmp_path):
    write_site(tmp_path)
    return "site.toml"


def _rows(ws):
    rows = list(ws.iter_rows(min_row=7, values_only=True))
    keys = [h.split(" ", 1)[1] for h in rows[0]]
    return [dict(zip(keys, r, strict=True)) for r in rows[1:]]


def test_energy_report_year_on_year_by_industry(run_meterd, site, tmp_path):
    p = run_meterd("report", "energy", "-c", site, "--period", "2026-11", "--base", "yoy", "--by", "industry",
                   "-o", "energy.xlsx")
    assert p.returncode == 0, p.stderr
    assert "energy report written to energy.xlsx (电量 Energy by industry: 3 rows)" in p.stdout
    ws = openpyxl.load_workbook(tmp_path / "energy.xlsx").active
    assert ws["B4"].value == "2025-11-01..2025-11-30 (30 天 days; 同比 year-on-year)"
    rows = {r["Industry"]: r for r in _rows(ws)}
    assert (rows["residential"]["Energy (kWh)"], rows["residential"]["Base energy (kWh)"]) == (660, 400)
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []  # no temporary file left


def test_balances_to_stdout(meterd_bin, site, tmp_path):
    p = subprocess.run([meterd_bin, "report", "balances", "-c", site, "--period", "2026-11", "-o", "-"],
                       check=False, capture_output=True, cwd=tmp_path, timeout=60)
    assert p.returncode == 0, p.stderr
    wb = openpyxl.load_workbook(io.BytesIO(p.stdout))
    assert wb.sheetnames == ["余额汇总 By area", "余额明细 Accounts"]


@pytest.mark.parametrize("args, message", [
    (("lineloss", "--period", "2026-13"), "--period '2026-13': use YYYY-MM-DD"),
    (("lineloss", "--period", "2026-11", "--base", "lastyear"), "--base 'lastyear'"),
    (("energy", "--by", "channel"), "--by 'channel': the energy report is grouped by area, industry, group"),
    (("quality", "--period", "2010-01-01..2026-01-01"), "days is more than a report covers (at most ten years"),
    (("quality", "--period", "2025-01-01..2026-06-30"), "at most 366 days"),
    (("lineloss", "--period", "1960-01"), "out of range (from 1970-01-01 to 2099-12-31)"),
    (("lineloss", "-o", "loss.csv"), "-o loss.csv: a report is an .xlsx workbook"),
    (("lineloss", "-o", "nowhere/loss.xlsx"), "directory nowhere does not exist"),
])
def test_bad_arguments_are_refused(site, args, message, tmp_path, monkeypatch, capsys):
    """In-process (main() as the console script calls it), so the cases cost no interpreter start each."""
    from meterd.cli.main import main

    monkeypatch.chdir(tmp_path)
    if "-o" not in args:
        args = (*args, "-o", "out.xlsx")
    assert main(["report", *args, "-c", site]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.xlsx").exists()


def test_an_absurd_range_as_a_subprocess(run_meterd, site, tmp_path):
    p = run_meterd("report", "lineloss", "-c", site, "--period", "2000-01-01..2026-01-01", "-o", "x.xlsx")
    assert p.returncode == 2 and "9498 days is more than a report covers" in p.stderr, p.stderr
    assert not (tmp_path / "x.xlsx").exists()
