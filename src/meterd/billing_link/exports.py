"""Exports: reading-day (抄表日) register values keyed by account, and balances.

Each export is one document -- a file in ``outbox/`` (``NAME.tmp``, fsync, rename) or one POST --
named after the job and what it covers, so running it again rewrites the same file:

- readings: ``<job>-YYYYMMDD.csv|json``, one row per account and meter with the register value
  at the start of that day from ``register_of(meter, day)`` (the meter's daily freeze, taken at
  its midnight, Beijing time; the day is the freeze's date).  "Today" is the site's
  (``[site] timezone``).  An account whose meter has no
  value, or that has no meter, is listed with an empty value and status ``missing`` -- never
  dropped, so the billing system sees whom it must estimate.  The watermark is the last day
  exported; without ``day`` a run exports every day after it through today (at most
  :data:`CATCH_UP` days), without a watermark just today.  An explicit ``day`` rewrites that day
  and never moves the watermark back.
- balances: ``<job>-YYYYMMDD-HHMMSS.csv|json`` (``now`` in the site's zone): every account's balance and
  control state as of ``now``.

CSV has a header row and CRLF lines; JSON is ``{"job", "kind", "name", "generated", ...,
"records": [...]}`` -- the same document is POSTed.  Money and energy are exact decimal strings.
The file encoding is the job's (``utf-8``, ``utf-8-sig``, ``gbk``, ``gb18030``); a character that
GBK cannot hold is written as ``?`` and reported.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from meterd.billing_link.folder import OUTBOX, DropFolder
from meterd.billing_link.http import post_json, shown_url, token_from_env
from meterd.billing_link.model import RegisterOf, Run
from meterd.clock import local_date
from meterd.errors import SyncError

READING_COLUMNS: Final = ("account", "meter", "day", "register_kwh", "estimated", "status")
BALANCE_COLUMNS: Final = ("account", "customer", "area", "balance", "state", "held", "as_of")
ENCODINGS: Final = ("utf-8", "utf-8-sig", "gbk", "gb18030")
CATCH_UP: Final = 31  # days exported by one run at most


def pending_days(watermark: str | None, today: date, *, limit: int = CATCH_UP) -> list[date]:
    if watermark is None:
        return [today]
    first = date.fromisoformat(watermark) + timedelta(days=1)
    return [first + timedelta(days=i) for i in range(min(limit, (today - first).days + 1))]


def _value(got: Any) -> tuple[Decimal | None, bool | None]:
    if isinstance(got, tuple):
        value, estimated = (got + (None,))[:2]
        return (None, None) if value is None else (Decimal(str(value)), None if estimated is None else bool(estimated))
    return (None, None) if got is None else (Decimal(str(got)), None)


def reading_rows(accounts: Iterable[tuple[str, Iterable[str]]], day: date,
                 register_of: RegisterOf) -> list[dict[str, Any]]:
    """(account, its meters) -> one row per account and meter; pure but for ``register_of``."""
    rows = []
    for account, meters in accounts:
        meters = sorted(meters)
        for meter in meters or [""]:
            value, estimated = _value(register_of(meter, day)) if meter else (None, None)
            rows.append({"account": account, "meter": meter, "day": day.isoformat(), "register_kwh": value,
                         "estimated": estimated, "status": "missing" if value is None else "ok"})
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def render(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], fmt: str, doc: Mapping[str, Any]) -> str:
    if fmt == "csv":
        buf = io.StringIO(newline="")
        writer = csv.writer(buf)
        writer.writerow(columns)
        writer.writerows([_cell(r[c]) for c in columns] for r in rows)
        return buf.getvalue()
    return json.dumps(doc, ensure_ascii=False, default=str, indent=1) + "\n"


def _document(run: Run, name: str, rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> dict[str, Any]:
    return {"job": run.spec.name, "kind": str(run.spec.kind), "name": name, "generated": run.now.isoformat(),
            **meta, "records": [{k: (str(v) if isinstance(v, Decimal) else v) for k, v in r.items()} for r in rows]}


def deliver(run: Run, stem: str, columns: Sequence[str], rows: Sequence[Mapping[str, Any]],
            meta: Mapping[str, Any]) -> str:
    """Write ``outbox/<stem>.<fmt>`` atomically, or POST the JSON document; returns its name."""
    spec = run.spec
    fmt = "json" if spec.url is not None else spec.format  # a POST is always JSON
    name = f"{stem}.{fmt}"
    doc = _document(run, name, rows, meta)
    if spec.url is not None:
        post_json(spec.url, doc, token=token_from_env(spec.token_env), key=name)
        run.result.files.append(name)
        run.result.note(f"{name}: {len(rows)} row(s) posted to {shown_url(spec.url)}")
        return name
    assert spec.folder is not None
    text = render(rows, columns, fmt, doc)
    try:
        data = text.encode(spec.encoding)
    except UnicodeEncodeError:
        data = text.encode(spec.encoding, errors="replace")
        run.result.note(f"{name}: some characters have no {spec.encoding} form and were written as '?'")
    folder = DropFolder(Path(spec.folder))
    folder.ensure()
    folder.write_atomic(OUTBOX, name, data)
    run.result.files.append(name)
    run.result.note(f"{name}: {len(rows)} row(s) written to {OUTBOX}/ ({spec.encoding})")
    return name


def _check(run: Run) -> None:
    if run.spec.format not in ("csv", "json"):
        raise SyncError(f"job {run.spec.name}: format must be csv or json, not {run.spec.format!r}")
    if run.spec.encoding.lower() not in ENCODINGS:
        raise SyncError(f"job {run.spec.name}: encoding must be one of {', '.join(ENCODINGS)}, "
                        f"not {run.spec.encoding!r}")


def export_readings(run: Run) -> None:
    _check(run)
    spec, result = run.spec, run.result
    if run.register_of is None:
        raise SyncError(f"job {spec.name}: export_readings needs register_of (the analytics store's register lookup)")
    watermark = run.sync.watermark(spec.name)
    days = [run.day] if run.day is not None else pending_days(watermark, local_date(run.now, run.zone))
    if not days:
        result.note(f"nothing to export: {watermark} is already exported (give a day to rewrite one)")
    accounts = [(a.account, list(a.meters)) for a in run.control.accounts()]
    for day in days:
        rows = reading_rows(accounts, day, run.register_of)
        missing = sum(1 for r in rows if r["status"] == "missing")
        deliver(run, f"{spec.name}-{day:%Y%m%d}", READING_COLUMNS, rows, {"day": day.isoformat()})
        result.add({"applied": len(rows) - missing, "rows": len(rows), "rows_missing": missing, "days": 1})
        if watermark is None or day > date.fromisoformat(watermark):
            watermark = day.isoformat()
            run.sync.set_watermark(spec.name, str(spec.kind), watermark)
    result.watermark = watermark


def export_balances(run: Run) -> None:
    _check(run)
    as_of = run.now.isoformat()
    rows = [{"account": a.account, "customer": a.customer, "area": a.area, "balance": a.balance, "state": a.state,
             "held": a.held or "", "as_of": as_of} for a in run.control.accounts()]
    deliver(run, f"{run.spec.name}-{run.now.astimezone(run.zone):%Y%m%d-%H%M%S}", BALANCE_COLUMNS, rows, {"as_of": as_of})
    run.result.add({"applied": len(rows), "rows": len(rows)})
    run.sync.set_watermark(run.spec.name, str(run.spec.kind), as_of)
    run.result.watermark = as_of
