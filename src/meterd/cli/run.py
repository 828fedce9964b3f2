"""``meterd run -c CONFIG``: the daemon.

This command owns the process: it builds the node through :func:`meterd.app.build_node`, owns the
signals, and sets the process's garbage-collector policy once start-up is built
(:func:`meterd.heap.settle_heap`).  When the daemon stops it prints a summary on stdout: how long
it ran and each channel's figures (rounds, attempts, successes, retries, failures by kind, reply
latency, overruns) as a table, or as one JSON document with ``--json``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import signal
from datetime import datetime, tzinfo
from typing import Any

from meterd import logthrottle
from meterd.app import Node, build_node
from meterd.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, error, load_site_config, print_json
from meterd.cli.migrate import migrate, probe, unreachable
from meterd.clock import CST, local_text, utc_now
from meterd.cluster.leases import LeaseError
from meterd.collector.transports.serial import descriptor_shortfall
from meterd.config.model import SerialLink
from meterd.errors import ConfigError
from meterd.heap import settle_heap
from meterd.storage import open_store

log = logging.getLogger("meterd")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the daemon")
    p.add_argument("-c", "--config", required=True, help="TOML config file")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--json", action="store_true", help="the summary printed at stop as JSON")
    p.set_defaults(func=run)


def raise_nofile_limit() -> tuple[int, int]:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; the (soft, hard) in force.

    Every DTU, API client, serial port and store file is a file descriptor, and the soft limit a
    login or container hands a process is often 1,024 while the hard limit allows far more (the
    systemd unit sets both with ``LimitNOFILE``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # RLIM_INFINITY refused by the kernel's nr_open
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return soft, hard


async def flush_log_throttle(stop: asyncio.Event, every: float = 5.0) -> None:
    """Report the counts of throttled log lines whose interval is over (see meterd.logthrottle)."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every)
        except TimeoutError:
            pass
        logthrottle.flush_all()


async def run_daemon(node: Node, duration: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    # asyncio logs 'socket.accept() out of system resource' with a traceback for every connection
    # waiting in a listener's backlog (up to 2,048 a second for the API) when file descriptors run out
    logthrottle.install("asyncio")
    flusher = asyncio.create_task(flush_log_throttle(stop), name="log-throttle")
    settle_heap()  # start-up's objects live as long as the daemon: out of the collector's way
    try:
        await node.run(stop)
    finally:
        stop.set()
        await flusher


def summary(config_path: str, started: datetime, stopped: datetime,
            channels: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What ``meterd run`` prints at stop: when it ran and each channel's statistics."""
    return {"config": config_path, "started": started.isoformat(), "stopped": stopped.isoformat(),
            "seconds": round((stopped - started).total_seconds(), 3), "channels": channels}


def _duration_text(seconds: float) -> str:
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{seconds:.1f} s"


def summary_lines(doc: dict[str, Any], zone: tzinfo = CST) -> list[str]:
    """:func:`summary` as text: a line on the run (its start in ``zone``, the site's, with the
    offset), then one line per channel."""
    started = local_text(datetime.fromisoformat(doc["started"]), zone)
    lines = [f"meterd stopped after {_duration_text(doc['seconds'])} (started {started})"]
    if not doc["channels"]:
        return [*lines, "no channels"]
    width = max(7, *(len(name) for name in doc["channels"]))
    lines.append(f"{'CHANNEL':<{width}} {'ROUNDS':>7} {'ATTEMPTS':>9} {'OK':>9} {'RETRIES':>8} {'OVERRUNS':>9} "
                 f"{'LATENCY ms mean/max':>20}  FAILURES")
    for name, c in doc["channels"].items():
        failures = ", ".join(f"{kind} {n}" for kind, n in c.get("failures", {}).items()) or "none"
        latency = f"{c.get('latency_mean_ms', 0):.1f} / {c.get('latency_max_ms', 0):.1f}"
        lines.append(f"{name:<{width}} {c.get('rounds', 0):>7} {c.get('attempts', 0):>9} {c.get('successes', 0):>9} "
                     f"{c.get('retries', 0):>8} {c.get('overruns', 0):>9} {latency:>20}  {failures}")
    return lines


def run(args: argparse.Namespace) -> int:
    try:
        config = load_site_config(args.config, record=False)  # recorded by the node, after migrate
    except ConfigError as exc:
        error(f"{exc}\nnothing was started")
        return EXIT_BAD_INPUT
    soft, hard = raise_nofile_limit()
    log.info("open-file limit %s (hard %s)", soft, hard)
    ports = sum(isinstance(c.link, SerialLink) for c in config.channels)
    if (shortfall := descriptor_shortfall(ports, soft, hard)) is not None:
        log.error("%s", shortfall)
    try:
        # every store's tables brought to this meterd's schema, as meterd migrate does; a database
        # written by a later meterd stops start-up here, before anything is written
        probe(config.store.state)
        migrate(config.store.state)  # each store logs its tables' creation or migration as it is opened
        store = open_store(config.store.state, clock=utc_now)
    except ConfigError as exc:
        error(f"{exc}\nnothing was started")
        return EXIT_BAD_INPUT
    except Exception as exc:
        if not unreachable(config.store.state, exc):
            raise
        error(f"cannot reach the database {config.store.state}: {exc}\nnothing was started")
        return EXIT_FAILED
    with store:
        try:
            node = build_node(config, store)
        except ConfigError as exc:  # a secret the config names is not in the environment
            error(f"{exc}\nnothing was started")
            return EXIT_BAD_INPUT
        started = utc_now()
        try:
            asyncio.run(run_daemon(node, args.duration))
        except LeaseError as exc:  # this node could not join the cluster or keep its leases
            error(f"cluster: {exc}")
            return EXIT_FAILED
        log.info("stopped")
        doc = summary(args.config, started, utc_now(), node.stats())
    if args.json:
        print_json(doc)
    else:
        print("\n".join(summary_lines(doc, config.site.zone)), flush=True)
    return EXIT_OK
