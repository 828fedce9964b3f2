"""Writing a :class:`Report` as an ``.xlsx`` workbook with openpyxl, streamed (write-only mode).

Every sheet has the same shape::

    row 1   the report's title, Chinese and English
    row 2   the site (config file) and its time zone
    row 3   报告期 reporting period
    row 4   基期 base period, and how it was chosen (环比 / 同比 / chosen)
    row 5   生成时间 generated at, in the site's zone with its offset
    row 6   (empty)
    row 7   the headers, "线损率 Loss rate": frozen, so they stay while the rows scroll
    row 8.. the rows, streamed: a sheet of 100,000 accounts is never held in memory

Numbers are numbers (exact: a ``Decimal`` is written as its digits) with a format per column:
kWh and 元 with two decimals and thousands separators, rates as percentages (stored as fractions:
4.25 % is 0.0425), differences of rates in percentage points.  Money arrives as integer fen and
is written as 元 (``fen / 100``, exact).  Charts (openpyxl bar or line charts) refer to the rows
of their sheet, so a chart over a sheet of unknown length is added after its rows are written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import IO, Any, Final

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.chart import BarChart, LineChart, Reference
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter

HEADER_ROW: Final = 7
FORMATS: Final = {
    "text": "@",
    "int": "#,##0",
    "kwh": "#,##0.00",
    "yuan": "#,##0.00",
    "pct": "0.00%",
    "pp": "+0.00;-0.00;0.00",
    "date": "yyyy-mm-dd",
}
_TITLE_FONT: Final = Font(bold=True, size=14)
_BOLD: Final = Font(bold=True)
_HEADER_FILL: Final = PatternFill("solid", fgColor="DDEBF7")
_WRAP: Final = Alignment(wrap_text=True, vertical="center")
_HUNDRED: Final = Decimal(100)


@dataclass(frozen=True, slots=True)
class Column:
    zh: str
    en: str
    fmt: str = "text"  # a key of FORMATS
    width: float = 14

    @property
    def header(self) -> str:
        return f"{self.zh} {self.en}"


@dataclass(frozen=True, slots=True)
class Chart:
    """A chart over the sheet's rows: ``categories`` and ``series`` are column indexes (0-based)."""

    kind: str  # "bar" or "line"
    title: str
    categories: int
    series: tuple[int, ...]
    y_title: str = ""
    rows: int | None = None  # only the first this many rows (a chart of 100,000 bars says nothing)


@dataclass
class Sheet:
    title: str  # at most 31 characters (Excel's limit)
    columns: Sequence[Column]
    rows: Iterable[Sequence[Any]]
    charts: Sequence[Chart] = ()
    note: str = ""  # one line under the title rows' block (row 6)
    written: int = field(default=0, init=False)  # rows written, set by write_workbook


@dataclass
class Report:
    title_zh: str
    title_en: str
    site: str
    period: str
    base: str
    generated: str  # site time with offset
    sheets: list[Sheet]
    # a sheet may be filled by the rows of another (a summary of the detail streamed before it):
    # ``finish`` runs after every sheet's rows are written and returns more sheets' rows by title
    finish: Callable[[], dict[str, Iterable[Sequence[Any]]]] | None = None


def fen_to_yuan(fen: int | None) -> Decimal | None:
    return None if fen is None else Decimal(fen).scaleb(-2)


def percent(value: Decimal | float | None) -> Decimal | float | None:
    """A rate given in percent (4.25) as the fraction Excel's % format shows (0.0425)."""
    if value is None:
        return None
    return value / _HUNDRED if isinstance(value, Decimal) else value / 100


def change(current: Decimal | int | None, base: Decimal | int | None) -> Decimal | None:
    """(current - base) / |base| as a fraction to 0.0001 (0.01 %); None without a base to divide by."""
    if current is None or base is None or base == 0:
        return None
    return ((Decimal(current) - Decimal(base)) / abs(Decimal(base))).quantize(Decimal("0.0001"))


def diff(current: Any, base: Any) -> Any:
    return None if current is None or base is None else current - base


