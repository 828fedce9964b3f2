"""``/metrics``: a node's figures in the Prometheus exposition formats, through ``prometheus_client``.

Strategy.  Nothing on a read's path touches ``prometheus_client``: the parts keep plain counters
(a channel's :class:`~meterd.collector.channel.ChannelStats`, with its latency buckets and the
time of its last reply; prepaid control's pass durations and command outcomes) and
:class:`NodeCollector` turns them into metric families when Prometheus scrapes, from the
callables ``meterd.app`` hands over in :class:`Figures`.  A read therefore costs one
``bisect`` and one list increment more than before, with no lock (only the event loop writes;
a scrape copies).  Each daemon has its own :class:`~prometheus_client.CollectorRegistry`, so
tests and several daemons in one process never share or collide on a metric.

What is exposed (docs/api.md lists it with the alert rules in deploy/prometheus/):

- ``process_*`` (``prometheus_client``'s process collector: CPU, memory, file descriptors, start
  time) and ``meterd_build_info{version, python}``;
- per channel: transactions, successes, failures by kind, meter reads by outcome (as collection
  quality counts them), rounds and overruns (counters), mean and longest latency, transactions
  waiting for the bus, and the time of the last successful read;
- read latency as a histogram per kind of channel (``meterd_read_duration_seconds{link}``:
  serial, tcp, modbus-tcp, dtu, mqtt) -- per kind, not per channel, so thousands of channels do
  not make thousands of histograms;
- DTUs and MQTT terminals online, each and counted by kind;
- the store's spool, prepaid passes (count and a duration histogram), relay commands by state
  (from the store) and by outcome (counted by this node's executor), open anomalies and outages;
- API connections and what the guard closed; collector-node leases and leadership.

Names follow Prometheus' conventions: counters end in ``_total``, units are base units in the
name (``_seconds``, ``_bytes``), timestamps are unix seconds (``_timestamp_seconds``).
"""

from __future__ import annotations

import math
import platform
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Info, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from meterd import __version__

if TYPE_CHECKING:
    from meterd.api.guard import ConnectionGuard


class ChannelCounters(Protocol):
    """One channel's live counters, as the collector reports them (latencies in seconds)."""

    @property
    def name(self) -> str: ...
    @property
    def transactions(self) -> int: ...
    @property
    def successes(self) -> int: ...
    @property
    def failures(self) -> tuple[tuple[str, int], ...]: ...
    @property
    def latency_mean(self) -> float: ...
    @property
    def latency_max(self) -> float: ...
    @property
    def waiting(self) -> int: ...
    @property
    def rounds(self) -> int: ...
    @property
    def overruns(self) -> int: ...
    @property
    def link(self) -> str: ...
    @property
    def latency_buckets(self) -> tuple[tuple[float, int], ...]: ...
    @property
    def latency_total(self) -> float: ...
    @property
    def last_success(self) -> float | None: ...
    @property
    def outcomes(self) -> tuple[tuple[str, int], ...]: ...


