"""``meterd prune -c site.toml [--dry-run] [--json]``: retention by hand.

Deletes the raw readings and collection attempts older than ``[store] keep_readings`` and
``keep_attempts`` -- what the daemon does by itself once a day (:mod:`meterd.storage.retention`) --
and prints how many rows of each went, before which instant (site time), and how long it took.
``--dry-run`` counts what would go and changes nothing.  Safe while the daemon runs: on SQLite the
rows go in short transactions with the database let go between them.

Exit 0 when done (also when nothing was due), 2 for a config or schema problem, 1 when the store
cannot be reached or the prune could not finish (a long query holding the PostgreSQL table).
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path

from meterd.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, error, print_json
from meterd.clock import local_text, utc_now
from meterd.errors import ConfigError, StorageError
from meterd.storage.sqlite import STATE_FILE


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="delete readings and attempts older than [store] keep_readings / keep_attempts")
    p.add_argument("-c", "--config", required=True, help="site config (its [store] names the store and the retention)")
    p.add_argument("--dry-run", action="store_true", help="count what would be deleted; change nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meterd.cli.common import load_site_config
    from meterd.cli.migrate import probe, unreachable
    from meterd.storage import open_store
    from meterd.storage.retention import Policy, prune

    try:
        config = load_site_config(args.config)
    except ConfigError as exc:
        error(str(exc))
        return EXIT_BAD_INPUT
    store_config = config.store
    where = store_config.state
    if isinstance(where, Path) and not (where / STATE_FILE).exists():
        error(f"no store in {where} (the data directory of {args.config}): nothing to prune")
        return EXIT_BAD_INPUT
    policy = Policy.from_seconds(store_config.keep_readings, store_config.keep_attempts, store_config.prune_at,
                                 config.site.zone)
    now = utc_now()
    try:
        probe(where)
        with open_store(where) as store:
            report = prune(store, policy, now, dry_run=args.dry_run)
    except ConfigError as exc:  # a store written by a later meterd
        error(str(exc))
        return EXIT_BAD_INPUT
    except StorageError as exc:
        error(str(exc))
        return EXIT_FAILED
    except Exception as exc:
        if not unreachable(where, exc):
            raise
        error(f"cannot reach the database {where}: {exc}")
        return EXIT_FAILED
    if args.json:
        print_json({"location": str(where), "policy": {
            "keep_readings_days": _days(policy.keep_readings), "keep_attempts_days": _days(policy.keep_attempts)},
            **report.as_dict()})
        return EXIT_OK
    verb = "would delete" if report.dry_run else "deleted"
    for name, pruned, before, keep in (("readings", report.readings, report.readings_before, policy.keep_readings),
                                       ("attempts", report.attempts, report.attempts_before, policy.keep_attempts)):
        if pruned is None or before is None or keep is None:
            print(f"{name}: kept for ever ([store] keep_{name} = \"forever\"): nothing to delete")
            continue
        note = "; the newest of each meter and quantity stays" if name == "readings" else ""
        print(f"{name}: {pruned.rows:,} {verb} (older than {keep / timedelta(days=1):g} days: before "
              f"{local_text(before, policy.zone, timespec='minutes')}{note})")
    if report.dry_run:
        print(f"dry run: nothing was changed ({report.seconds:.1f} s)")
    else:
        print(f"took {report.seconds:.1f} s, longest transaction {report.longest * 1000:.0f} ms")
    return EXIT_OK


def _days(keep: timedelta | None) -> float | None:
    return None if keep is None else keep / timedelta(days=1)
