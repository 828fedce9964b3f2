"""``meterd migrate -c site.toml``: bring every store's tables to this meterd's schema, and say so.

Opening a store applies its versioned migrations (:class:`~meterd.storage.statedb.StateDatabase`
and the readings/archive store keep their versions in ``schema_versions``), so ``meterd run``
migrates at start by opening its stores.  This command does the same without starting anything:
it opens every store on the configured location -- the SQLite files of the data directory, or the
PostgreSQL database of ``[store] database`` -- and prints each versioned store's schema version
before and after.  Run it once before starting the nodes of a site on a new meterd: the first
node then finds nothing left to do.

A database newer than this meterd (written by a later version) is refused before anything is
written: exit 2 with the store and both versions, as ``meterd run`` would.  A database that cannot
be reached is exit 1.
"""

from __future__ import annotations

import argparse
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meterd.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, error, print_json
from meterd.errors import ConfigError
from meterd.storage.database import Location, as_database
from meterd.storage.sqlite import READINGS_FILE, STATE_FILE


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("migrate", help="bring every store's tables to this meterd's schema (before starting nodes)")
    p.add_argument("-c", "--config", required=True, help="site config (its [store] names the location)")
    p.add_argument("--json", action="store_true", help="print the versions as JSON")
    p.set_defaults(func=migrate_cmd)


Opener = Callable[[Location], Any]  # opens a store (which migrates it); the result has close()


def stores(where: Location | None = None) -> list[tuple[str, Opener]]:
    """Every store a node opens at ``where``: (name, opener).  The readings/archive store comes
    first (it checks its own versions when opened: if it refuses, nothing else is touched); on
    PostgreSQL the collector nodes' lease table last."""
    from meterd.analytics.energy import DailyRegisterStore, LossHistory
    from meterd.analytics.outages import OutageStore
    from meterd.api.tokens import TokenStore
    from meterd.billing_link.store import SyncStore
    from meterd.control.state import ControlStore
    from meterd.storage import open_store
    from meterd.storage.alarms import AlarmStore
    from meterd.storage.anomalies import AnomalyStore
    from meterd.storage.quality import QualityStore
    from meterd.storage.site import SiteSettings

    return [("readings and archive", open_store), ("control", ControlStore), ("quality", QualityStore),
            ("anomalies", AnomalyStore), ("daily registers", DailyRegisterStore), ("line-loss history", LossHistory),
            ("outages", OutageStore), ("sync", SyncStore), ("tokens", TokenStore), ("alarms", AlarmStore),
            ("site settings", SiteSettings), *([("cluster leases", _lease_tables)] if as_database(where) is not None else [])]


class _Closed:
    def close(self) -> None:
        pass


def _lease_tables(where: Location) -> _Closed:
    """The collector nodes' lease and node tables (:mod:`meterd.cluster.leases`), made or migrated."""
    from meterd.cluster.leases import LeaseBook

    db = as_database(where)
    assert db is not None
    book = LeaseBook(db, "meterd-migrate", lease_time=30.0)
    try:
        book.migrate()
    finally:
        book.close()
    return _Closed()


def known_versions(where: Location | None = None) -> dict[str, int]:
    """The schema version this meterd brings each versioned state store to (``STORE`` -> latest),
    on the backend of ``where`` (the readings/archive store's steps are the backend's own)."""
    from meterd.cluster import forward, leases
    from meterd.storage import postgres, sqlite
    from meterd.storage.statedb import StateDatabase

    out: dict[str, int] = {leases.STORE: len(leases.MIGRATIONS), forward.STORE: len(forward.MIGRATIONS)}
    if as_database(where) is not None:
        out.update(readings=len(postgres._READINGS_MIGRATIONS), archive=len(postgres._ARCHIVE_MIGRATIONS))
    else:
        out.update(readings=len(sqlite.READINGS_MIGRATIONS), archive=len(sqlite.ARCHIVE_MIGRATIONS))
    pending: list[type[StateDatabase]] = [StateDatabase]
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        if cls.STORE and cls.MIGRATIONS:
            out[cls.STORE] = len(cls.MIGRATIONS)
    return out