class TerminalState(Protocol):
    @property
    def terminal(self) -> str: ...
    @property
    def channel(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def online(self) -> bool: ...


class PrepaidCounters(Protocol):
    @property
    def passes(self) -> int: ...
    @property
    def pass_buckets(self) -> tuple[tuple[float, int], ...]: ...
    @property
    def pass_seconds(self) -> float: ...
    @property
    def outcomes(self) -> tuple[tuple[str, str, int], ...]: ...


@dataclass(frozen=True, slots=True)
class Figures:
    """What ``/metrics`` shows, handed over by ``meterd.app``: each is asked at scrape time (in a
    worker thread); the parts a node does not run are ``None``."""

    channels: Callable[[], Sequence[ChannelCounters]]
    spool: Callable[[], tuple[int, int] | None]
    commands: Callable[[], dict[str, int]] | None = None  # relay commands by state
    prepaid_passes: Callable[[], int] | None = None  # without ``prepaid``: the pass count alone
    open_anomalies: Callable[[], int] | None = None
    open_outages: Callable[[], int] | None = None
    cluster: Callable[[], Mapping[str, Any]] | None = None  # collector nodes: ClusterNode.figures
    terminals: Callable[[], Sequence[TerminalState]] | None = None
    prepaid: Callable[[], PrepaidCounters] | None = None


def _cumulative(buckets: Iterable[tuple[float, int]]) -> list[tuple[str, float]]:
    """(upper bound, count in it) -> Prometheus' cumulative ``le`` buckets (+Inf last)."""
    out: list[tuple[str, float]] = []
    running = 0
    for bound, n in buckets:
        running += n
        out.append(("+Inf" if math.isinf(bound) else repr(float(bound)), running))
    return out


class NodeCollector(Collector):
    """The node's figures as metric families, made afresh at each scrape."""

    def __init__(self, figures: Figures, guard: ConnectionGuard | None = None) -> None:
        self.figures = figures
        self.guard = guard

    def describe(self) -> Iterable[Metric]:
        return ()  # names are not known before a scrape; registering must not run one

    def collect(self) -> Iterable[Metric]:
        figures = self.figures
        if self.guard is not None:
            yield from self._guard(self.guard)
        yield from self._channels(figures.channels())
        if figures.terminals is not None:
            yield from self._terminals(figures.terminals())
        spool = figures.spool()
        if spool is not None:
            records, size = spool
            yield GaugeMetricFamily("meterd_spool_records", "readings waiting in the store's spool", value=records)
            yield GaugeMetricFamily("meterd_spool_bytes", "size of the store's spool on disk", value=size)
        if figures.commands is not None:
            by_state = GaugeMetricFamily("meterd_commands", "relay commands by state (in the store)", labels=["state"])
            for state, n in sorted(figures.commands().items()):
                by_state.add_metric([state], n)
            yield by_state
        if figures.prepaid is not None:
            yield from self._prepaid(figures.prepaid())
        elif figures.prepaid_passes is not None:
            yield CounterMetricFamily("meterd_prepaid_passes", "charging and policy passes",
                                      value=figures.prepaid_passes())
        if figures.open_anomalies is not None and figures.open_outages is not None:
            yield GaugeMetricFamily("meterd_anomalies_open", "open anomaly events", value=figures.open_anomalies())
            yield GaugeMetricFamily("meterd_outages_open", "outages going on", value=figures.open_outages())
        if figures.cluster is not None:
            yield from self._cluster(figures.cluster())

    @staticmethod
    def _guard(guard: ConnectionGuard) -> Iterator[Metric]:
        yield GaugeMetricFamily("meterd_api_connections", "open HTTP API connections", value=guard.open)
        closed = CounterMetricFamily("meterd_api_connections_closed", "HTTP API connections the guard closed or "
                                     "refused", labels=["reason"])
        for reason, n in (("evicted", guard.evicted), ("refused", guard.refused),
                          ("header_timeout", guard.header_timeouts)):
            closed.add_metric([reason], n)
        yield closed

    @staticmethod
    def _channels(channels: Sequence[ChannelCounters]) -> Iterator[Metric]:
        def family(kind: type, name: str, text: str, labels: Sequence[str] = ("channel",)) -> Any:
            return kind(name, text, labels=list(labels))

        transactions = family(CounterMetricFamily, "meterd_channel_transactions", "transactions per channel")
        successes = family(CounterMetricFamily, "meterd_channel_successes", "successful transactions per channel")
        failures = family(CounterMetricFamily, "meterd_channel_failures", "failed attempts per channel and kind",
                          ("channel", "kind"))
        mean = family(GaugeMetricFamily, "meterd_channel_latency_mean_seconds", "mean reply latency per channel")
        longest = family(GaugeMetricFamily, "meterd_channel_latency_max_seconds", "longest reply latency per channel")
        waiting = family(GaugeMetricFamily, "meterd_channel_waiting", "transactions waiting for the bus per channel")
        rounds = family(CounterMetricFamily, "meterd_channel_rounds", "poll rounds per channel")
        overruns = family(CounterMetricFamily, "meterd_channel_overruns", "poll ticks missed because a round overran")
        attempts = family(CounterMetricFamily, "meterd_channel_attempts", "meter reads per channel by outcome, as "
                          "collection quality counts them: ok, no_record (not due), or a failure kind",
                          ("channel", "outcome"))
        last = family(GaugeMetricFamily, "meterd_channel_last_success_timestamp_seconds",
                      "when the channel last got a reply (unix time); absent until its first one")
        by_link: dict[str, list[int]] = {}
        sums: dict[str, float] = defaultdict(float)
        bounds: dict[str, tuple[float, ...]] = {}
        for c in channels:
            name = [c.name]
            transactions.add_metric(name, c.transactions)
            successes.add_metric(name, c.successes)
            for kind, n in c.failures:
                failures.add_metric([c.name, kind], n)
            for outcome, n in c.outcomes:
                attempts.add_metric([c.name, outcome], n)
            mean.add_metric(name, round(c.latency_mean, 6))
            longest.add_metric(name, round(c.latency_max, 6))
            waiting.add_metric(name, c.waiting)
            rounds.add_metric(name, c.rounds)
            overruns.add_metric(name, c.overruns)
            if c.last_success is not None:
                last.add_metric(name, round(c.last_success, 3))
            if c.latency_buckets:
                counts = by_link.setdefault(c.link, [0] * len(c.latency_buckets))
                bounds.setdefault(c.link, tuple(b for b, _ in c.latency_buckets))
                for i, (_, n) in enumerate(c.latency_buckets):
                    counts[i] += n
                sums[c.link] += c.latency_total
        histogram = HistogramMetricFamily("meterd_read_duration_seconds", "reply latency of successful "
                                          "transactions (request written to reply decoded), by kind of channel",
                                          labels=["link"])
        for link in sorted(by_link):
            histogram.add_metric([link], _cumulative(zip(bounds[link], by_link[link], strict=True)),
                                 sum_value=sums[link])
        yield from (transactions, successes, failures, attempts, mean, longest, waiting, rounds, overruns, last,
                    histogram)

    @staticmethod
    def _terminals(terminals: Sequence[TerminalState]) -> Iterator[Metric]:
        each = GaugeMetricFamily("meterd_terminal_online", "1 while a DTU or MQTT terminal this node polls is "
                                 "online (a round got past its link), else 0", labels=["terminal", "channel", "kind"])
        online = GaugeMetricFamily("meterd_terminals_online", "DTUs and MQTT terminals online", labels=["kind"])
        known = GaugeMetricFamily("meterd_terminals", "DTUs and MQTT terminals this node polls", labels=["kind"])
        counts: dict[str, list[int]] = {"dtu": [0, 0], "mqtt": [0, 0]}
        for t in terminals:
            each.add_metric([t.terminal, t.channel, t.kind], int(t.online))
            tally = counts.setdefault(t.kind, [0, 0])
            tally[0] += int(t.online)
            tally[1] += 1
        for kind, (up, total) in sorted(counts.items()):
            online.add_metric([kind], up)
            known.add_metric([kind], total)
        yield from (each, online, known)

    @staticmethod
    def _prepaid(p: PrepaidCounters) -> Iterator[Metric]:
        yield CounterMetricFamily("meterd_prepaid_passes", "charging and policy passes", value=p.passes)
        duration = HistogramMetricFamily("meterd_prepaid_pass_duration_seconds", "how long a charging and policy "
                                         "pass took (ledger entries, decisions, commands queued)")
        duration.add_metric([], _cumulative(p.pass_buckets), sum_value=p.pass_seconds)
        yield duration
        outcomes = CounterMetricFamily("meterd_command_outcomes", "relay commands this node's executor settled, by "
                                       "kind and outcome (confirmed, failed, expired; retry: the meter was "
                                       "unreachable and the command stays queued)", labels=["kind", "outcome"])
        for kind, outcome, n in p.outcomes:
            outcomes.add_metric([kind, outcome], n)
        yield outcomes

    @staticmethod
    def _cluster(c: Mapping[str, Any]) -> Iterator[Metric]:
        node = [str(c["node"])]

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, text, labels=["node"])
            family.add_metric(node, value)
            return family

        def counter(name: str, text: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, text, labels=["node"])
            family.add_metric(node, value)
            return family

        yield gauge("meterd_cluster_channels_held", "channel leases this collector node holds", c["channels_held"])
        yield gauge("meterd_cluster_fair_share", "channels per live node (ceil)", c["share"])
        yield gauge("meterd_cluster_live_nodes", "collector nodes with a heartbeat within the lease time",
                    c["live_nodes"])
        leader = GaugeMetricFamily("meterd_cluster_leader", "1 when this node leads the job", labels=["node", "job"])
        for job, on in sorted(c["leading"].items()):
            leader.add_metric([*node, job], int(bool(on)))
        yield leader
        yield counter("meterd_cluster_lease_losses", "leases found taken by another node at a renewal", c["lost"])
        yield counter("meterd_cluster_lease_lapses", "channels stopped because no renewal reached PostgreSQL in time",
                      c["lapsed"])
        yield counter("meterd_cluster_renew_failures", "renewals that failed (PostgreSQL out of reach)",
                      c["renew_failures"])
        taken = CounterMetricFamily("meterd_cluster_leases_taken", "leases taken, by how", labels=["node", "how"])
        taken.add_metric([*node, "free"], c["acquired"])
        taken.add_metric([*node, "dtu"], c["claimed"])
        yield taken
        yield counter("meterd_cluster_leases_released", "leases given back (balancing, DTU gone)", c["released"])


class Metrics:
    """One daemon's registry: the process collector, ``meterd_build_info`` and the node's figures."""

    def __init__(self, figures: Figures, guard: ConnectionGuard | None = None) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        Info("meterd_build", "the running meterd", registry=self.registry).info(
            {"version": __version__, "python": platform.python_version()})
        self.registry.register(NodeCollector(figures, guard))

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """A scrape: (body, content type), in the format the ``Accept`` header asks for (the
        Prometheus text format, or OpenMetrics)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


__all__ = ["ChannelCounters", "Figures", "Metrics", "NodeCollector"]
