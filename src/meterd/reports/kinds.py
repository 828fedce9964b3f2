"""The four reports: line loss, energy, collection quality, prepaid balances -- each a
:class:`~meterd.reports.workbook.Report` for a reporting period and its base.

The figures come from the same queries the API and the other commands use, so a report cannot
disagree with ``GET /api/v1/lineloss`` or ``meterd lineloss``:

- line loss: :func:`meterd.analytics.views.lineloss_reports` (as ``/api/v1/lineloss``), once per
  period;
- energy: :func:`meterd.analytics.views.energy_rows` (as ``/api/v1/energy``), both periods in one
  read of the daily registers;
- collection quality: :meth:`meterd.storage.quality.QualityStore.days`, a few aggregate queries
  per period giving what :meth:`~meterd.storage.quality.QualityStore.report` (as
  ``/api/v1/quality``) counts on each of its days per area and channel, added up: over a period a
  rate is the share of its days' attempts (success), meter-days (data) and watched seconds
  (online) -- not a mean of daily rates;
- balances: the accounts ``/api/v1/accounts`` lists, with their ledger summed per period
  (:class:`BalanceQueries`), a page of accounts at a time so 100,000 accounts stream.

Time is passed in (``now``); days are the site's (``[site] timezone``), except where the
analytics say otherwise (line loss and energy use the daily freezes at 00:00 CST).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Literal

from meterd.clock import day_start, local_text, zone_name
from meterd.control.state import ControlStore
from meterd.errors import ConfigError
from meterd.reports.periods import BASE_WORDS, Periods, RangeError, Span
from meterd.reports.workbook import Chart, Column, Report, Sheet, change, diff, fen_to_yuan, percent
from meterd.storage.sqlite import to_ms

if TYPE_CHECKING:
    from meterd.storage.quality import QualityCell, QualityDay

KINDS: Final = ("lineloss", "energy", "quality", "balances")
#: what ``--by`` / ``by=`` may be per report (the first is the default; None: no grouping asked)
BY: Final[dict[str, tuple[str | None, ...]]] = {
    "lineloss": (None, "area", "line", "group"),
    "energy": ("area", "industry", "group"),
    "quality": ("area", "channel"),
    "balances": ("area",),
}
MAX_QUALITY_DAYS: Final = 366  # a quality report's days (its Daily sheet has one row each)
PAGE: Final = 5000  # accounts per query of the balances report
FLAG_WORDS: Final = {"negative_loss": "负线损 negative loss", "over_threshold": "超标 over threshold",
                     "jump": "突变 jump", "incomplete": "数据不全 incomplete"}
STATE_WORDS: Final = {"normal": "正常 normal", "alarm": "告警 alarm", "tripped": "跳闸 tripped",
                      "pending": "待开户 pending", "closed": "销户 closed"}


def check_by(kind: str, by: str | None, *, name: str = "--by") -> str | None:
    """``by`` for report ``kind``, or its default; ConfigError naming the choices."""
    if kind not in BY:
        raise ConfigError(f"unknown report {kind!r}: one of {', '.join(KINDS)}")
    choices = BY[kind]
    if not by:  # absent, or empty as a form sends it
        return choices[0]
    if by == "unit":  # the word of GET /api/v1/energy and meterd stats: each area / line -- every report's rows
        return choices[0] if kind == "lineloss" else "area"
    if by not in choices:
        shown = ", ".join(c for c in choices if c)
        raise ConfigError(f"{name} {by!r}: the {kind} report is grouped by {shown}")
    return by


def _header(title_zh: str, title_en: str, config: Any, periods: Periods, now: datetime, zone: tzinfo,
            sheets: list[Sheet], finish: Callable[[], dict[str, Iterable[Sequence[Any]]]] | None = None) -> Report:
    rep, base = periods.report, periods.base
    return Report(
        title_zh=title_zh, title_en=title_en,
        site=f"{config.source} ({zone_name(zone)})",
        period=f"{rep.text()} ({rep.days} 天 days)",
        base=f"{base.text()} ({base.days} 天 days; {BASE_WORDS[periods.how]})",
        generated=local_text(now, zone),
        sheets=sheets, finish=finish)


# --- line loss ---------------------------------------------------------------------------------

LINELOSS_COLUMNS: Final = (
    Column("台区/线路", "Area / line", width=16), Column("类型", "Kind", width=8),
    Column("供电量", "Supply (kWh)", "kwh"), Column("基期供电量", "Base supply (kWh)", "kwh"),
    Column("供电量差值", "Supply difference (kWh)", "kwh"), Column("供电量变化率", "Supply change", "pct", 12),
    Column("售电量", "Sales (kWh)", "kwh"), Column("基期售电量", "Base sales (kWh)", "kwh"),
    Column("售电量差值", "Sales difference (kWh)", "kwh"), Column("售电量变化率", "Sales change", "pct", 12),
    Column("损失电量", "Loss (kWh)", "kwh"), Column("基期损失电量", "Base loss (kWh)", "kwh"),
    Column("损失电量差值", "Loss difference (kWh)", "kwh"), Column("损失电量变化率", "Loss change", "pct", 12),
    Column("线损率", "Loss rate", "pct", 11), Column("基期线损率", "Base loss rate", "pct", 11),
    Column("线损率差值", "Loss rate difference (pp)", "pp", 13),
    Column("完整率", "Completeness", "pct", 11), Column("基期完整率", "Base completeness", "pct", 11),
    Column("标记", "Flags", width=24), Column("缺数据表计", "Meters without data", width=30),
)


def lineloss_report(config: Any, periods: Periods, *, now: datetime, zone: tzinfo,
                    by: str | None = None) -> Report:
    from meterd.analytics.views import lineloss_reports

    kind = by if by in ("area", "line", "group") else None
    rep, base = periods.report, periods.base
    current = lineloss_reports(config, rep.start, rep.end, kind=kind)
    before = {r.unit: r for r in lineloss_reports(config, base.start, base.end, kind=kind)}
    rows = []
    for r in current:
        b = before.get(r.unit)
        out: list[Any] = [r.unit, r.kind]
        for name in ("supply", "sales", "loss"):
            now_v, base_v = getattr(r, name), None if b is None else getattr(b, name)
            out += [now_v, base_v, diff(now_v, base_v), change(now_v, base_v)]
        base_rate = None if b is None else b.rate
        out += [percent(r.rate), percent(base_rate), diff(r.rate, base_rate),
                percent(r.completeness), None if b is None else percent(b.completeness),
                ", ".join(FLAG_WORDS.get(f, f) for f in r.flags), " ".join(r.missing)]
        rows.append(out)
    sheet = Sheet("线损 Line loss", LINELOSS_COLUMNS, rows,
                  charts=(Chart("bar", "线损率 Loss rate: 报告期 vs 基期 reporting vs base", 0, (14, 15),
                                "线损率 Loss rate", rows=60),
                          Chart("bar", "供电量与售电量 Supply and sales (kWh)", 0, (2, 6), "kWh", rows=60)),
                  note="线损率 = (供电量 - 售电量) / 供电量; 差值 = 报告期 - 基期 (pp: 百分点 percentage points)")
    return _header("线损报表", "Line loss report", config, periods, now, zone, [sheet])


# --- energy ------------------------------------------------------------------------------------

_BY_WORDS: Final = {"area": ("台区/线路", "Area / line"), "industry": ("行业", "Industry"), "group": ("分组", "Group")}
_ROLE_WORDS: Final = {"sales": "售电 sales points", "supply": "供电 supply points",
                      "auxiliary": "辅助 auxiliary points", "all": "全部 all points"}


def energy_report(config: Any, periods: Periods, *, now: datetime, zone: tzinfo, by: str = "area",
                  role: str = "sales") -> Report:
    from meterd.analytics.views import energy_rows

    key: Literal["unit", "industry", "group"] = "unit" if by == "area" else "industry" if by == "industry" \
        else "group"
    rep, base = periods.report, periods.base
    found = energy_rows(config, [(rep.start, rep.end), (base.start, base.end)], by=key, role=role)
    values: dict[tuple[str, str], dict[str, Decimal]] = {}
    for row in found:
        values.setdefault((row["start"], row["end"]), {})[row[key]] = Decimal(row["kwh"])
    now_v = values.get((rep.start.isoformat(), rep.end.isoformat()), {})
    base_v = values.get((base.start.isoformat(), base.end.isoformat()), {})
    rows: list[list[Any]] = []
    for name in sorted(set(now_v) | set(base_v)):
        a, b = now_v.get(name), base_v.get(name)
        rows.append([name, a, b, diff(a, b), change(a, b)])
    if by == "industry" and rows:  # a meter has one industry: the rows add up
        a_total, b_total = sum(now_v.values(), Decimal(0)), sum(base_v.values(), Decimal(0))
        rows.append(["合计 Total", a_total, b_total, a_total - b_total, change(a_total, b_total)])
    zh, en = _BY_WORDS[by]
    columns = (Column(zh, en, width=18), Column("本期电量", "Energy (kWh)", "kwh", 16),
               Column("基期电量", "Base energy (kWh)", "kwh", 16), Column("差值", "Difference (kWh)", "kwh", 16),
               Column("变化率", "Change", "pct", 12))
    sheet = Sheet(f"电量 Energy by {by}", columns, rows,
                  charts=(Chart("bar", f"电量 Energy by {en.lower()}: 报告期 vs 基期 reporting vs base", 0, (1, 2),
                                "kWh", rows=60),),
                  note=f"计量点 Points: {_ROLE_WORDS.get(role, role)}; 变化率 = (本期 - 基期) / 基期")
    return _header("电量统计报表", f"Energy report by {by}", config, periods, now, zone, [sheet])


# --- collection quality ------------------------------------------------------------------------


@dataclass
class _Tally:
    attempts: int = 0
    ok: int = 0
    due: int = 0
    meter_days: int = 0
    meter_days_data: int = 0
    online: float = 0.0
    span: float = 0.0

    def add(self, cell: QualityCell) -> None:
        self.attempts += cell.attempts
        self.ok += cell.ok
        self.due += cell.attempts - cell.no_record
        self.meter_days += cell.meters - cell.not_due
        self.meter_days_data += cell.meters - cell.not_due - cell.no_data

    def add_online(self, channels: Iterable[str], online: dict[str, tuple[float, float]]) -> None:
        """The day's row of ``channels``: its online and watched seconds, added up channel by channel
        in name order as :meth:`QualityStore.report` does (the same float sums), if any is watched."""
        seconds: float | None = None
        span = 0.0
        for channel in sorted(channels):
            if channel in online:
                on, watched = online[channel]
                seconds = (seconds or 0.0) + on
                span += watched
        if seconds is not None:
            self.online += seconds
            self.span += span

    def merge(self, other: _Tally) -> None:
        self.attempts += other.attempts
        self.ok += other.ok
        self.due += other.due
        self.meter_days += other.meter_days
        self.meter_days_data += other.meter_days_data
        self.online += other.online
        self.span += other.span

    @property
    def success(self) -> Decimal | None:
        return (Decimal(self.ok) / Decimal(self.due)).quantize(Decimal("0.000001")) if self.due else None

    @property
    def data(self) -> Decimal | None:
        return ((Decimal(self.meter_days_data) / Decimal(self.meter_days)).quantize(Decimal("0.000001"))
                if self.meter_days else None)

    @property
    def online_rate(self) -> float | None:
        return round(self.online / self.span, 6) if self.span else None


def _pp(a: Decimal | float | None, b: Decimal | float | None) -> Decimal | float | None:
    """A difference of two fractions in percentage points."""
    if a is None or b is None:
        return None
    return (a - b) * 100  # type: ignore[operator]


def _quality_tallies(days: list[QualityDay], span: Span, by: str,
                     daily: list[tuple[date, _Tally]]) -> dict[tuple[str, str], _Tally]:
    """The period's tallies per area (or channel) and the total from :meth:`QualityStore.days`, and
    the total of each of its days into ``daily`` (an empty tally for a day not yet begun): what
    adding up the day's :meth:`QualityStore.report` rows gives, day by day."""
    out: dict[tuple[str, str], _Tally] = {}
    found = {d.day: d for d in days}
    for i in range(span.days):
        day = span.start + timedelta(days=i)
        seen = found.get(day)
        if seen is None:
            daily.append((day, _Tally()))
            continue
        channels: dict[str, set[str]] = {}
        for (area, channel), cell in seen.cells.items():
            key = area if by == "area" else channel
            out.setdefault((by, key), _Tally()).add(cell)
            channels.setdefault(key, set()).add(channel)
        for key, names in channels.items():
            out[(by, key)].add_online(names, seen.online)
        total = _Tally()
        for cell in seen.cells.values():
            total.add(cell)
        total.add_online(seen.online, seen.online)
        out.setdefault(("total", "total"), _Tally()).merge(total)
        daily.append((day, total))
    return out


