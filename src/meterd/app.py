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
    api        <- read_now, stats, listener_status, spool_size (live);
                  the figures /metrics shows; the sync runtime          -> run

The collector calls every ``observe`` with each batch of readings that passed its door and
supervises every ``run`` beside its channels (restarted with back-off if one ends early); its
run/stop lifecycle is the node's.  The process's garbage-collector policy is not set here but by
the process owner (``meterd run`` / ``meterd demo``), see :mod:`meterd.heap`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meterd.clock import Clock, utc_now
from meterd.collector.channel import TraceHook
from meterd.collector.daemon import Daemon, RoundHook
from meterd.config.model import Config
from meterd.storage.postgres import PostgresStore
from meterd.storage.sqlite import SqliteStore

if TYPE_CHECKING:
    from meterd.analytics.runtime import AnalyticsRuntime
    from meterd.api.runtime import ApiRuntime, Figures
    from meterd.billing_link.runtime import SyncRuntime
    from meterd.control.commands import RelayLink
    from meterd.control.runtime import PrepaidRuntime


@dataclass(slots=True)
class Node:
    """One running meterd: the collector and the parts the config enabled (``None`` when not)."""

    collector: Daemon
    prepaid: PrepaidRuntime | None = None
    analytics: AnalyticsRuntime | None = None
    sync: SyncRuntime | None = None
    api: ApiRuntime | None = None

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
    collector = Daemon(config, store, clock=clock, on_round=on_round, trace=trace)
    node = Node(collector)
    where = config.store.state  # the data directory, or the PostgreSQL database
    if config.prepaid is not None:
        from meterd.control.runtime import PrepaidRuntime

        node.prepaid = PrepaidRuntime(config.prepaid, meters=config.meters, where=where,
                                      route=_meter_routes(collector), clock=clock)
        collector.subscribe(node.prepaid.observe)
        collector.add_service(node.prepaid.run)
    if config.analytics is not None:
        from meterd.analytics.runtime import AnalyticsRuntime

        node.analytics = AnalyticsRuntime(
            config.analytics, meters=[m.address for m in config.meters], where=where, clock=clock,
            accounts_of=node.prepaid.meter_accounts if node.prepaid is not None else None)
        collector.subscribe(node.analytics.observe)
        collector.add_service(node.analytics.run)
    if config.sync is not None and config.sync.jobs:
        from meterd.billing_link.runtime import SyncRuntime

        node.sync = SyncRuntime(config, clock=clock,
                                accounts_imported=node.prepaid.engine.refresh if node.prepaid is not None else None)
    if config.api is not None:
        from meterd.api.runtime import ApiRuntime

        node.api = ApiRuntime(config, clock=clock, live=collector, figures=_figures(node), sync=node.sync)
        collector.add_service(node.api.run)
    if node.sync is not None:
        collector.add_service(node.sync.run)
    return node


def _meter_routes(collector: Daemon) -> Callable[[str], RelayLink | None]:
    """The collector's routes as prepaid control's :class:`~meterd.control.commands.RelayLink`."""
    from meterd.collector.control import MeterRelay

    def route(address: str) -> RelayLink | None:
        found = collector.route(address)
        return None if found is None else MeterRelay(found.channel, found.target, found.link)

    return route


def _figures(node: Node) -> Figures:
    from meterd.api.runtime import Figures

    prepaid, analytics = node.prepaid, node.analytics
    return Figures(
        channels=node.collector.channel_figures,
        spool=node.collector.spool_size,
        commands=prepaid.store.commands_by_state if prepaid is not None else None,
        prepaid_passes=(lambda: prepaid.passes) if prepaid is not None else None,
        open_anomalies=analytics.open_anomalies if analytics is not None else None,
        open_outages=analytics.open_outages if analytics is not None else None,
    )


__all__ = ["Node", "build_node"]
