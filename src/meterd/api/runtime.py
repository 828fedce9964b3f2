"""The HTTP API inside the daemon: a uvicorn server on ``[api]`` host and port, stopped with it,
its connections held to the ``[api]`` limits by :mod:`meterd.api.guard`; plus ``/metrics``
(viewer token) from the daemon's own registry, :mod:`meterd.api.metrics`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from meterd import logthrottle
from meterd.api.guard import MAX_HEAD, ConnectionGuard
from meterd.api.metrics import Figures, Metrics

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
        self.exporter = Metrics(figures, self.guard)  # this daemon's own CollectorRegistry
        self.server = _server_without_signals(uvicorn)(uvicorn.Config(app, host=api.host, port=api.port, log_level="warning",
                                                    access_log=False, lifespan="on", http=self.guard.protocol(),
                                                    timeout_keep_alive=api.keep_alive_timeout,  # type: ignore[arg-type]
                                                    backlog=backlog, h11_max_incomplete_event_size=MAX_HEAD))
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
        from starlette.responses import PlainTextResponse, Response

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
        body, content_type = await run_in_threadpool(self.exporter.render, request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type})


def render_metrics(figures: Figures, guard: ConnectionGuard | None = None) -> str:
    """The node's figures as Prometheus text exposition (a registry of their own: tests)."""
    body, _ = Metrics(figures, guard).render()
    return body.decode()
