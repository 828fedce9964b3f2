"""The composition root: builds one node from the config and wires its parts together.

A node is the collector (:class:`~meterd.collector.daemon.Daemon`: channels, listeners, the MQTT
hub, the door and the writer) plus whichever of these the config asks for: prepaid control
(``[prepaid]``), analytics (``[topology]`` / ``[analytics]``), the billing link (``[[sync.jobs]]``)
and the HTTP API (``[api]``).  Nothing else wires parts together, and no part receives another
part's object: each gets the config section it runs on and the few callables it uses of the
others, taken from the collector's narrow interface (:mod:`meterd.collector.ports`)::

    prepaid    <- route (the meter's channel, target, Modbus link)      -> observe, run
    analytics  <- meter list; prepaid's meter -> account map            -> observe, run
    sync       <- prepaid's refresh after an accounts import            -> run
    api        <- read_now, stats, listener_status, spool_size, readiness (live);
                  the figures /metrics shows; the sync runtime          -> run

The collector calls every ``observe`` with each batch of readings that passed its door and
supervises every ``run`` beside its channels (restarted with back-off if one ends early); its
run/stop lifecycle is the node's.  The process's garbage-collector policy is not set here but by
the process owner (``meterd run`` / ``meterd demo``), see :mod:`meterd.heap`.

Collector nodes (``[cluster]``, on by default when the state is in PostgreSQL; see
``docs/cluster.md``).  A :class:`~meterd.cluster.node.ClusterNode` is the collector's ownership:
the daemon polls only the channels whose lease it holds.  The global jobs -- prepaid passes,
analytics, billing sync -- run only on the node leading each (``leader:<job>``); the readings
prepaid and analytics observe are forwarded by every node to that leader through PostgreSQL
(:mod:`meterd.cluster.forward`), since each node reads only its own channels.  The command
executor runs on every node, for the meters on the channels it holds, fenced by their leases.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meterd.clock import Clock, utc_now
from meterd.collector.channel import TraceHook
from meterd.collector.daemon import Daemon, RoundHook
from meterd.config.model import Config
from meterd.heap import collector_paused
from meterd.storage.postgres import PostgresStore
from meterd.storage.sqlite import SqliteStore

if TYPE_CHECKING:
    from meterd.analytics.runtime import AnalyticsRuntime
    from meterd.api.metrics import Figures
    from meterd.api.runtime import ApiRuntime
    from meterd.billing_link.runtime import SyncRuntime
    from meterd.cluster.node import ClusterNode
    from meterd.collector.ports import Service
    from meterd.control.commands import RelayLink
    from meterd.control.runtime import PrepaidRuntime
    from meterd.storage.retention import RetentionJob

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Node:
    """One running meterd: the collector and the parts the config enabled (``None`` when not)."""

    collector: Daemon
    prepaid: PrepaidRuntime | None = None
    analytics: AnalyticsRuntime | None = None
    sync: SyncRuntime | None = None
    api: ApiRuntime | None = None
    cluster: ClusterNode | None = None  # this process as one of several collector nodes
    retention: RetentionJob | None = None  # prunes old readings and attempts (on the leader, among nodes)

    async def run(self, stop: asyncio.Event) -> None:
        """Run every part until ``stop`` is set, then stop them in order (the collector's lifecycle)."""
        await self.collector.run(stop)

    def stats(self) -> dict[str, dict[str, object]]:
        return self.collector.stats()


def build_node(
    config: Config,
    store: SqliteStore | PostgresStore,
    *,
    clock: Clock = utc_now,
    on_round: RoundHook | None = None,
    trace: TraceHook | None = None,
) -> Node:
    """Build the node ``config`` describes over ``store``.  Raises
    :class:`~meterd.errors.ConfigError` for what only shows when parts are built (a secret the
    config names that is not in the environment)."""
    # start-up's long-lived objects (per meter and channel: 100,000s) are made in one go and are
    # never garbage: no cyclic collection while they are (the process owner settles the heap after)
    with collector_paused():
        return _build_node(config, store, clock=clock, on_round=on_round, trace=trace)


def _build_node(config: Config, store: SqliteStore | PostgresStore, *, clock: Clock, on_round: RoundHook | None,
                trace: TraceHook | None) -> Node:
    cluster = _cluster_node(config)
    collector = Daemon(config, store, clock=clock, on_round=on_round, trace=trace, ownership=cluster)
    node = Node(collector, cluster=cluster)
    where = config.store.state  # the data directory, or the PostgreSQL database
    _record_zone(config, clock)
    collector.audit = _audit_writer(where, clock)  # terminal-side changes (a 1376.1 archive downloaded)
    if config.prepaid is not None:
        from meterd.control.runtime import PrepaidRuntime

        node.prepaid = PrepaidRuntime(config.prepaid, meters=config.meters, where=where,
                                      route=_meter_routes(collector), clock=clock, scope=cluster)
        if cluster is None:
            collector.subscribe(node.prepaid.observe)
            collector.add_service(node.prepaid.run)
        else:
            from meterd.control.engine import FROZEN_PREFIX, POWER_QUANTITY
            from meterd.control.model import QUANTITY_RATE

            registers = {*QUANTITY_RATE, *(FROZEN_PREFIX + q for q in QUANTITY_RATE), POWER_QUANTITY}
            _forwarded(collector, cluster, config, "prepaid", node.prepaid.observe, node.prepaid.run,
                       quantities=registers)
            collector.add_service(node.prepaid.run_commands)
    if config.analytics is not None:
        from meterd.analytics.runtime import AnalyticsRuntime

        node.analytics = AnalyticsRuntime(
            config.analytics, meters=[m.address for m in config.meters], where=where, clock=clock,
            accounts_of=node.prepaid.meter_accounts if node.prepaid is not None else None, zone=config.site.zone)
        if cluster is None:
            collector.subscribe(node.analytics.observe)
            collector.add_service(node.analytics.run)
        else:
            from meterd.readings import Quality

            analytics = node.analytics

            def leading() -> None:  # a new leader's no-data clock starts now, not when its process did
                analytics.started = clock()

            _forwarded(collector, cluster, config, "analytics", analytics.observe, analytics.run, prefixes=("",),
                       qualities=(Quality.GOOD, Quality.SUSPECT), on_lead=leading)
    if config.sync is not None and config.sync.jobs:
        from meterd.billing_link.runtime import SyncRuntime

        node.sync = SyncRuntime(config, clock=clock,
                                accounts_imported=node.prepaid.engine.refresh if node.prepaid is not None else None)
    if config.api is not None:
        from meterd.api.runtime import ApiRuntime

        node.api = ApiRuntime(config, clock=clock, live=collector, figures=_figures(node), sync=node.sync)
        collector.add_service(node.api.run)
    if node.sync is not None:
        collector.add_service(_led(cluster, "sync", node.sync.run))
    node.retention = _retention(config, store, collector, clock)
    collector.add_service(_led(cluster, "retention", node.retention.run))
    return node


def _record_zone(config: Config, clock: Clock) -> None:
    """The site's zone recorded in the state database, for the commands run on the data directory
    or the database without the config (:mod:`meterd.storage.site`); a zone the config changed is
    logged.  A failure to write it is logged and starts the node all the same."""
    from meterd.storage import site

    try:
        changed, before = site.record(config.store.state, site.TIMEZONE, config.site.timezone, clock())
    except site.storage_errors() as exc:
        log.warning("the site zone %s not recorded in the state database %s: %s", config.site.timezone,
                    config.store.state, exc)
        return
    if changed and before is not None:
        log.info("site zone %s recorded in the state database %s (it recorded %s)", config.site.timezone,
                 config.store.state, before)
    elif changed:
        log.info("site zone %s recorded in the state database %s", config.site.timezone, config.store.state)


def _retention(config: Config, store: SqliteStore | PostgresStore, collector: Daemon, clock: Clock) -> RetentionJob:
    """The background prune of ``[store] keep_readings`` / ``keep_attempts`` (meterd.storage.retention)."""
    from meterd.storage.retention import Policy, RetentionJob

    policy = Policy.from_seconds(config.store.keep_readings, config.store.keep_attempts, config.store.prune_at,
                                 config.site.zone)
    return RetentionJob(store, policy, clock=clock, fold=collector.quality.update)


def _cluster_node(config: Config) -> ClusterNode | None:
    """This process as a collector node, when ``[cluster]`` is on (the state in PostgreSQL)."""
    settings = config.cluster
    if settings is None:
        return None
    from meterd import __version__
    from meterd.cluster.leases import LeaseBook, default_node_name
    from meterd.cluster.node import ClusterNode

    assert config.store.database is not None  # the loader allows [cluster] only with PostgreSQL
    jobs = [job for job, on in (("prepaid", config.prepaid is not None), ("analytics", config.analytics is not None),
                                ("sync", config.sync is not None and bool(config.sync.jobs)),
                                ("retention", True)) if on]
    book = LeaseBook(config.store.database, settings.node or default_node_name(), lease_time=settings.lease_time,
                     timeout=max(1.0, settings.heartbeat))
    node = ClusterNode(book, channels=[c.name for c in config.channels], jobs=jobs, heartbeat=settings.heartbeat,
                       lease_time=settings.lease_time, slack=settings.slack, version=__version__,
                       release_grace=max((c.timeouts.response for c in config.channels), default=0.0))
    node.set_meters({m.address: m.channel for m in config.meters})
    return node


def _led(cluster: ClusterNode | None, job: str, service: Service) -> Service:
    """``service`` as it runs on this node: as it is, or only while this node leads ``job``."""
    if cluster is None:
        return service

    async def led(stop: asyncio.Event) -> None:
        await cluster.lead(job, service, stop)

    led.__qualname__ = f"leader:{job}"
    return led


def _forwarded(collector: Daemon, cluster: ClusterNode, config: Config, job: str,
               feed: Callable[[list], None], service: Service, *,
               on_lead: Callable[[], None] | None = None, **wanted: Any) -> None:
    """A global job that observes readings, among nodes: every node forwards the readings it uses
    (``wanted``: see :class:`~meterd.cluster.forward.Forwarder`) and the leader feeds them to it."""
    from meterd.cluster.forward import Forwarder, ReadingQueue, drain

    assert config.store.database is not None
    queue = ReadingQueue(config.store.database, job, cluster.name)
    queue.migrate()
    forwarder = Forwarder(queue, **wanted)
    collector.subscribe(forwarder.observe)
    collector.add_service(forwarder.run)

    async def leading(stop: asyncio.Event) -> None:
        if on_lead is not None:
            on_lead()
        drainer = asyncio.create_task(drain(queue, feed, stop), name=f"{job} forwarded readings")
        try:
            await service(stop)
        finally:
            drainer.cancel()
            await asyncio.gather(drainer, return_exceptions=True)

    collector.add_service(_led(cluster, job, leading))


def _audit_writer(where: Any, clock: Clock) -> Callable[[str, str, dict], None]:
    """What the collector records terminal-side changes with: the audit log (control's state
    database), opened at the first entry, written by the daemon (off the event loop)."""
    opened: list[Any] = []

    def audit(action: str, subject: str, detail: dict) -> None:
        if not opened:
            from meterd.control.state import ControlStore

            opened.append(ControlStore(where))
        opened[0].audit("daemon", action, subject, detail, now=clock())

    return audit


def _meter_routes(collector: Daemon) -> Callable[[str], RelayLink | None]:
    """The collector's routes as prepaid control's :class:`~meterd.control.commands.RelayLink`."""
    from meterd.collector.control import MeterRelay

    def route(address: str) -> RelayLink | None:
        found = collector.route(address)
        return None if found is None else MeterRelay(found.channel, found.target, found.link)

    return route


def _figures(node: Node) -> Figures:
    from meterd.api.metrics import Figures

    prepaid, analytics = node.prepaid, node.analytics
    return Figures(
        channels=node.collector.channel_figures,
        spool=node.collector.spool_size,
        commands=prepaid.store.commands_by_state if prepaid is not None else None,
        prepaid_passes=(lambda: prepaid.passes) if prepaid is not None else None,
        open_anomalies=analytics.open_anomalies if analytics is not None else None,
        open_outages=analytics.open_outages if analytics is not None else None,
        cluster=node.cluster.figures if node.cluster is not None else None,
        terminals=node.collector.terminal_figures,
        prepaid=prepaid.figures if prepaid is not None else None,
    )


__all__ = ["Node", "build_node"]
