"""The HTTP API inside the daemon: a uvicorn server on ``[api]`` host and port, stopped with it,
its connections held to the ``[api]`` limits by :mod:`meterd.api.guard`; plus ``/metrics`` in the
Prometheus text format (viewer token): per-channel transactions, failures by kind, latency,
requests waiting for the bus, rounds and overruns; spool size; commands by state; prepaid passes;
open anomalies and outages; API connections and what the guard closed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

from meterd import logthrottle
from meterd.api.guard import ConnectionGuard

if TYPE_CHECKING:
    from meterd.api.live import LiveNode

log = logging.getLogger(__name__)

FD_RESERVE_SHARE: Final = 2  # the API may use at most 1/2 of the process's file descriptors


MAX_BACKLOG: Final = 2048  # uvicorn's default


def fd_budget(configured: int) -> tuple[int, int]:
    """The API's connection cap and listen backlog within the process's soft ``RLIMIT_NOFILE``.

    The cap is ``[api] max_connections``, lowered to half the file descriptors where that is
    smaller: the other half stays for DTUs, serial ports, MQTT, the stores and their files.  The
    backlog matters too: asyncio accepts up to ``backlog`` connections in one go, before any of
    them reaches the guard that closes the surplus, so a burst of 2,000 connects would take 2,000
    descriptors at once; it is kept to half of what the cap leaves of the API's half."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured, MAX_BACKLOG
    budget = max(16, soft // FD_RESERVE_SHARE)
    cap = configured
    if configured > budget:
        log.warning("HTTP API: max_connections %d lowered to %d, half of this process's %d file descriptors "
                    "(raise LimitNOFILE / ulimit -n for more)", configured, budget, soft)
        cap = budget
    backlog = min(MAX_BACKLOG, max(16, (soft - soft // 4 - cap) // 2))
    return cap, backlog


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


@dataclass(frozen=True, slots=True)
class Figures:
    """What ``/metrics`` shows, handed over by ``meterd.app``: each is asked at scrape time (in a
    worker thread); the parts a node does not run are ``None``."""

    channels: Callable[[], Sequence[ChannelCounters]]
    spool: Callable[[], tuple[int, int] | None]
    commands: Callable[[], dict[str, int]] | None = None  # relay commands by state
    prepaid_passes: Callable[[], int] | None = None
    open_anomalies: Callable[[], int] | None = None
    open_outages: Callable[[], int] | None = None
    cluster: Callable[[], Mapping[str, Any]] | None = None  # collector nodes: ClusterNode.figures


def _server_without_signals(uvicorn: Any) -> Any:
    """uvicorn's ``Server`` that leaves SIGINT/SIGTERM alone: the daemon owns the signals and stops
    the API itself.  (uvicorn 0.29+ takes them in ``capture_signals`` while serving; the older
    ``install_signal_handlers`` hook is gone, and assigning it did nothing.)"""

    class Server(uvicorn.Server):  # type: ignore[misc]  # uvicorn is imported lazily, untyped here
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server


class ApiRuntime:
    def __init__(self, config: Any, *, clock: Callable[[], datetime], live: LiveNode, figures: Figures,
                 sync: Any = None) -> None:
        """``config``: the site config (its ``[api]`` section); ``live``: the collector's on-demand
        reads and diagnostics; ``sync``: the billing link's runtime, when the node runs one."""
        import uvicorn

        from meterd.api.app import create_app

        api = config.api
        assert api is not None
        from starlette.routing import Route

        app = create_app(config.store.state, clock=clock, config=config, live=live, sync=sync)
        self.where = config.store.state
        self.figures = figures
        app.router.routes.insert(0, Route("/metrics", self.metrics, methods=["GET"]))
        cap, backlog = fd_budget(api.max_connections)
        self.guard = ConnectionGuard(cap, api.header_timeout)
        self.server = _server_without_signals(uvicorn)(uvicorn.Config(app, host=api.host, port=api.port, log_level="warning",
                                                    access_log=False, lifespan="on", http=self.guard.protocol(),
                                                    timeout_keep_alive=api.keep_alive_timeout,  # type: ignore[arg-type]
                                                    backlog=backlog))
        logthrottle.install("uvicorn.error")  # 'Invalid HTTP request received.' once per minute, with a count

    retry_bind = 30.0  # seconds between attempts to listen while the port is taken

    def _listen(self) -> socket.socket:
        host, port = self.server.config.host, self.server.config.port
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        return sock

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop``.  A port that is taken does not stop the daemon: collection and
        control go on, the error is logged and listening is tried again every :attr:`retry_bind`."""
        host, port = self.server.config.host, self.server.config.port
        while True:
            try:
                sock = self._listen()
                break
            except OSError as exc:
                log.error("HTTP API: cannot listen on %s:%d (%s); the daemon goes on without it and tries again "
                          "in %.0f s", host, port, exc.strerror or exc, self.retry_bind)
            try:
                await asyncio.wait_for(stop.wait(), self.retry_bind)
                return
            except TimeoutError:
                pass
        self.server.should_exit = False  # a restart after a failure serves again
        serving = asyncio.create_task(self.server.serve(sockets=[sock]))
        log.info("HTTP API on %s:%d", host, port)
        try:
            await asyncio.wait([serving, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
            if serving.done() and not stop.is_set():
                serving.result()  # its exception, for the daemon's supervisor to log (and restart)
                raise RuntimeError(f"the HTTP API server on {host}:{port} stopped by itself")
        finally:
            self.server.should_exit = True
            await asyncio.gather(serving, return_exceptions=True)
            sock.close()

    async def metrics(self, request):  # type: ignore[no-untyped-def]
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import PlainTextResponse

        from meterd.api.tokens import Role, TokenStore

        scheme, _, secret = request.headers.get("authorization", "").partition(" ")
        found = None
        if scheme.lower() == "bearer" and secret.strip():
            def verify():
                with TokenStore(self.where) as tokens:
                    return tokens.verify(secret.strip())
            found = await run_in_threadpool(verify)
        if found is None:
            return PlainTextResponse("a viewer token is required\n", status_code=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="meterd"'})
        if not Role(found[2]).allows(Role.VIEWER):
            return PlainTextResponse("forbidden\n", status_code=403)
        text = await run_in_threadpool(render_metrics, self.figures, self.guard)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(figures: Figures, guard: ConnectionGuard | None = None) -> str:
    """The node's live figures as Prometheus text exposition."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            shown = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{shown}}} {value}" if shown else f"{name} {value}")

    if guard is not None:
        metric("meterd_api_connections", "gauge", "open HTTP API connections", [({}, guard.open)])
        metric("meterd_api_connections_closed_total", "counter", "HTTP API connections the guard closed or refused",
               [({"reason": "evicted"}, guard.evicted), ({"reason": "refused"}, guard.refused),
                ({"reason": "header_timeout"}, guard.header_timeouts)])
    channels = figures.channels()
    metric("meterd_channel_transactions_total", "counter", "transactions per channel",
           [({"channel": c.name}, c.transactions) for c in channels])
    metric("meterd_channel_successes_total", "counter", "successful transactions per channel",
           [({"channel": c.name}, c.successes) for c in channels])
    metric("meterd_channel_failures_total", "counter", "failed attempts per channel and kind",
           [({"channel": c.name, "kind": k}, n) for c in channels for k, n in c.failures])
    metric("meterd_channel_latency_mean_seconds", "gauge", "mean reply latency per channel",
           [({"channel": c.name}, round(c.latency_mean, 6)) for c in channels])
    metric("meterd_channel_latency_max_seconds", "gauge", "longest reply latency per channel",
           [({"channel": c.name}, round(c.latency_max, 6)) for c in channels])
    metric("meterd_channel_waiting", "gauge", "transactions waiting for the bus per channel",
           [({"channel": c.name}, c.waiting) for c in channels])
    metric("meterd_channel_rounds_total", "counter", "poll rounds per channel",
           [({"channel": c.name}, c.rounds) for c in channels])
    metric("meterd_channel_overruns_total", "counter", "poll ticks missed because a round overran",
           [({"channel": c.name}, c.overruns) for c in channels])
    spool = figures.spool()
    if spool is not None:
        records, size = spool
        metric("meterd_spool_records", "gauge", "readings waiting in the store's spool", [({}, records)])
        metric("meterd_spool_bytes", "gauge", "size of the store's spool", [({}, size)])
    if figures.commands is not None and figures.prepaid_passes is not None:
        counts = figures.commands()
        metric("meterd_commands", "gauge", "relay commands by state", [({"state": k}, v) for k, v in sorted(counts.items())])
        metric("meterd_prepaid_passes_total", "counter", "charging and policy passes", [({}, figures.prepaid_passes())])
    if figures.open_anomalies is not None and figures.open_outages is not None:
        metric("meterd_anomalies_open", "gauge", "open anomaly events", [({}, figures.open_anomalies())])
        metric("meterd_outages_open", "gauge", "outages going on", [({}, figures.open_outages())])
    if figures.cluster is not None:
        c = figures.cluster()
        node = {"node": str(c["node"])}
        metric("meterd_cluster_channels_held", "gauge", "channel leases this collector node holds",
               [(node, c["channels_held"])])
        metric("meterd_cluster_fair_share", "gauge", "channels per live node (ceil)", [(node, c["share"])])
        metric("meterd_cluster_live_nodes", "gauge", "collector nodes with a heartbeat within the lease time",
               [(node, c["live_nodes"])])
        metric("meterd_cluster_leader", "gauge", "1 when this node leads the job",
               [({**node, "job": job}, int(bool(on))) for job, on in sorted(c["leading"].items())])
        metric("meterd_cluster_lease_losses_total", "counter", "leases found taken by another node at a renewal",
               [(node, c["lost"])])
        metric("meterd_cluster_lease_lapses_total", "counter",
               "channels stopped because no renewal reached PostgreSQL in time", [(node, c["lapsed"])])
        metric("meterd_cluster_renew_failures_total", "counter", "renewals that failed (PostgreSQL out of reach)",
               [(node, c["renew_failures"])])
        metric("meterd_cluster_leases_taken_total", "counter", "leases taken, by how",
               [({**node, "how": "free"}, c["acquired"]), ({**node, "how": "dtu"}, c["claimed"])])
        metric("meterd_cluster_leases_released_total", "counter", "leases given back (balancing, DTU gone)",
               [(node, c["released"])])
    return "\n".join(lines) + "\n"
