"""Alarms to work from the command line (docs/alarms.md).

``meterd alarms [--state open|acknowledged|closed|active|all] [--kind K] [--subject S] [--limit N] [--json]``
lists them, newest first (default: ``active``, the open and acknowledged ones), after syncing the
list with its sources -- anomaly events, commands, outages and, with ``-c``, the terminals (the
spool is only watched by the running daemon).  ``meterd alarms ack ID``, ``meterd alarms assign ID
--to NAME`` and ``meterd alarms close ID --comment …`` are the operator's steps, each with
``--operator`` (who), audited like the API's.

Exit codes: 0 done; 2 bad input or refused (unknown alarm, a step the alarm's state does not
allow, a comment missing or too long), nothing written.  Times print in the site's zone with the
offset; ``--json`` keeps ISO 8601 and the API's alarm documents.
"""

from __future__ import annotations

import argparse
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meterd.cli.common import EXIT_BAD_INPUT, EXIT_OK, MAX_ID, error, name_arg, print_json, site_zone, whole_number
from meterd.clock import local_text
from meterd.errors import ConfigError

DEFAULT_DATA_DIR = Path("meterd-data")
STATES = ("active", "open", "acknowledged", "closed", "all")
STEPS = {"ack": "acknowledged", "assign": "assigned", "close": "closed"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    from meterd.storage.alarms import AlarmKind

    p = sub.add_parser("alarms", help="the alarm list to work: list, ack, assign, close (audited)",
                       description="One alarm list: anomalies, failed and stuck-relay commands, outages, terminals "
                                   "offline, a growing spool.  Without an action it lists them (synced with their "
                                   "sources first); ack / assign / close are the operator's steps.")
    p.add_argument("action", nargs="?", choices=("list", *STEPS), default="list")
    p.add_argument("id", nargs="?", type=whole_number(1, MAX_ID), help="the alarm (ack, assign, close)")
    p.add_argument("--state", choices=STATES, default="active",
                   help="list: which alarms (default active: open and acknowledged)")
    p.add_argument("--kind", choices=[k.value for k in AlarmKind], help="list: only this kind")
    p.add_argument("--subject", type=name_arg, help="list: only this subject (a meter address, area, terminal id)")
    p.add_argument("--limit", type=whole_number(1, 10_000), default=100, help="list: at most this many (default 100)")
    p.add_argument("--no-sync", action="store_true", help="list: show the store as it is, without syncing it first")
    p.add_argument("--operator", help="ack, assign, close: who does it (audited)")
    p.add_argument("--to", help="assign: to whom")
    p.add_argument("--comment", help="the step's comment (close: required)")
    p.add_argument("--json", action="store_true")
    where = p.add_mutually_exclusive_group()
    where.add_argument("-c", "--config", help="config file (its state database; its terminals are judged)")
    where.add_argument("--data-dir", help=f"data directory (default ./{DEFAULT_DATA_DIR})")
    p.set_defaults(func=alarms_cmd)


def _context(args: argparse.Namespace) -> tuple[Any, Any]:
    if args.config:
        from meterd.cli.common import load_site_config

        config = load_site_config(args.config)
        return config.store.state, config
    where = Path(args.data_dir) if args.data_dir else DEFAULT_DATA_DIR
    if not where.exists():
        raise ConfigError(f"data directory {where} does not exist (use -c site.toml or --data-dir)")
    return where, None


def _text(a: Any, zone: Any) -> str:
    lines = [f"#{a.id} {a.severity.value.upper():<8} {a.state.value:<12} {a.kind.value:<16} {a.subject}"
             + (f"  -> {a.assignee}" if a.assignee else ""),
             f"    {a.title}", f"    raised {local_text(a.raised_at, zone)}"]
    for step in a.history[1:]:
        note = f": {step.comment}" if step.comment else ""
        lines.append(textwrap.shorten(f"    {local_text(step.at, zone)} {step.action.value} by {step.by}{note}",
                                      160, placeholder=" ..."))
    return "\n".join(lines)


def alarms_cmd(args: argparse.Namespace) -> int:
    from meterd.storage.alarms import AlarmError, alarm_doc

    try:
        where, config = _context(args)
        if args.action == "list":
            return _list(args, where, config)
        if args.id is None:
            raise ConfigError(f"meterd alarms {args.action}: which alarm? (meterd alarms {args.action} ID)")
        if not args.operator or not args.operator.strip():
            raise ConfigError(f"meterd alarms {args.action}: --operator is required (who does it)")
        from meterd.control.state import ControlStore
        from meterd.storage.alarms import AlarmStore

        with ControlStore(where), AlarmStore(where) as store:  # ControlStore: the audit table is the prepaid one
            alarm = store.act(args.id, STEPS[args.action], actor=args.operator, now=datetime.now(UTC),
                              comment=args.comment, to=args.to, audit={"via": "cli"})
    except (ConfigError, AlarmError) as exc:
        error(str(exc))
        return EXIT_BAD_INPUT
    if args.json:
        print_json(alarm_doc(alarm))
    else:
        print(_text(alarm, site_zone(config, where)))
    return EXIT_OK


def _list(args: argparse.Namespace, where: Any, config: Any) -> int:
    from meterd.analytics.anomalies import AnomalyStore
    from meterd.analytics.outages import OutageStore
    from meterd.api.alarms import AlarmWatch, terminal_list, terminal_offline_since
    from meterd.control.state import ControlStore
    from meterd.storage.alarms import AlarmState, alarm_doc
    from meterd.storage.quality import QualityStore

    if not 1 <= args.limit <= 10_000:
        raise ConfigError(f"--limit {args.limit}: from 1 to 10000")
    now = datetime.now(UTC)
    with ControlStore(where) as control, AnomalyStore(where) as anomalies, OutageStore(where) as outages, \
            QualityStore(where) as quality:
        watch = AlarmWatch(where, control=control, anomalies=anomalies, outages=outages,
                           terminals=(lambda: terminal_list(config, quality)) if config is not None else None,
                           offline=lambda: terminal_offline_since(quality))
        try:
            if not args.no_sync:
                watch.refresh(now, force=True)
            states: tuple[AlarmState | None, ...] = (
                (AlarmState.OPEN, AlarmState.ACKNOWLEDGED) if args.state == "active"
                else (None,) if args.state == "all" else (AlarmState(args.state),))
            found = []
            for state in states:
                found += watch.store.alarms(state=state, kind=args.kind, subject=args.subject, limit=args.limit)[0]
            found = sorted(found, key=lambda a: a.id, reverse=True)[:args.limit]
            counts = watch.store.counts(kind=args.kind, subject=args.subject)
        finally:
            watch.close()
    if args.json:
        print_json({"alarms": [alarm_doc(a) for a in found], "counts": counts})
        return EXIT_OK
    zone = site_zone(config, where)
    for a in found:
        print(_text(a, zone))
    print(f"{counts['open']} open, {counts['acknowledged']} acknowledged, {counts['closed']} closed")
    return EXIT_OK