QUALITY_COLUMNS: Final = (
    Column("层级", "Level", width=10), Column("名称", "Name", width=16),
    Column("采集次数", "Attempts", "int", 12), Column("成功次数", "Successes", "int", 12),
    Column("采集成功率", "Success rate", "pct", 12), Column("基期成功率", "Base success rate", "pct", 12),
    Column("成功率差值", "Success difference (pp)", "pp", 13),
    Column("数据完整率", "Data rate (meter-days)", "pct", 13), Column("基期完整率", "Base data rate", "pct", 12),
    Column("完整率差值", "Data difference (pp)", "pp", 13),
    Column("终端在线率", "Terminal online rate", "pct", 12), Column("基期在线率", "Base online rate", "pct", 12),
    Column("在线率差值", "Online difference (pp)", "pp", 13),
    Column("无数据表计日", "Meter-days without data", "int", 13),
    Column("基期无数据表计日", "Base meter-days without data", "int", 13),
)
DAILY_COLUMNS: Final = (
    Column("序号", "Day #", "int", 8), Column("日期", "Date", "date", 12),
    Column("采集成功率", "Success rate", "pct", 12), Column("数据完整率", "Data rate", "pct", 12),
    Column("基期日期", "Base date", "date", 12), Column("基期成功率", "Base success rate", "pct", 12),
    Column("基期完整率", "Base data rate", "pct", 12),
)


