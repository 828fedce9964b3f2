"""``meterd cluster status -c site.toml [--json]``: the collector nodes sharing the site's PostgreSQL.

Shows each node (alive or dead, when it last heartbeat, the channels it holds, the jobs it
leads), every lease (resource, holder, fencing token, when it expires) and who leads which
global job.  Ages and expiries are PostgreSQL's (the clock leases are judged by); times are
shown in the site's zone with its offset.
"""

from __future__ import annotations

import argparse
from datetime import datetime, tzinfo
from typing import Any

from meterd.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, error, print_json
from meterd.clock import CST, local_text
from meterd.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cluster", help="collector nodes: who holds which channel and leads which job")
    p.add_argument("action", choices=("status",))
    p.add_argument("-c", "--config", required=True, help="the site's TOML config ([store] database)")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.set_defaults(func=cluster_cmd)


def _local(at: datetime | None, zone: tzinfo) -> str | None:
    return None if at is None else local_text(at, zone)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _in(seconds: float | None) -> str:
    if seconds is None:
        return "never taken"
    if seconds <= 0:
        return f"expired {-seconds:.1f} s ago"
    return f"in {seconds:.1f} s"


def status_document(snapshot: Any, zone: tzinfo = CST) -> dict[str, Any]:
    """A :class:`~meterd.cluster.leases.Snapshot` as the JSON ``meterd cluster status --json`` prints
    (times in ``zone``, the site's, with the offset)."""
    from meterd.cluster.leases import CHANNEL, LEADER

    held: dict[str, list[str]] = {}
    leads: dict[str, list[str]] = {}
    leaders: dict[str, dict[str, Any]] = {}
    leases = []
    for lease in snapshot.leases:
        live = lease.held
        if live and lease.resource.startswith(CHANNEL):
            held.setdefault(lease.holder, []).append(lease.resource.removeprefix(CHANNEL))
        if lease.resource.startswith(LEADER):
            job = lease.resource.removeprefix(LEADER)
            leaders[job] = {"node": lease.holder if live else None, "token": lease.token,
                            "expires_in": None if not live else round(lease.remaining, 1)}
            if live:
                leads.setdefault(lease.holder, []).append(job)
        leases.append({"resource": lease.resource, "holder": lease.holder if live else None,
                       "last_holder": lease.holder, "token": lease.token,
                       "expires": _local(lease.expires, zone), "expires_in": None if lease.remaining is None
                       else round(lease.remaining, 1), "renewed": _local(lease.renewed, zone),
                       "acquired": _local(lease.acquired, zone)})
    nodes = [{"node": n.node, "state": "stopped" if n.stopped else "alive" if snapshot.alive(n) else "dead",
              "host": n.host, "pid": n.pid, "version": n.version, "started": _local(n.started, zone),
              "heartbeat": _local(n.heartbeat, zone), "heartbeat_age": round(n.age, 1),
              "channels": sorted(held.get(n.node, [])), "leads": sorted(leads.get(n.node, []))}
             for n in snapshot.nodes]
    unheld = sorted(lease.resource.removeprefix(CHANNEL) for lease in snapshot.leases
                    if lease.resource.startswith(CHANNEL) and not lease.held)
    return {"now": _local(snapshot.now, zone), "lease_time": snapshot.lease_time, "nodes": nodes, "leases": leases,
            "leaders": leaders, "channels_unheld": unheld}


def print_status(doc: dict[str, Any], where: str) -> None:
    alive = sum(1 for n in doc["nodes"] if n["state"] == "alive")
    print(f"cluster at {where}; PostgreSQL time {doc['now']}, lease time {doc['lease_time']:g} s")
    print(f"nodes: {len(doc['nodes'])}, {alive} alive")
    if doc["nodes"]:
        rows: list[tuple[str, ...]] = [("NODE", "STATE", "HOST", "PID", "HEARTBEAT", "CHANNELS", "LEADS")]
        rows += [(n["node"], n["state"], n["host"], str(n["pid"]), _ago(n["heartbeat_age"]),
                  str(len(n["channels"])), ", ".join(n["leads"]) or "-") for n in doc["nodes"]]
        _table(rows)
    print("leaders:")
    if not doc["leaders"]:
        print("  (no global jobs)")
    for job, lead in sorted(doc["leaders"].items()):
        who = lead["node"] or "nobody (free or expired)"
        extra = f" (token {lead['token']}, expires in {lead['expires_in']:.1f} s)" if lead["node"] else ""
        print(f"  {job}: {who}{extra}")
    print("leases:")
    if doc["leases"]:
        lines: list[tuple[str, ...]] = [("RESOURCE", "HOLDER", "TOKEN", "EXPIRES")]
        lines += [(x["resource"], x["holder"] or "-", str(x["token"]),
                  f"{_in(x['expires_in'])}" + (f" ({x['expires']})" if x["expires"] else ""))
                  for x in doc["leases"]]
        _table(lines)
    else:
        print("  (none yet: no node has joined)")
    if doc["channels_unheld"]:
        shown = ", ".join(doc["channels_unheld"][:10]) + (" ..." if len(doc["channels_unheld"]) > 10 else "")
        print(f"channels nobody polls now: {len(doc['channels_unheld'])} ({shown})")


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def cluster_cmd(args: argparse.Namespace) -> int:
    from meterd.cli.common import load_site_config
    from meterd.cluster.leases import LeaseBook, LeaseError, read_snapshot
    from meterd.config.cluster import DEFAULT_LEASE_TIME

    try:
        config = load_site_config(args.config)
    except ConfigError as exc:
        error(str(exc))
        return EXIT_BAD_INPUT
    db = config.store.database
    if db is None:
        error(f"{args.config}: the state is in SQLite ([store] database is not set): one node, no cluster")
        return EXIT_BAD_INPUT
    lease_time = config.cluster.lease_time if config.cluster is not None else DEFAULT_LEASE_TIME
    book = LeaseBook(db, "meterd-cluster-status", lease_time=lease_time)
    try:
        snapshot = read_snapshot(book, lease_time)
    except LeaseError as exc:
        error(str(exc))
        return EXIT_FAILED
    finally:
        book.close()
    doc = status_document(snapshot, config.site.zone)
    if args.json:
        print_json(doc)
    else:
        print_status(doc, str(db))
    return EXIT_OK
