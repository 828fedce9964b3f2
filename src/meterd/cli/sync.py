"""``meterd sync run JOB`` / ``meterd sync status`` / ``meterd sync quarantine``: the billing link by hand.

The daemon runs the jobs on their schedules; these run one now (the same code), show each job's
watermark and last outcome, and list the records that were quarantined with their reasons.
Times print in the site's zone (``[site] timezone``) with the offset; ``--json`` and ``--csv`` keep
ISO 8601 with the offset.
"""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime, tzinfo
from typing import Any

from meterd.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, MAX_COUNT, error, name_arg, print_json, whole_number
from meterd.clock import local_text
from meterd.errors import ConfigError, SyncError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sync", help="billing-system sync jobs: run one now, status, quarantine")
    p.add_argument("action", choices=("run", "status", "quarantine"))
    p.add_argument("job", nargs="?", type=name_arg, help="the job's name (run; optional filter for quarantine)")
    p.add_argument("--day", help="export_readings: the reading day YYYY-MM-DD (default: the next after the watermark)")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--limit", type=whole_number(1, MAX_COUNT), default=100)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true")
    out.add_argument("--csv", metavar="FILE", help="status / quarantine as CSV to FILE ('-' for stdout)")
    p.set_defaults(func=sync_cmd)


def _watermark(value: Any, zone: tzinfo) -> str:
    """A watermark for people: a day or a file name as it is, an instant (a balances export's
    as-of time) in site time."""
    if not isinstance(value, str) or "T" not in value:
        return "-" if value is None else str(value)
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return value
    return value if at.tzinfo is None else local_text(at, zone)


def _counts(counts: Any) -> str:
    """A run's counts in words: ``applied 3, duplicates 1`` (no Python dict)."""
    if not isinstance(counts, dict):
        return "" if counts is None else str(counts)
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "nothing"


def sync_cmd(args: argparse.Namespace) -> int:
    from meterd.billing_link.jobs import SyncStore
    from meterd.cli.common import load_site_config

    try:
        config = load_site_config(args.config)
        zone = config.site.zone
        if config.prepaid is not None and config.prepaid.accounts:
            from meterd.control.state import ControlStore

            with ControlStore(config.store.state) as control:  # as the daemon does at start
                control.upsert_accounts(config.prepaid.accounts, actor="config", now=datetime.now(UTC))
        if args.action == "run":
            if not args.job:
                raise ConfigError("sync run needs the job's name")
            day = date.fromisoformat(args.day) if args.day else None
            from meterd.billing_link.runtime import run_named

            result = run_named(config, args.job, now=datetime.now(UTC), day=day)
            if args.json:
                print_json(result.as_dict())
            else:
                print(f"job {result.job} ({result.kind}): {result.applied} applied, {result.duplicates} duplicates, "
                      f"{result.quarantined} quarantined; watermark {_watermark(result.watermark, zone)}")
                for line in result.detail:
                    print(f"  {line}")
            return EXIT_OK
        with SyncStore(config.store.state) as store:
            rows = store.status() if args.action == "status" else store.quarantine(job=args.job, limit=args.limit)
        if args.json:
            print_json(rows)
        elif args.csv:
            from meterd.cli.analytics import _emit

            columns = sorted({k for r in rows for k in r}) or ["job"]
            _emit(args, [{k: (v if isinstance(v, (str, int, float, type(None))) else str(v)) for k, v in r.items()}
                         for r in rows], columns, [])
        elif args.action == "status":
            print(f"{'JOB':<20} {'WATERMARK':<25} {'LAST RUN':<25} STATUS / COUNTS")
            for r in rows:
                last = local_text(r["last_run"], zone) if r.get("last_run") else "-"
                print(f"{r['job']:<20} {_watermark(r.get('watermark'), zone):<25} {last:<25} "
                      f"{r.get('last_status') or '-'}: {_counts(r.get('counts'))}")
        else:
            for r in rows:
                when = local_text(r["ts"], zone) if r.get("ts") else "-"
                print(f"{when} {r.get('job')} {r.get('source')} #{r.get('record_no')}: {r.get('reason')} | "
                      f"{r.get('raw')}")
        return EXIT_OK
    except (ConfigError, ValueError) as exc:
        error(str(exc))
        return EXIT_BAD_INPUT
    except SyncError as exc:
        error(str(exc))
        return EXIT_FAILED