def quality_report(config: Any, periods: Periods, *, now: datetime, zone: tzinfo, by: str = "area") -> Report:
    from meterd.storage.quality import QualityStore

    for name, span in zip(periods.names, (periods.report, periods.base), strict=True):
        if span.days > MAX_QUALITY_DAYS:
            raise RangeError(f"{name} {span.text()}: collection quality is kept per day; a report covers at "
                              f"most {MAX_QUALITY_DAYS} days ({span.days} asked)")
    daily_now: list[tuple[date, _Tally]] = []
    daily_base: list[tuple[date, _Tally]] = []
    rep, base = periods.report, periods.base
    with QualityStore(config.store.state, clock=lambda: now, zone=zone) as store:
        store.update()  # fold in the attempts recorded since the last look, once
        current = _quality_tallies(store.days(rep.start, rep.end, now=now), rep, by, daily_now)
        before = _quality_tallies(store.days(base.start, base.end, now=now), base, by, daily_base)
    level_words = {"area": "台区 area", "channel": "通道 channel", "total": "合计 total"}
    rows = []
    keys = sorted(set(current) | set(before), key=lambda k: (k[0] == "total", k[1]))
    for key in keys:
        a, b = current.get(key), before.get(key)
        a_s, b_s = (a.success if a else None), (b.success if b else None)
        a_d, b_d = (a.data if a else None), (b.data if b else None)
        a_o, b_o = (a.online_rate if a else None), (b.online_rate if b else None)
        rows.append([level_words[key[0]], key[1], a.attempts if a else None, a.ok if a else None,
                     a_s, b_s, _pp(a_s, b_s), a_d, b_d, _pp(a_d, b_d), a_o, b_o, _pp(a_o, b_o),
                     (a.meter_days - a.meter_days_data) if a else None,
                     (b.meter_days - b.meter_days_data) if b else None])
    n = max(len(daily_now), len(daily_base))
    daily = []
    for i in range(n):
        d, t = daily_now[i] if i < len(daily_now) else (None, None)
        bd, bt = daily_base[i] if i < len(daily_base) else (None, None)
        daily.append([i + 1, d, t.success if t else None, t.data if t else None,
                      bd, bt.success if bt else None, bt.data if bt else None])
    threshold = f"{store.threshold:.0%}"
    sheets = [Sheet(f"采集质量 Quality by {by}", QUALITY_COLUMNS, rows,
                    charts=(Chart("bar", "采集成功率 Success rate: 报告期 vs 基期 reporting vs base", 1, (4, 5),
                                  "成功率 Success rate", rows=60),),
                    note=f"考核线 Target {threshold}; 成功率 = 成功 / 应采 (attempts due); 完整率 = 有数据的表计日 / "
                         "应采表计日 (meter-days)"),
              Sheet("每日 Daily", DAILY_COLUMNS, daily,
                    charts=(Chart("line", "每日采集成功率 Daily success rate", 0, (2, 5), "成功率 Success rate"),),
                    note="基期的第 N 天与报告期的第 N 天对齐 (day N of the base beside day N of the reporting period)")]
    return _header("采集质量报表", "Collection quality report", config, periods, now, zone, sheets)


