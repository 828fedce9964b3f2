"""What only a running node can do for the API: the technician's on-demand read ("call now") and
live channel diagnostics.

The API does not know the collector: ``meterd.app`` hands it an object with the methods of
:class:`LiveNode` (the collector's own, see ``meterd.collector.ports``).  The read goes through
the meter's own channel, ahead of routine rounds on that bus, and its readings and attempts are
stored like a round's, so prepaid charging and quality statistics see them.  A read that cannot
be made as asked raises :class:`~meterd.errors.ReadRefusedError` (the API answers 400).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from meterd.readings import Reading
from meterd.storage.sqlite import Attempt


class LiveNode(Protocol):
    async def read_now(self, address: str, quantities: Sequence[str], *,
                       now: datetime) -> tuple[list[Reading], list[Attempt]]: ...

    def stats(self) -> dict[str, dict[str, object]]: ...

    def listener_status(self) -> dict[str, object]: ...

    def spool_size(self) -> tuple[int, int] | None: ...

    def readiness(self) -> str | None: ...  # why the collector is not ready (/readyz), or None
