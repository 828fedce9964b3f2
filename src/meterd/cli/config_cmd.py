"""``meterd config check -c site.toml [--json] [--no-secrets]`` and ``meterd config reference``.

``check`` validates a site config without starting anything -- no port, socket or database is
opened and nothing is written -- and prints what the daemon would do with it: the compiled poll
plan (every channel, its polls, their meters and what each meter is asked for, in its protocol;
the same lines ``meterd run`` logs at start), the scheduled tasks and their meters, and a count of
the rest.  It also checks that the secrets the daemon needs at start are set (the
``*_env`` variables, in the environment or the ``secrets_file``); ``--no-secrets`` leaves that out,
for a config checked on another machine than the daemon's.

Exit 0 when the config is valid, 2 with every problem listed (on stderr; in the JSON document with
``--json``).  ``reference`` prints docs/config.md, the reference of every key, rendered from
:mod:`meterd.config.keys`.

(The module is not called ``config``: ``meterd.cli.config`` beside the package ``meterd.config``
would only confuse a reader.)
"""

from __future__ import annotations

import argparse
from typing import Any

from meterd.cli.common import EXIT_BAD_INPUT, EXIT_OK, error, print_json
from meterd.config.model import Config, DtuLink, GdwLink, MqttLink, SerialLink
from meterd.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="check a site config and print its plan; the reference of every key")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=type(p))
    c = actions.add_parser("check", help="validate a config without starting anything; print the compiled plan")
    c.add_argument("-c", "--config", required=True, help="TOML config file")
    c.add_argument("--json", action="store_true", help="the result as one JSON document")
    c.add_argument("--no-secrets", action="store_true",
                   help="do not check that the secrets the config names are set (checking it on another machine)")
    c.set_defaults(func=check)
    r = actions.add_parser("reference", help="print the reference of every config key (docs/config.md)")
    r.set_defaults(func=reference)


def reference(args: argparse.Namespace) -> int:
    from meterd.config.reference import render

    print(render(), end="")
    return EXIT_OK


def check(args: argparse.Namespace) -> int:
    from meterd.collector.daemon import compile_plan
    from meterd.config.loader import load_config

    try:
        config = load_config(args.config)
        plan = compile_plan(config)
        if not args.no_secrets:
            missing_secrets(config)
    except ConfigError as exc:
        if args.json:
            print_json({"config": str(args.config), "valid": False, "errors": exc.problems})
        else:
            error(str(exc))
        return EXIT_BAD_INPUT
    if args.json:
        print_json({"config": str(args.config), "valid": True, "errors": [], "summary": summary(config),
                    "channels": [_channel_doc(p) for p in plan], "tasks": _tasks(config)})
        return EXIT_OK
    from meterd.collector.daemon import describe_plan

    counts = ", ".join(f"{what.replace('_', ' ')}: {n}" for what, n in summary(config).items())
    print(f"{args.config}: valid ({counts})")
    print("plan:")
    for line in describe_plan(plan):
        print(f"  {line}")
    tasks = _tasks(config)
    if tasks:
        print("tasks:")
        for t in tasks:
            print(f"  task {t['name']} ({t['kind']}, {t['schedule']}, groups {', '.join(t['groups']) or 'all'}): "
                  f"{len(t['meters'])} meter(s) on {', '.join(t['channels']) or 'no channel'}")
    if args.no_secrets:
        print("secrets: not checked (--no-secrets)")
    return EXIT_OK


def missing_secrets(config: Config) -> None:
    """ConfigError listing the secrets the daemon needs at start that are not set: the InfluxDB
    token, the MQTT password, the billing jobs' tokens, the DL/T 645 relay credentials (a site with
    DL/T 645 meters and prepaid control that is not a dry run).  The database password is checked by
    the loader already."""
    from meterd import secrets
    from meterd.protocols.drivers import get_driver

    problems: list[str] = []
    wanted = []
    if config.store.influxdb is not None:
        wanted.append(("store.influxdb.token_env", config.store.influxdb.token_env))
    if config.mqtt is not None and config.mqtt.password_env:
        wanted.append(("mqtt.password_env", config.mqtt.password_env))
    if config.sync is not None:
        wanted += [(f"sync job {job.name}: token_env", job.token_env) for job in config.sync.jobs if job.token_env]
    wanted += [(f"channels.{c.name}.gdw1376.password_secret", c.link.password_secret) for c in config.channels
               if isinstance(c.link, GdwLink) and c.link.password_secret]  # 1376.1 terminals' PW
    for key, env in wanted:
        if not secrets.lookup(env):
            problems.append(f"{key}: {secrets.where(env)} is not set (the daemon does not start without it)")
    prepaid = config.prepaid
    if prepaid is not None and not prepaid.settings.rules.dry_run \
            and any(get_driver(m.protocol).credentials for m in config.meters):
        from meterd.control.runtime import credentials_from_env

        try:
            credentials_from_env(prepaid, required=True)
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError([f"{config.source}: {p}" for p in problems])


def summary(config: Config) -> dict[str, int]:
    """How much of each thing the config holds (what is not there is left out)."""
    counts = {"channels": len(config.channels), "meters": len(config.meters), "polls": len(config.polls),
              "tasks": len(config.tasks), "listeners": len(config.listeners)}
    if config.prepaid is not None:
        counts["tariffs"] = len(config.prepaid.tariffs)
        counts["accounts"] = len(config.prepaid.accounts)
    if config.analytics is not None:
        counts["topology_units"] = len(config.analytics.topology.units)
    if config.sync is not None:
        counts["sync_jobs"] = len(config.sync.jobs)
    return {what: n for what, n in counts.items() if n or what in ("channels", "meters", "polls")}


def _link(plan: Any) -> str:
    link = plan.channel.link
    if isinstance(link, SerialLink):
        return f"serial {link.device} {link.baud} {link.bytesize}{link.parity}{link.stopbits}"
    if isinstance(link, DtuLink):
        return f"dtu {link.terminal} via listener {link.listener}"
    if isinstance(link, MqttLink):
        return f"mqtt terminal {link.terminal}"
    if isinstance(link, GdwLink):
        return f"gdw1376 {link.kind} {link.terminal} via listener {link.listener}"
    return f"tcp {link.host}:{link.port}"


def _channel_doc(plan: Any) -> dict[str, Any]:
    return {"name": plan.channel.name, "link": _link(plan), "polls": [{
        "name": p.poll.name, "interval_s": p.poll.interval, "groups": list(p.poll.groups),
        "listed_meters": list(p.poll.meters),
        "meters": [{"address": t.address, "protocol": t.protocol, "unit": t.unit,
                    "reads": t.driver.item_labels(reads)} for t, reads in p.meters],
    } for p in plan.polls]}


def _tasks(config: Config) -> list[dict[str, Any]]:
    out = []
    for t in config.tasks:
        meters = [m for m in config.meters if t.covers(m)]
        out.append({"name": t.name, "kind": str(t.kind), "schedule": t.period, "groups": list(t.groups),
                    "meters": [m.address for m in meters],
                    "channels": list(dict.fromkeys(m.channel for m in meters))})
    return out