def _title_rows(ws: Any, report: Report, sheet: Sheet) -> None:
    def cell(value: str, font: Font | None = None) -> WriteOnlyCell:
        c = WriteOnlyCell(ws, value=value)
        if font is not None:
            c.font = font
        return c

    ws.append([cell(f"{report.title_zh} {report.title_en}", _TITLE_FONT)])
    ws.append([cell("站点 Site", _BOLD), report.site])
    ws.append([cell("报告期 Reporting period", _BOLD), report.period])
    ws.append([cell("基期 Base period", _BOLD), report.base])
    ws.append([cell("生成时间 Generated at", _BOLD), report.generated])
    ws.append([sheet.note] if sheet.note else [])


def _header(ws: Any, sheet: Sheet) -> None:
    cells = []
    for col in sheet.columns:
        c = WriteOnlyCell(ws, value=col.header)
        c.font, c.fill, c.alignment = _BOLD, _HEADER_FILL, _WRAP
        cells.append(c)
    ws.append(cells)


def _rows(ws: Any, sheet: Sheet, rows: Iterable[Sequence[Any]]) -> int:
    # One cell object per formatted column, reused row after row: write-only mode serialises a row
    # when it is appended, so a sheet of 100,000 rows costs the memory of one.  Text and empty
    # cells go as plain values (openpyxl takes a cell object the slow way, through an exception).
    cells: list[WriteOnlyCell | None] = []
    for col in sheet.columns:
        if col.fmt == "text":
            cells.append(None)
            continue
        c = WriteOnlyCell(ws)
        c.number_format = FORMATS[col.fmt]
        cells.append(c)
    n = 0
    for values in rows:
        out: list[Any] = []
        for c, value in zip(cells, values, strict=True):
            if c is None or value is None:
                out.append(value)
            else:
                c.value = value
                out.append(c)
        ws.append(out)
        n += 1
    return n


def _chart(ws: Any, sheet: Sheet, spec: Chart, index: int) -> None:
    rows = sheet.written if spec.rows is None else min(sheet.written, spec.rows)
    if rows == 0:
        return
    chart: BarChart | LineChart
    if spec.kind == "bar":
        chart = BarChart()
        chart.type = "col"
        chart.grouping = "clustered"
    else:
        chart = LineChart()
    chart.title = spec.title
    chart.y_axis.title = spec.y_title
    # openpyxl 3.1 writes the axes as deleted unless told: recent Excel then draws none
    chart.x_axis.delete = False
    chart.y_axis.delete = False
    if all(sheet.columns[s].fmt == "pct" for s in spec.series):
        chart.y_axis.number_format = "0.0%"
    chart.height, chart.width = 9, max(16, min(40, 2 + rows * len(spec.series) * 0.6))
    first, last = HEADER_ROW, HEADER_ROW + rows
    for s in spec.series:
        data = Reference(ws, min_col=s + 1, max_col=s + 1, min_row=first, max_row=last)
        chart.add_data(data, titles_from_data=True)
    chart.set_categories(Reference(ws, min_col=spec.categories + 1, max_col=spec.categories + 1,
                                   min_row=first + 1, max_row=last))
    column = get_column_letter(len(sheet.columns) + 2)
    ws.add_chart(chart, f"{column}{HEADER_ROW + index * 20}")


def write_workbook(report: Report, target: str | IO[bytes]) -> dict[str, int]:
    """Write ``report`` to ``target`` (a path or a binary file); returns the rows written per sheet."""
    wb = Workbook(write_only=True)
    sheets = {}
    for sheet in report.sheets:
        ws = wb.create_sheet(sheet.title)
        for i, col in enumerate(sheet.columns, start=1):
            ws.column_dimensions[get_column_letter(i)].width = col.width
        ws.freeze_panes = f"A{HEADER_ROW + 1}"
        _title_rows(ws, report, sheet)
        _header(ws, sheet)
        sheets[sheet.title] = (ws, sheet)
    late = {}
    for sheet in report.sheets:
        sheet.written = _rows(sheets[sheet.title][0], sheet, sheet.rows) if sheet.rows is not None else 0
    if report.finish is not None:
        late = report.finish()
        for title, rows in late.items():
            ws, sheet = sheets[title]
            sheet.written += _rows(ws, sheet, rows)
    for ws, sheet in sheets.values():
        for i, spec in enumerate(sheet.charts):
            _chart(ws, sheet, spec, i)
    wb.save(target)
    return {title: sheet.written for title, (_, sheet) in sheets.items()}
