"""``meterd run -c CONFIG``: the daemon."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from meterd.cli.common import EXIT_BAD_INPUT, EXIT_OK, error
from meterd.collector.daemon import Daemon
from meterd.config.loader import load_config
from meterd.errors import ConfigError
from meterd.storage.sqlite import SqliteStore

log = logging.getLogger("meterd")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the daemon")
    p.add_argument("-c", "--config", required=True, help="TOML config file")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.set_defaults(func=run)


async def run_daemon(daemon: Daemon, duration: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    await daemon.run(stop)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        error(f"{exc}\nnothing was started")
        return EXIT_BAD_INPUT
    with SqliteStore(config.store.data_dir) as store:
        try:
            daemon = Daemon(config, store)
        except ConfigError as exc:  # a secret the config names is not in the environment
            error(f"{exc}\nnothing was started")
            return EXIT_BAD_INPUT
        asyncio.run(run_daemon(daemon, args.duration))
        log.info("stopped; channel statistics: %s", daemon.stats())
    return EXIT_OK
