"""The HTTP API inside the daemon: a uvicorn server on ``[api]`` host and port, stopped with it."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from meterd.collector.daemon import Daemon

log = logging.getLogger(__name__)


class ApiRuntime:
    def __init__(self, daemon: Daemon, *, clock: Callable[[], datetime]) -> None:
        import uvicorn

        from meterd.api.app import create_app

        api = daemon.config.api
        assert api is not None
        app = create_app(daemon.config.store.data_dir, clock=clock, config=daemon.config)
        self.server = uvicorn.Server(uvicorn.Config(app, host=api.host, port=api.port, log_level="warning",
                                                    access_log=False, lifespan="on"))
        self.server.install_signal_handlers = lambda: None  # the daemon owns the signals
        daemon.services.append(self.run)

    async def run(self, stop: asyncio.Event) -> None:
        serving = asyncio.create_task(self.server.serve())
        log.info("HTTP API on %s:%d", self.server.config.host, self.server.config.port)
        try:
            await asyncio.wait([serving, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.server.should_exit = True
            await asyncio.gather(serving, return_exceptions=True)
