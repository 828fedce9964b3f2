"""The lease table in PostgreSQL: who polls which channel and who leads which global job.

Two tables (store ``cluster`` in ``schema_versions``)::

    cluster_nodes (node PK, host, pid, started, heartbeat, version, meta)
    leases        (resource PK, holder, token, acquired, renewed, expires)

``resource`` is ``channel:<name>`` or ``leader:<job>``.  A lease is held while ``holder`` is set
and ``expires`` lies ahead; free (``holder`` NULL) or expired it may be taken by anyone.
``token`` grows by one every time the holder changes (the fencing token): a write checked
against ``(holder, token)`` in the same transaction cannot come from a node that has lost the
lease since, however late its packets arrive.

Rules the statements keep:

- Every expiry is computed and compared with PostgreSQL's ``clock_timestamp()``, never a node's
  clock: two machines whose clocks disagree still agree on who holds what.
- Taking free or expired leases locks candidate rows ``FOR UPDATE SKIP LOCKED``: two nodes
  balancing at once never take the same row, and neither waits for the other.
- A renewal is one statement: the node's heartbeat, every lease it holds, and the count of live
  nodes, so a node learns what it lost in the same round trip as what it kept.
- A lease is not tied to a database session (unlike an advisory lock): a connection lost to a
  network blip or a PostgreSQL restart loses nothing as long as the node renews within
  ``lease_time``; the node reconnects and carries on.

The book keeps one connection of its own, outside the stores' pool: a pool busy with a long
charging pass must never delay a heartbeat.  Its statements are bounded by ``timeout`` (connect,
statement, TCP); any failure is :class:`LeaseError` and the connection is rebuilt on next use.
Calls block: the node loop runs them in a worker thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from meterd.errors import StorageError
from meterd.storage.database import Database
from meterd.storage.postgres import migrate_store

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

STORE: Final = "cluster"
CHANNEL: Final = "channel:"
LEADER: Final = "leader:"
STOPPED: Final = "stopped"
PRUNE_AFTER: Final = 86_400.0  # seconds: rows of nodes silent this long are dropped at the next join

#: version n+1 = the statements of MIGRATIONS[n]
MIGRATIONS: Final = (
    (
        """CREATE TABLE IF NOT EXISTS cluster_nodes (
            node TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            started TIMESTAMPTZ NOT NULL,
            heartbeat TIMESTAMPTZ NOT NULL,
            version TEXT NOT NULL,
            meta JSONB NOT NULL DEFAULT '{}'::jsonb)""",
        """CREATE TABLE IF NOT EXISTS leases (
            resource TEXT PRIMARY KEY,
            holder TEXT,
            token BIGINT NOT NULL DEFAULT 0,
            acquired TIMESTAMPTZ,
            renewed TIMESTAMPTZ,
            expires TIMESTAMPTZ NOT NULL DEFAULT '-infinity')""",
        "CREATE INDEX IF NOT EXISTS leases_holder ON leases (holder)",
    ),
)


class LeaseError(StorageError):
    """The lease table could not be read or written (PostgreSQL unreachable, a statement timed
    out), or it refused this node.  ``reason``: ``"unreachable"``, ``"name_in_use"`` (a live node
    has this node's name) or ``"unregistered"`` (this node's row is gone: it must join again)."""

    def __init__(self, message: str, *, reason: str = "unreachable") -> None:
        super().__init__(message)
        self.reason = reason


def channel_resource(name: str) -> str:
    return CHANNEL + name


def leader_resource(job: str) -> str:
    return LEADER + job


@dataclass(frozen=True, slots=True)
class Renewal:
    """What one renewal found: every lease the node holds now (resource -> token) and how many
    nodes are live (heartbeat within ``lease_time``, this one included)."""

    held: dict[str, int]
    live_nodes: int


@dataclass(frozen=True, slots=True)
class NodeRow:
    node: str
    host: str
    pid: int
    started: datetime
    heartbeat: datetime
    version: str
    meta: dict[str, Any]
    age: float  # seconds since the heartbeat, by PostgreSQL's clock

    @property
    def stopped(self) -> bool:
        return self.meta.get("state") == STOPPED


@dataclass(frozen=True, slots=True)
class LeaseRow:
    resource: str
    holder: str | None
    token: int
    acquired: datetime | None
    renewed: datetime | None
    expires: datetime | None
    remaining: float | None  # seconds until expiry by PostgreSQL's clock (negative: expired)

    @property
    def held(self) -> bool:
        return self.holder is not None and self.remaining is not None and self.remaining > 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole table as PostgreSQL sees it at ``now`` (``meterd cluster status``)."""

    now: datetime
    lease_time: float
    nodes: tuple[NodeRow, ...]
    leases: tuple[LeaseRow, ...] = field(default=())

    def alive(self, row: NodeRow) -> bool:
        return not row.stopped and row.age < self.lease_time


