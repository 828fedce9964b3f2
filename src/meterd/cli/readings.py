"""``meterd readings``: what the store holds for a meter."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, tzinfo
from pathlib import Path

from meterd.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    MAX_COUNT,
    error,
    format_value,
    load_site_config,
    name_arg,
    parse_time,
    print_json,
    reading_dict,
    site_zone,
    whole_number,
)
from meterd.clock import local_text
from meterd.errors import ConfigError, ProtocolError
from meterd.protocols.dlt645.frame import normalize_address
from meterd.storage import open_store
from meterd.storage.database import Location
from meterd.storage.sqlite import READINGS_FILE

DEFAULT_DATA_DIR = Path("meterd-data")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("readings", help="show stored readings of a meter")
    p.add_argument("--meter", required=True, type=name_arg, help="meter address")
    p.add_argument("--since", help="start: 2h or -2h (ago), today, yesterday, 2026-11-23, 2026-11-23T10:00 (site time)")
    p.add_argument("--until", help="end: the same forms as --since")
    p.add_argument("--quantity", help="only this quantity, e.g. energy.active.import.total")
    p.add_argument("--limit", type=whole_number(1, MAX_COUNT), default=None)
    where = p.add_mutually_exclusive_group()
    where.add_argument("-c", "--config", help="config file (its store's data directory is used)")
    where.add_argument("--data-dir", help=f"data directory (default ./{DEFAULT_DATA_DIR})")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def resolve_location(args: argparse.Namespace) -> tuple[Location, tzinfo]:
    """The store ``-c`` names (its data directory, or its PostgreSQL database) and the site's zone,
    else ``--data-dir`` and the zone its state database records (the default when it records none)."""
    if getattr(args, "config", None):
        config = load_site_config(args.config)
        return config.store.state, site_zone(config)
    where = Path(args.data_dir) if getattr(args, "data_dir", None) else DEFAULT_DATA_DIR
    return where, site_zone(None, where)


def run(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    try:
        meter = normalize_address(args.meter)
        where, zone = resolve_location(args)
        since = parse_time(args.since, now, zone) if args.since else None
        until = parse_time(args.until, now, zone) if args.until else None
    except (ProtocolError, ValueError, ConfigError) as exc:
        error(str(exc))
        return EXIT_BAD_INPUT
    if isinstance(where, Path) and not (where / READINGS_FILE).exists():
        error(f"no readings store in {where} (run the daemon or the demo first, or pass --data-dir)")
        return EXIT_BAD_INPUT
    with open_store(where) as store:
        rows = store.readings(meter, since=since, until=until, quantity=args.quantity, limit=args.limit)
    if args.json:
        print_json([reading_dict(r) for r in rows])
        return EXIT_OK
    if not rows:
        print(f"no readings for meter {meter}")
    for r in rows:
        print(f"{local_text(r.timestamp, zone)}  {r.quantity:<40} {format_value(r.value, zone)} {r.unit}".rstrip())
    return EXIT_OK
