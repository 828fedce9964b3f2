"""The technician's on-demand read ("call now") through the meter's own channel.

The read takes the same bus lock as routine rounds, so it never talks over them, but as an
urgent transaction that waits ahead of them; quantities resolve the way a poll resolves them.
The daemon stores what it returns like a round's (:meth:`Daemon.read_now`), so prepaid charging
and quality statistics see it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Final

from meterd.collector.channel import urgent
from meterd.collector.poll import MeterTarget, Reads, poll_meter
from meterd.collector.ports import Route
from meterd.errors import MeterdError, ReadRefusedError
from meterd.readings import Reading
from meterd.storage.sqlite import Attempt

READ_TIMEOUT: Final = 60.0  # seconds: a DTU that is offline fails its link well before this


def resolve(meter: MeterTarget, quantities: Sequence[str]) -> Reads:
    """What to ask ``meter`` for ``quantities``, through its protocol's driver;
    :class:`ReadRefusedError` naming the meter and what it cannot read."""
    driver = meter.driver
    try:
        reads, missing = driver.plan(list(quantities), (), meter.regmap)
    except (MeterdError, KeyError, ValueError) as exc:
        raise ReadRefusedError(f"meter {meter.address} ({driver.describe_meter(meter.regmap)}): {exc}") from None
    if missing or reads is None:
        raise ReadRefusedError(f"meter {meter.address} ({driver.describe_meter(meter.regmap)}) has no "
                               f"{driver.missing_noun} for {', '.join(missing)}")
    return reads


async def read(route: Route | None, address: str, quantities: Sequence[str], *,
               now: datetime) -> tuple[list[Reading], list[Attempt]]:
    """Read ``quantities`` of ``address`` over ``route`` now: (readings, attempts)."""
    if route is None:
        raise ReadRefusedError(f"meter {address} is not on a channel this daemon polls")
    reads = resolve(route.target, quantities)
    with urgent():  # ahead of routine rounds waiting for the same bus
        return await asyncio.wait_for(poll_meter(route.channel, route.target, reads, now, link=route.link),
                                      READ_TIMEOUT)