def default_node_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class LeaseBook:
    """Every statement on the lease and node tables, for one node (``node``) of a site.

    ``lease_time``: seconds a lease lasts after its last renewal.  ``timeout``: seconds any one
    call may take (connect, statement, TCP).  Thread-safe (one lock around the connection)."""

    def __init__(self, db: Database, node: str, *, lease_time: float, timeout: float = 5.0,
                 incarnation: str | None = None) -> None:
        if lease_time <= 0 or timeout <= 0:
            raise ValueError("lease_time and timeout must be > 0 seconds")
        self.db = db
        self.node = node
        self.lease_time = float(lease_time)
        self.timeout = float(timeout)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.incarnation = incarnation or f"{self.host}:{self.pid}:{time.time_ns()}"
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

    # --- the connection ----------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        ms = max(1, int(self.timeout * 1000))
        kwargs: dict[str, Any] = {
            "autocommit": True, "connect_timeout": max(1, round(self.timeout)),
            "application_name": f"meterd cluster {self.node}"[:63],
            # a dead peer is noticed within the timeout, not after the kernel's two hours
            "keepalives": 1, "keepalives_idle": max(1, round(self.timeout)), "keepalives_interval": 1,
            "keepalives_count": 3, "tcp_user_timeout": ms,
        }
        if self.db.password is not None:
            kwargs["password"] = self.db.password
        conn = psycopg.connect(self.db.url, **kwargs)
        conn.execute(f"SET statement_timeout = {ms}")
        conn.execute(f"SET lock_timeout = {ms}")
        return conn

    def _call(self, body: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        import psycopg

        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                return body(self._conn)
            except psycopg.Error as exc:
                self._drop()
                raise LeaseError(f"lease table in {self.db}: {exc}".strip()) from exc

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken connection: nothing more to do with it
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._drop()

    # --- schema ---------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the tables to the latest version (under the state stores' write lock, so nodes
        starting at once create them once); refuse a database newer than this code."""
        self._call(lambda conn: migrate_store(conn, self.db, STORE, MIGRATIONS))

    # --- joining and leaving ------------------------------------------------------------------

    def join(self, version: str, meta: Mapping[str, Any] | None = None) -> None:
        """Register this node.  A live node of the same name (heartbeat within ``lease_time``, not
        stopped) that is not this process is :class:`LeaseError`: two processes under one name
        would renew each other's leases.  Leases a dead earlier process of this name still holds
        are released (free for anyone, this node included).  Rows of nodes silent for a day go."""
        doc = json.dumps({**(meta or {}), "incarnation": self.incarnation, "state": "running"})

        def body(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                row = conn.execute(
                    "SELECT host, pid, meta->>'incarnation', meta->>'state', "
                    "EXTRACT(EPOCH FROM clock_timestamp() - heartbeat) FROM cluster_nodes WHERE node = %s FOR UPDATE",
                    (self.node,)).fetchone()
                if row is not None and row[2] != self.incarnation and row[3] != STOPPED \
                        and float(row[4]) < self.lease_time and not _dead_here(row[0], row[1], self.host):
                    raise LeaseError(f"node name {self.node!r} is in use by a live node ({row[0]} pid {row[1]}, "
                                     f"heartbeat {float(row[4]):.1f} s ago): give each node its own [cluster] node",
                                     reason="name_in_use")
                conn.execute(
                    "INSERT INTO cluster_nodes (node, host, pid, started, heartbeat, version, meta) "
                    "VALUES (%s, %s, %s, clock_timestamp(), clock_timestamp(), %s, %s::jsonb) ON CONFLICT (node) DO "
                    "UPDATE SET host = excluded.host, pid = excluded.pid, started = excluded.started, "
                    "heartbeat = excluded.heartbeat, version = excluded.version, meta = excluded.meta",
                    (self.node, self.host, self.pid, version, doc))
                conn.execute("UPDATE leases SET holder = NULL, expires = clock_timestamp() WHERE holder = %s",
                             (self.node,))
                conn.execute("DELETE FROM cluster_nodes WHERE node <> %s AND heartbeat < clock_timestamp() - "
                             "make_interval(secs => %s)", (self.node, PRUNE_AFTER))

        self._call(body)

    def leave(self) -> list[str]:
        """Release every lease of this node and mark it stopped (a clean shutdown): the others
        take its channels at their next heartbeat instead of after ``lease_time``."""

        def body(conn: psycopg.Connection[Any]) -> list[str]:
            with conn.transaction():
                rows = conn.execute("UPDATE leases SET holder = NULL, expires = clock_timestamp() WHERE holder = %s "
                                    "RETURNING resource", (self.node,)).fetchall()
                conn.execute("UPDATE cluster_nodes SET heartbeat = clock_timestamp(), "
                             "meta = meta || jsonb_build_object('state', %s::text) WHERE node = %s",
                             (STOPPED, self.node))
            return sorted(r[0] for r in rows)

        return list(self._call(body))

    # --- leases ---------------------------------------------------------------------------------

    def ensure(self, resources: Iterable[str]) -> int:
        """Rows for ``resources`` (free, token 0) where there are none yet; how many were added."""
        names = sorted(set(resources))
        if not names:
            return 0
        return int(self._call(lambda conn: conn.execute(
            "INSERT INTO leases (resource) SELECT unnest(%s::text[]) ON CONFLICT (resource) DO NOTHING",
            (names,)).rowcount))

    def renew(self) -> Renewal:
        """Heartbeat and renew every lease this node holds, in one statement.  A lease this node
        holds is renewed even if it had expired, as long as nobody took it meanwhile (the holder
        is still this node, so nobody else polled that channel)."""
        sql = """
            WITH hb AS (
                UPDATE cluster_nodes SET heartbeat = clock_timestamp() WHERE node = %(node)s RETURNING 1),
            ren AS (
                UPDATE leases SET renewed = clock_timestamp(),
                                  expires = clock_timestamp() + make_interval(secs => %(lease)s)
                 WHERE holder = %(node)s RETURNING resource, token),
            live AS (
                SELECT COUNT(*) AS n FROM cluster_nodes
                 WHERE node <> %(node)s AND heartbeat > clock_timestamp() - make_interval(secs => %(lease)s)
                   AND COALESCE(meta->>'state', '') <> %(stopped)s)
            SELECT ren.resource, ren.token, live.n, (SELECT COUNT(*) FROM hb)
              FROM live LEFT JOIN ren ON TRUE"""

        def body(conn: psycopg.Connection[Any]) -> Renewal:
            rows = conn.execute(sql, {"node": self.node, "lease": self.lease_time, "stopped": STOPPED}).fetchall()
            if rows and not rows[0][3]:  # our row is gone (pruned, or the database restored): join again
                raise LeaseError(f"node {self.node} is not registered in the node table", reason="unregistered")
            held = {r[0]: int(r[1]) for r in rows if r[0] is not None}
            live = int(rows[0][2]) + 1 if rows else 1
            return Renewal(held, live)

        result: Renewal = self._call(body)
        return result

    def acquire(self, candidates: Sequence[str], limit: int) -> dict[str, int]:
        """Take up to ``limit`` of ``candidates`` that are free or expired; resource -> new token."""
        if limit <= 0 or not candidates:
            return {}
        sql = """
            WITH c AS (
                SELECT resource FROM leases
                 WHERE resource = ANY(%(candidates)s::text[])
                   AND (holder IS NULL OR expires <= clock_timestamp())
                 ORDER BY resource LIMIT %(limit)s
                   FOR UPDATE SKIP LOCKED)
            UPDATE leases l SET holder = %(node)s, token = l.token + 1, acquired = clock_timestamp(),
                   renewed = clock_timestamp(), expires = clock_timestamp() + make_interval(secs => %(lease)s)
              FROM c WHERE l.resource = c.resource
            RETURNING l.resource, l.token"""
        params = {"candidates": list(candidates), "limit": limit, "node": self.node, "lease": self.lease_time}
        rows = self._call(lambda conn: conn.execute(sql, params).fetchall())
        return {r[0]: int(r[1]) for r in rows}

    def claim(self, resource: str) -> tuple[int, str | None]:
        """Take ``resource`` whoever holds it (a DTU connected to this node: its channel is ours).
        Returns the token and the holder it was taken from (None: it was free, expired or ours).
        The token grows unless this node already held it."""

        def body(conn: psycopg.Connection[Any]) -> tuple[int, str | None]:
            with conn.transaction():
                conn.execute("INSERT INTO leases (resource) VALUES (%s) ON CONFLICT (resource) DO NOTHING", (resource,))
                row = conn.execute("SELECT holder, token, expires > clock_timestamp() FROM leases WHERE resource = %s "
                                   "FOR UPDATE", (resource,)).fetchone()
                assert row is not None
                holder, token, live = row[0], int(row[1]), bool(row[2])
                if holder != self.node:
                    token += 1
                conn.execute("UPDATE leases SET holder = %s, token = %s, renewed = clock_timestamp(), "
                             "acquired = CASE WHEN holder IS DISTINCT FROM %s THEN clock_timestamp() ELSE acquired END, "
                             "expires = clock_timestamp() + make_interval(secs => %s) WHERE resource = %s",
                             (self.node, token, self.node, self.lease_time, resource))
            return token, holder if holder is not None and holder != self.node and live else None

        result: tuple[int, str | None] = self._call(body)
        return result

    def release(self, resources: Mapping[str, int]) -> list[str]:
        """Give back leases this node holds with the given tokens (a clean hand-over: call it after
        the channel stopped).  Returns those released."""
        if not resources:
            return []
        names, tokens = list(resources), [resources[r] for r in resources]
        sql = """
            UPDATE leases l SET holder = NULL, expires = clock_timestamp()
              FROM unnest(%(names)s::text[], %(tokens)s::bigint[]) AS h(resource, token)
             WHERE l.resource = h.resource AND l.token = h.token AND l.holder = %(node)s
            RETURNING l.resource"""
        rows = self._call(lambda conn: conn.execute(sql, {"names": names, "tokens": tokens, "node": self.node}
                                                    ).fetchall())
        return sorted(r[0] for r in rows)

    def holds(self, resource: str, token: int) -> bool:
        """Whether this node holds ``resource`` with ``token`` now (by PostgreSQL's clock)."""
        row = self._call(lambda conn: conn.execute(
            "SELECT 1 FROM leases WHERE resource = %s AND holder = %s AND token = %s AND expires > clock_timestamp()",
            (resource, self.node, token)).fetchone())
        return row is not None

    # --- reading the whole table ----------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return read_snapshot(self, self.lease_time)


def read_snapshot(book: LeaseBook, lease_time: float) -> Snapshot:
    """Every node and lease as PostgreSQL sees them now."""

    def body(conn: psycopg.Connection[Any]) -> Snapshot:
        with conn.transaction():
            exists = conn.execute("SELECT to_regclass('leases') IS NOT NULL AND to_regclass('cluster_nodes') IS NOT NULL"
                                  ).fetchone()
            now = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
            if exists is None or not exists[0]:
                return Snapshot(now, lease_time, ())
            nodes = tuple(NodeRow(r[0], r[1], int(r[2]), r[3], r[4], r[5], dict(r[6] or {}), float(r[7]))
                          for r in conn.execute(
                              "SELECT node, host, pid, started, heartbeat, version, meta, "
                              "EXTRACT(EPOCH FROM clock_timestamp() - heartbeat) FROM cluster_nodes ORDER BY node"))
            leases = tuple(LeaseRow(r[0], r[1], int(r[2]), r[3], r[4], r[5], None if r[6] is None else float(r[6]))
                           for r in conn.execute(
                               "SELECT resource, holder, token, acquired, renewed, "
                               "CASE WHEN expires = '-infinity' THEN NULL ELSE expires END, "
                               "CASE WHEN expires = '-infinity' THEN NULL "
                               "ELSE EXTRACT(EPOCH FROM expires - clock_timestamp()) END "
                               "FROM leases ORDER BY resource"))
        return Snapshot(now, lease_time, nodes, leases)

    result: Snapshot = book._call(body)
    return result


def _dead_here(host: str, pid: int, my_host: str) -> bool:
    """Whether the process ``pid`` on ``host`` is certainly gone: only knowable on this host."""
    if host != my_host:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def fence(node: str, resource: str, token: int) -> Callable[[Any], bool]:
    """A check for a claim made in another store's transaction (``CommandStore.mark_sent``'s
    ``fence``): true when ``node`` still holds ``resource`` with ``token`` and the lease has not
    expired, by PostgreSQL's clock.  The lease row is locked ``FOR SHARE`` until that transaction
    ends, so a node taking the lease meanwhile waits for the claim to commit and then finds the
    command claimed (it settles it by read-back, never sends it again)."""

    def check(conn: Any) -> bool:
        row = conn.execute("SELECT 1 FROM leases WHERE resource = ? AND holder = ? AND token = ? "
                           "AND expires > clock_timestamp() FOR SHARE", (resource, node, token)).fetchone()
        return row is not None

    return check


__all__ = [
    "CHANNEL", "LEADER", "LeaseBook", "LeaseError", "LeaseRow", "NodeRow", "Renewal", "Snapshot", "channel_resource",
    "default_node_name", "fence", "leader_resource", "read_snapshot",
]
