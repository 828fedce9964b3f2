"""``meterd backup`` and ``meterd restore``: the system of record copied out, and put back.

``meterd backup -c site.toml --to DIR`` copies the store the config names -- the SQLite files of
the data directory, online and consistent, or a ``pg_dump`` of the PostgreSQL database -- into a
new directory with a checksummed manifest.  The daemon may go on running.

``meterd restore -c site.toml --from DIR`` checks the manifest and puts the copy back; stop the
daemon (every node) first.  An SQLite data directory that already holds a state database is
replaced only with ``--force``.
"""

from __future__ import annotations

import argparse
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from meterd.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, error, print_json, site_zone
from meterd.clock import local_text, utc_now
from meterd.errors import ConfigError
from meterd.storage.backup import BackupError, backup, restore
from meterd.storage.database import Location


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backup", help="copy the store (SQLite files online, or pg_dump) into a new directory")
    _where(p)
    p.add_argument("--to", required=True, help="the backup directory (new, or empty)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=run_backup)
    p = sub.add_parser("restore", help="put a backup back (stop the daemon first)")
    _where(p)
    p.add_argument("--from", dest="source", required=True, help="the backup directory")
    p.add_argument("--force", action="store_true", help="replace an existing SQLite state database")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=run_restore)


def _where(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("-c", "--config", help="site config (its [store] names the store)")
    where.add_argument("--data-dir", help="an SQLite data directory")


def _location(args: argparse.Namespace, *, record: bool = True) -> tuple[Location, Any]:
    """The store and the config (None for a bare data directory); ``record``: the config's zone
    recorded in the store (not before a restore replaces it)."""
    if args.config:
        from meterd.cli.common import load_site_config

        config = load_site_config(args.config, record=record)
        return config.store.state, config
    return Path(args.data_dir), None


def _shown(created: object, zone: tzinfo) -> str:
    """The manifest's creation time in site time (as written if it is no aware ISO time)."""
    try:
        at = datetime.fromisoformat(str(created))
    except ValueError:
        return str(created)
    return local_text(at, zone) if at.tzinfo is not None else str(created)


def run_backup(args: argparse.Namespace) -> int:
    try:
        where, config = _location(args)
        files = backup(where, Path(args.to), now=utc_now().astimezone(site_zone(config, where)))
    except ConfigError as exc:
        error(str(exc))
        return EXIT_BAD_INPUT
    except BackupError as exc:
        error(str(exc))
        return EXIT_FAILED
    if args.json:
        print_json({"backup": str(args.to), "files": [{"file": f.file, "bytes": f.bytes, "sha256": f.sha256}
                                                     for f in files]})
    else:
        for f in files:
            print(f"{f.file}  {f.bytes:,} bytes  sha256 {f.sha256[:16]}…")
        print(f"backed up to {args.to}")
    return EXIT_OK


def run_restore(args: argparse.Namespace) -> int:
    try:
        where, config = _location(args, record=False)
        manifest = restore(Path(args.source), where, force=args.force)
    except ConfigError as exc:
        error(str(exc))
        return EXIT_BAD_INPUT
    except BackupError as exc:
        error(str(exc))
        return EXIT_FAILED
    if args.json:
        print_json(manifest)
    else:  # a bare data directory: the zone the restored state database records
        print(f"restored the backup of {_shown(manifest.get('created'), site_zone(config, where))} ({manifest.get('backend')}) from "
              f"{args.source}")
    return EXIT_OK
