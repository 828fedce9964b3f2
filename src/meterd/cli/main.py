"""``meterd`` entry point: parses the command line and dispatches to a subcommand module.

Conventions every subcommand shares:

- ``--log-level``, ``-v`` (DEBUG) and ``-q`` (WARNING; ``-qq`` ERROR) work before or after the
  subcommand (``meterd read -v ...`` as well as ``meterd -v read ...``); ``--log-level`` wins.
- ``METERD_CONFIG`` names the config file when ``-c`` is not given (``--data-dir`` still wins
  where a command takes it).
- Output piped into a reader that stops early (``| head``) ends quietly with status 141
  (128 + SIGPIPE, as the shell's own tools do), with no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from meterd import __version__
from meterd.errors import StorageFullError

CONFIG_ENV = "METERD_CONFIG"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
EXIT_PIPE = 141  # 128 + SIGPIPE


class MeterdParser(argparse.ArgumentParser):
    """An argument parser whose every subcommand also takes the logging options, so they work
    after the subcommand too.  Given there, they override the top level's (their defaults are
    suppressed); a subcommand's own option of the same name (``demo --quiet``) wins over ours."""

    def __init__(self, *args: Any, top: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("conflict_handler", "resolve")
        super().__init__(*args, **kwargs)
        default: Any = argparse.SUPPRESS
        group = self.add_argument_group("logging (before or after the subcommand)")
        group.add_argument("--log-level", type=str.upper, choices=LEVELS,
                           default="INFO" if top else default, help="log level (default INFO)")
        group.add_argument("-v", "--verbose", action="count", default=0 if top else default,
                           help="more log output (DEBUG)")
        group.add_argument("-q", "--quiet", action="count", default=0 if top else default,
                           help="less log output (WARNING; -qq: ERROR)")

    def add_argument(self, *names: Any, **kwargs: Any) -> argparse.Action:
        # ``-c`` may come from METERD_CONFIG: a command that requires it gets it from there
        if "--config" in names and kwargs.get("required") and os.environ.get(CONFIG_ENV):
            kwargs["required"] = False
        return super().add_argument(*names, **kwargs)


TIME_OPTIONS = ("--since", "--until")


def join_negative_times(argv: list[str]) -> list[str]:
    """``--since -2h`` -> ``--since=-2h``: argparse takes a value starting with ``-`` for an option
    and fails with "expected one argument"."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in TIME_OPTIONS and i + 1 < len(argv) and argv[i + 1][:1] == "-" and argv[i + 1][1:2].isdigit():
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def log_level(args: argparse.Namespace, argv: list[str]) -> int:
    """``--log-level`` if given anywhere, else ``-v`` / ``-q``, else INFO."""
    if any(a == "--log-level" or a.startswith("--log-level=") for a in argv):
        return int(getattr(logging, args.log_level))
    verbose, quiet = getattr(args, "verbose", 0) or 0, getattr(args, "quiet", 0)
    quiet = quiet if isinstance(quiet, int) and not isinstance(quiet, bool) else 0  # demo's own --quiet
    if verbose > quiet:
        return logging.DEBUG
    if quiet:
        return logging.WARNING if quiet == 1 else logging.ERROR
    return logging.INFO


def config_from_environment(args: argparse.Namespace) -> None:
    """Fill ``-c`` from METERD_CONFIG for a command that takes it and was given neither it nor
    ``--data-dir``."""
    env = os.environ.get(CONFIG_ENV)
    if env and "config" in args and args.config is None and not getattr(args, "data_dir", None):
        args.config = env


def _quiet_pipe() -> int:
    """The reader of our stdout went away: point stdout at /dev/null so the interpreter's final
    flush does not complain either, and end with SIGPIPE's status."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_PIPE


def build_parser() -> argparse.ArgumentParser:
    from meterd.cli import (
        alarms,
        analytics,
        backup,
        cluster,
        config_cmd,
        decode,
        demo,
        migrate,
        prepaid,
        probe,
        prune,
        quality,
        read,
        readings,
        report,
        run,
        simulate,
        sync,
        token,
    )

    parser = MeterdParser(prog="meterd", description="meter data acquisition master station", top=True,
                          epilog=f"{CONFIG_ENV}: the config file when -c is not given")
    parser.add_argument("--version", action="version", version=f"meterd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=MeterdParser)
    for module in (demo, run, migrate, read, probe, decode, readings, quality, simulate, prepaid, analytics, report, sync,
                   token, backup, prune, cluster, config_cmd, alarms):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = join_negative_times(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    config_from_environment(args)
    from meterd.cli.common import SiteTimeFormatter

    handler = logging.StreamHandler(sys.stderr)  # times in the site's zone with the offset
    handler.setFormatter(SiteTimeFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=log_level(args, argv), handlers=[handler])
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _quiet_pipe()
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
