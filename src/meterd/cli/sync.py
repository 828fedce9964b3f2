"""``meterd sync run JOB`` / ``meterd sync status`` / ``meterd sync quarantine``: the billing link by hand.

The daemon runs the jobs on their schedules; these run one now (the same code), show each job's
watermark and last outcome, and list the records that were quarantined with their reasons.
"""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime

from meterd.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, error, print_json
from meterd.errors import ConfigError, SyncError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sync", help="billing-system sync jobs: run one now, status, quarantine")
    p.add_argument("action", choices=("run", "status", "quarantine"))
    p.add_argument("job", nargs="?", help="the job's name (run; optional filter for quarantine)")
    p.add_argument("--day", help="export_readings: the reading day YYYY-MM-DD (default: the next after the watermark)")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--limit", type=int, default=100)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true")
    out.add_argument("--csv", metavar="FILE", help="status / quarantine as CSV to FILE ('-' for stdout)")
    p.set_defaults(func=sync_cmd)


def sync_cmd(args: argparse.Namespace) -> int:
    from meterd.billing_link.jobs import SyncStore
    from meterd.config.loader import load_config

    try:
        config = load_config(args.config)
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
                      f"{result.quarantined} quarantined; watermark {result.watermark}")
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
            print(f"{'JOB':<20} {'WATERMARK':<26} {'LAST RUN':<26} STATUS / COUNTS")
            for r in rows:
                print(f"{r['job']:<20} {r.get('watermark') or '-'!s:<26} {str(r.get('last_run') or '-')[:26]:<26} "
                      f"{r.get('last_status')} {r.get('counts')}")
        else:
            for r in rows:
                print(f"{r.get('job')} {r.get('source')} #{r.get('record_no')}: {r.get('reason')} | {r.get('raw')}")
        return EXIT_OK
    except (ConfigError, ValueError) as exc:
        error(str(exc))
        return EXIT_BAD_INPUT
    except SyncError as exc:
        error(str(exc))
        return EXIT_FAILED
