"""The ``[cluster]`` section: this process as one collector node of several sharing one PostgreSQL.

::

    [cluster]
    node = "collector-a"     # this node's name (default: hostname-pid); unique among live nodes
    lease_time = "15s"       # a dead node's channels are free again after at most this long
    heartbeat = "3s"         # leases renewed and work rebalanced this often (at most lease_time / 3)
    slack = 1                # channels a node may hold above its fair share before it gives some
                             # back (default: 1 or 10 % of the share, whichever is larger)
    enabled = true           # default: on whenever [store] database is PostgreSQL (and whenever
                             # this section is written: on SQLite it must then say false)

A node polls only the channels whose lease it holds (see :mod:`meterd.cluster`).  Leases live in
the PostgreSQL database of ``[store] database``; with the SQLite default there is nothing to share
and ``enabled = true`` is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from meterd.config.keys import keys

DEFAULT_LEASE_TIME: Final = 15.0
DEFAULT_HEARTBEAT: Final = 3.0
MAX_NODE_NAME: Final = 120


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Lease timing and this node's name (``None``: hostname-pid, chosen at start)."""

    node: str | None = None
    lease_time: float = DEFAULT_LEASE_TIME
    heartbeat: float = DEFAULT_HEARTBEAT
    slack: int | None = None  # None: max(1, 10 % of the fair share)
    enabled: bool = True


def parse_cluster(check: Any, raw: Any, *, postgres: bool) -> ClusterConfig | None:
    """``[cluster]`` (``raw`` None when absent) for a store on PostgreSQL (``postgres``) or not.

    Returns the settings when the node runs as a cluster node, else None (SQLite, or
    ``enabled = false``)."""
    if raw is None:
        return ClusterConfig() if postgres else None
    table = check.table("cluster", raw)
    if table is None:
        return None
    check.known_keys("cluster", table, keys("cluster"))
    enabled = table.get("enabled", True)  # a [cluster] section means nodes, unless it says otherwise
    if not isinstance(enabled, bool):
        check.problem("cluster.enabled", f"must be true or false, got {enabled!r}")
        return None
    if enabled and not postgres:
        check.problem("cluster", "collector nodes share their leases through PostgreSQL: set [store] database = "
                                 '"postgresql://..." (or enabled = false)')
        return None
    node = None
    if "node" in table:
        node = check.string("cluster.node", table["node"])
        if node is not None and (len(node) > MAX_NODE_NAME or not node.isprintable() or node != node.strip()):
            check.problem("cluster.node", f"must be printable, without surrounding blanks, at most {MAX_NODE_NAME} "
                                          f"characters, got {node!r}")
            node = None
        if node is None:
            return None
    lease_time = check.duration("cluster.lease_time", table.get("lease_time", DEFAULT_LEASE_TIME))
    heartbeat = check.duration("cluster.heartbeat", table.get("heartbeat", DEFAULT_HEARTBEAT))
    slack = None
    if "slack" in table:
        slack = check.integer("cluster.slack", table["slack"], low=0)
        if slack is None:
            return None
    if lease_time is None or heartbeat is None:
        return None
    if heartbeat * 3 > lease_time:
        # a node stops polling at its last renewal + lease_time - 2 x heartbeat: that must leave time to poll
        check.problem("cluster.heartbeat", f"must be at most a third of lease_time ({lease_time:g} s), got "
                                           f"{heartbeat:g} s")
        return None
    if not enabled:
        return None
    return ClusterConfig(node=node, lease_time=lease_time, heartbeat=heartbeat, slack=slack)