# --- prepaid balances --------------------------------------------------------------------------


class BalanceQueries(ControlStore):
    """The accounts of ``/api/v1/accounts`` with their ledger summed over a reporting period and
    at the end of a base period, a page of accounts at a time (keyset by account name).

    :meth:`ControlStore.accounts` builds each account with its meters, which a district-wide
    report does not need; this reads the same ``accounts`` rows and the ledger, nothing else."""

    def pages(self, *, start: datetime, end: datetime, base_end: datetime, area: str | None = None,
              page: int = PAGE) -> Iterator[list[tuple[Any, ...]]]:
        """Pages of ``(account, customer, area, state, opened_ms, balance_fen, opening_fen,
        payments_fen, charges_fen, other_fen, base_closing_fen)``: the ledger before ``start``,
        its payments, charges (energy and fixed) and other entries in ``[start, end)``, and the
        ledger before ``base_end``."""
        s, e, be = to_ms(start), to_ms(end), to_ms(base_end)
        after = ""
        while True:
            where, params = "account > ?", [after]
            if area is not None:
                where += " AND area = ?"
                params.append(area)
            accounts = self._tuples(
                f"SELECT account, customer, area, state, opened_ts, balance_fen FROM accounts WHERE {where} "
                "ORDER BY account LIMIT ?", (*params, page))
            if not accounts:
                return
            sums = {row[0]: row[1:] for row in self._tuples(
                "SELECT account,"
                " SUM(CASE WHEN ts < ? THEN amount_fen ELSE 0 END),"
                " SUM(CASE WHEN ts >= ? AND ts < ? AND kind = 'payment' THEN amount_fen ELSE 0 END),"
                " SUM(CASE WHEN ts >= ? AND ts < ? AND kind IN ('charge', 'fixed') THEN amount_fen ELSE 0 END),"
                " SUM(CASE WHEN ts >= ? AND ts < ? AND kind NOT IN ('payment', 'charge', 'fixed')"
                "     THEN amount_fen ELSE 0 END),"
                " SUM(CASE WHEN ts < ? THEN amount_fen ELSE 0 END)"
                " FROM ledger WHERE account >= ? AND account <= ? GROUP BY account",
                (s, s, e, s, e, s, e, be, accounts[0][0], accounts[-1][0]))}
            zero = (0, 0, 0, 0, 0)
            yield [(*a, *(int(x or 0) for x in sums.get(a[0], zero))) for a in accounts]
            if len(accounts) < page:
                return
            after = accounts[-1][0]