def schema_versions(where: Location) -> dict[str, int]:
    """``schema_versions`` as it is at ``where`` now (store -> version), read without writing:
    empty for a database or data directory that has none yet."""
    db = as_database(where)
    if db is not None:
        conn = db.connect()
        try:
            if not conn.table_exists("schema_versions"):
                return {}
            return {str(r[0]): int(r[1]) for r in conn.execute("SELECT store, version FROM schema_versions")}
        finally:
            conn.close()
    out: dict[str, int] = {}
    assert isinstance(where, (str, Path))
    for name in (STATE_FILE, READINGS_FILE):
        path = Path(where) / name
        if not path.exists():
            continue
        conn_ = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
        try:
            if conn_.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_versions'"
                             ).fetchone() is None:
                continue
            out.update({str(s): int(v) for s, v in conn_.execute("SELECT store, version FROM schema_versions")})
        finally:
            conn_.close()
    return out


def migrate(where: Location, openers: list[tuple[str, Opener]] | None = None) -> dict[str, Any]:
    """Open every store at ``where`` (migrating it); what was there before and after.  Raises
    :class:`NewerSchemaError` for a state store newer than this meterd, before writing anything."""
    openers = stores(where) if openers is None else openers
    before = schema_versions(where)
    newer = [f"state database {where}: the {name} tables are at schema version {before[name]}, newer than this "
             f"meterd knows ({latest}): upgrade meterd" for name, latest in sorted(known_versions(where).items())
             if before.get(name, 0) > latest]
    if newer:
        raise NewerSchemaError(newer)
    opened = []
    for name, opener in openers:
        opener(where).close()
        opened.append(name)
    after = schema_versions(where)
    versions = [{"store": name, "before": before.get(name, 0), "after": after.get(name, 0)}
                for name in sorted(set(before) | set(after))]
    return {"location": str(where), "backend": "postgresql" if as_database(where) is not None else "sqlite",
            "versions": versions, "migrated": any(v["before"] != v["after"] for v in versions), "opened": opened}


class NewerSchemaError(ConfigError):
    """The database was written by a later meterd; nothing was migrated."""


def migrate_cmd(args: argparse.Namespace) -> int:
    from meterd.cli.common import load_site_config, record_site_zone
    from meterd.clock import utc_now

    try:
        config = load_site_config(args.config, record=False)  # recorded below, once the tables are checked
        where = config.store.state
    except ConfigError as exc:
        error(str(exc))
        return EXIT_BAD_INPUT
    try:
        probe(where)
        result = migrate(where)
        record_site_zone(config, utc_now())
    except NewerSchemaError as exc:
        error(f"{exc}\nnothing was migrated")
        return EXIT_BAD_INPUT
    except ConfigError as exc:  # a store that checks its own versions when opened (the readings store)
        error(str(exc))
        return EXIT_BAD_INPUT
    except Exception as exc:
        if not unreachable(where, exc):
            raise
        error(f"cannot reach the database {where}: {exc}")
        return EXIT_FAILED
    if args.json:
        print_json(result)
        return EXIT_OK
    print(f"{result['location']} ({'PostgreSQL' if result['backend'] == 'postgresql' else 'SQLite'})")
    width = max([len("STORE")] + [len(v["store"]) for v in result["versions"]])
    print(f"  {'STORE':<{width}}  BEFORE  AFTER")
    for v in result["versions"]:
        note = "  migrated" if v["before"] != v["after"] else ""
        print(f"  {v['store']:<{width}}  {v['before']:>6}  {v['after']:>5}{note}")
    print(f"opened: {', '.join(result['opened'])}")
    print("schema migrated" if result["migrated"] else "schema already current: nothing to do")
    return EXIT_OK


def probe(where: Location) -> None:
    """Connect once, directly, so an unreachable server is said at once (not after the pool's wait)."""
    db = as_database(where)
    if db is None:
        return
    import psycopg

    kwargs: dict[str, Any] = {"connect_timeout": 10}
    if db.password is not None:
        kwargs["password"] = db.password
    psycopg.connect(db.url, **kwargs).close()


def unreachable(where: Location, exc: BaseException) -> bool:
    """Whether ``exc`` is the PostgreSQL of ``where`` out of reach (refused, timed out,
    authentication failed, the pool's wait for a connection over)."""
    if as_database(where) is None:
        return False
    import psycopg

    return isinstance(exc, psycopg.OperationalError)
