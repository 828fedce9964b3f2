"""``meterd`` entry point: parses the command line and dispatches to a subcommand module."""

from __future__ import annotations

import argparse
import logging
import sys

from meterd import __version__
from meterd.errors import StorageFullError


def build_parser() -> argparse.ArgumentParser:
    from meterd.cli import (
        analytics,
        backup,
        cluster,
        decode,
        demo,
        migrate,
        prepaid,
        probe,
        quality,
        read,
        readings,
        run,
        simulate,
        sync,
        token,
    )

    parser = argparse.ArgumentParser(prog="meterd", description="meter data acquisition master station")
    parser.add_argument("--version", action="version", version=f"meterd {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (demo, run, migrate, read, probe, decode, readings, quality, simulate, prepaid, analytics, sync, token,
                   backup, cluster):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from meterd.cli.common import EXIT_FAILED, error
        from meterd.storage.statedb import disk_full

        if not disk_full(exc):
            raise
        # one line, no traceback; the transaction was rolled back whole, nothing is half-written
        error(str(exc) if isinstance(exc, StorageFullError) else f"cannot write: disk full ({exc})")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