BALANCE_COLUMNS: Final = (
    Column("户号", "Account", width=14), Column("客户", "Customer", width=18), Column("台区", "Area", width=12),
    Column("状态", "State", width=12),
    Column("期初余额", "Opening balance (元)", "yuan"), Column("缴费", "Payments (元)", "yuan"),
    Column("电费", "Charges (元)", "yuan"), Column("调整及其他", "Adjustments, other (元)", "yuan"),
    Column("期末余额", "Closing balance (元)", "yuan"), Column("基期期末余额", "Base closing balance (元)", "yuan"),
    Column("差额", "Difference (元)", "yuan"), Column("变化率", "Change", "pct", 11),
)
AREA_COLUMNS: Final = (
    Column("台区", "Area", width=14), Column("户数", "Accounts", "int", 10),
    Column("欠费户数", "Accounts in arrears", "int", 12),
    Column("期末余额合计", "Closing balances (元)", "yuan", 18),
    Column("基期期末余额合计", "Base closing balances (元)", "yuan", 18),
    Column("差额", "Difference (元)", "yuan", 16), Column("变化率", "Change", "pct", 11),
    Column("缴费合计", "Payments (元)", "yuan", 16), Column("电费合计", "Charges (元)", "yuan", 16),
)


@dataclass
class _AreaTally:
    accounts: int = 0
    arrears: int = 0
    closing: int = 0
    base: int = 0
    payments: int = 0
    charges: int = 0


