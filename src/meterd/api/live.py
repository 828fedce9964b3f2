"""What only the running daemon can do for the API: the technician's on-demand read ("call now").

The read goes through the meter's own channel -- the same bus lock as routine rounds, so it never
talks over them, but as an urgent transaction that waits ahead of them -- resolved the way a poll
resolves quantities.  Its readings and attempts go to
the daemon's writer like a round's, so prepaid charging and quality statistics see them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from meterd.errors import MeterdError

if TYPE_CHECKING:
    from meterd.collector.daemon import Daemon

READ_TIMEOUT = 60.0  # seconds: a DTU that is offline fails its link well before this


class ReadRefused(MeterdError):
    """The read cannot be made as asked (not on a channel of this daemon, an unknown quantity)."""


def resolve(meter: Any, quantities: Sequence[str]) -> Any:
    """What to ask ``meter`` (a MeterTarget) for ``quantities``, in its protocol."""
    from meterd.protocols import modbus
    from meterd.protocols.readspec import resolve_dlt645

    if meter.protocol == "modbus":
        try:
            return modbus.compile_plan(meter.regmap, list(quantities))
        except (MeterdError, KeyError, ValueError) as exc:
            raise ReadRefused(f"meter {meter.address} (modbus, map {getattr(meter.regmap, 'name', '?')}): "
                              f"{exc}") from None
    spec, missing = resolve_dlt645(list(quantities), (), edition=meter.protocol)
    if missing:
        raise ReadRefused(f"meter {meter.address} ({meter.protocol}) has no identifier for {', '.join(missing)}")
    return spec


async def call_now(daemon: Daemon, address: str, quantities: Sequence[str], *, now: datetime) -> tuple[list, list]:
    """Read ``quantities`` of ``address`` now; (readings, attempts), both also handed to the writer."""
    from meterd.collector.channel import urgent
    from meterd.collector.poll import poll_meter

    route = daemon.route(address)
    if route is None:
        raise ReadRefused(f"meter {address} is not on a channel this daemon polls")
    channel, meter, link = route
    reads = resolve(meter, quantities)
    with urgent():  # ahead of routine rounds waiting for the same bus
        readings, attempts = await asyncio.wait_for(poll_meter(channel, meter, reads, now, link=link), READ_TIMEOUT)
    daemon.ingest(readings, attempts)
    return readings, attempts