def balances_report(config: Any, periods: Periods, *, now: datetime, zone: tzinfo, by: str = "area",
                    area: str | None = None, page: int = PAGE) -> Report:
    rep, base = periods.report, periods.base
    start, end = day_start(rep.start, zone), day_start(rep.end + timedelta(days=1), zone)
    base_end = day_start(base.end + timedelta(days=1), zone)
    areas: dict[str, _AreaTally] = {}

    def detail() -> Iterator[Sequence[Any]]:
        with BalanceQueries(config.store.state) as store:
            for rows in store.pages(start=start, end=end, base_end=base_end, area=area, page=page):
                for (account, customer, where, state, opened, _, opening, pay, charge, other, base_fen) in rows:
                    closing = None if opened >= to_ms(end) else opening + pay + charge + other
                    base_closing = None if opened >= to_ms(base_end) else base_fen
                    t = areas.get(where)
                    if t is None:
                        t = areas[where] = _AreaTally()
                    t.accounts += 1
                    if closing is not None:
                        t.closing += closing
                        t.arrears += closing < 0
                    t.base += base_closing or 0
                    t.payments += pay
                    t.charges += charge
                    yield (account, customer, where, STATE_WORDS.get(state, state), fen_to_yuan(opening),
                           fen_to_yuan(pay), fen_to_yuan(charge), fen_to_yuan(other), fen_to_yuan(closing),
                           fen_to_yuan(base_closing),
                           None if closing is None or base_closing is None else fen_to_yuan(closing - base_closing),
                           change(closing, base_closing))

    def summary() -> list[Sequence[Any]]:
        rows: list[Sequence[Any]] = []
        total = _AreaTally()
        for name in sorted(areas):
            t = areas[name]
            rows.append((name or "-", t.accounts, t.arrears, fen_to_yuan(t.closing), fen_to_yuan(t.base),
                         fen_to_yuan(t.closing - t.base), change(t.closing, t.base), fen_to_yuan(t.payments),
                         fen_to_yuan(t.charges)))
            for f in ("accounts", "arrears", "closing", "base", "payments", "charges"):
                setattr(total, f, getattr(total, f) + getattr(t, f))
        rows.append(("合计 Total", total.accounts, total.arrears, fen_to_yuan(total.closing), fen_to_yuan(total.base),
                     fen_to_yuan(total.closing - total.base), change(total.closing, total.base),
                     fen_to_yuan(total.payments), fen_to_yuan(total.charges)))
        return rows

    summary_sheet = Sheet(SUMMARY_TITLE, AREA_COLUMNS, (),
                          note="期末 = 报告期最后一天 24:00 (site time); 欠费 Arrears = 期末余额 < 0")
    detail_sheet = Sheet("余额明细 Accounts", BALANCE_COLUMNS, detail(),
                         note="期末余额 = 期初 + 缴费 + 电费 (负) + 调整; 开户晚于期末的户为空 (blank: opened later)")

    def finish() -> dict[str, Iterable[Sequence[Any]]]:
        rows = summary()
        # the areas, not the total row, are the chart's bars
        summary_sheet.charts = (Chart("bar", "余额 Balances by area: 报告期末 vs 基期末 (元)", 0, (3, 4), "元",
                                      rows=min(60, len(rows) - 1)),)
        return {SUMMARY_TITLE: rows}

    return _header("预付费余额报表", "Prepaid balances report", config, periods, now, zone,
                   [summary_sheet, detail_sheet], finish)


SUMMARY_TITLE: Final = "余额汇总 By area"


def build(kind: str, config: Any, periods: Periods, *, now: datetime, zone: tzinfo, by: str | None = None,
          role: str = "sales", area: str | None = None) -> Report:
    """The report ``kind`` (one of :data:`KINDS`); ``by`` as :func:`check_by` allows."""
    by = check_by(kind, by)
    if kind == "lineloss":
        return lineloss_report(config, periods, now=now, zone=zone, by=by)
    if kind == "energy":
        return energy_report(config, periods, now=now, zone=zone, by=by or "area", role=role)
    if kind == "quality":
        return quality_report(config, periods, now=now, zone=zone, by=by or "area")
    return balances_report(config, periods, now=now, zone=zone, area=area)
