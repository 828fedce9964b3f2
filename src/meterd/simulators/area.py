"""A transformer area (台区) of simulated meters: a supply meter that measures its customers plus the loss.

Strategy: an :class:`Area` ties one :class:`~meterd.simulators.model.MeterModel` -- the supply meter
at the transformer's low-voltage side (台区总表) -- to its customers' models.  The supply meter has
no load profile of its own: each minute it measures what really flows to the customers
(:meth:`MeterModel.flow_at`: nothing through an open relay or a meter without supply; reversed
wiring at a customer changes what *that* meter measures, not the flow) in primary kW (each
customer's flow times its CT ratio), plus the technical loss of the lines and the transformer::

    supply = sum(customer flow x customer CT) / (1 - loss) / supply CT

so that ``(supply - sales) / supply`` -- meterd's line-loss rate -- is ``loss``.  The default loss,
5 %, sits in the 2-8 % band a low-voltage area runs at; its limits here are 0 to 30 %.  The loss
applies to reactive power alike.

What this does not model: meter clocks apart (the supply meter looks at its customers at the same
true time; a customer whose clock drifts is still summed at the true minute, so at most a minute of
its load falls on the neighbouring minute), loss growing with the square of the load (the rate is
constant), and customers' rooftop PV feeding back: the sum is net, the supply meter then exports,
and a line loss over import registers alone (meterd's) is wrong for such an area -- keep PV out of
an area whose loss is checked.

Power to the whole area: :meth:`Area.power_down` / :meth:`Area.power_up` act on the supply meter
and every customer at once (the transformer lost its feed): they all fall silent together, the
outage the master should find, and each keeps its power-down event record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Final

from meterd.simulators.model import MAX_POWER_KW, MeterModel

DEFAULT_LOSS: Final = 0.05
MAX_LOSS: Final = 0.30


class Area:
    """``supply`` measures ``customers`` plus ``loss`` (a fraction of the supply).  ``ct`` gives a
    meter's CT ratio (supply or customer; default 1): registers are secondary, the flow primary."""

    def __init__(
        self,
        name: str,
        supply: MeterModel,
        customers: Iterable[MeterModel],
        *,
        loss: float = DEFAULT_LOSS,
        ct: Mapping[str, int] | None = None,
    ) -> None:
        self.name = name
        self.supply = supply
        self.customers = tuple(customers)
        who = f"area {name}"
        if not 0.0 <= loss <= MAX_LOSS:
            raise ValueError(f"{who}: loss {loss} must be within 0..{MAX_LOSS} (a fraction of the supply)")
        addresses = [c.address for c in self.customers]
        if not addresses:
            raise ValueError(f"{who}: an area needs customers")
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"{who}: a customer is listed twice")
        if supply.address in addresses:
            raise ValueError(f"{who}: supply meter {supply.address} cannot be its own customer")
        if supply._area is not None:
            raise ValueError(f"{who}: meter {supply.address} already measures another area")
        ratios = dict(ct or {})
        bad = sorted(f"{a}={r!r}" for a, r in ratios.items() if not isinstance(r, int) or r < 1)
        if bad:
            raise ValueError(f"{who}: CT ratios must be whole numbers >= 1: {', '.join(bad)}")
        self.loss = float(loss)
        self.ct = ratios
        self._customers = tuple((c, ratios.get(c.address, 1)) for c in self.customers)
        self._scale = 1.0 / (1.0 - self.loss) / ratios.get(supply.address, 1)
        peak = sum(c.profile.peak_kw * r for c, r in self._customers) * self._scale
        if peak > MAX_POWER_KW:
            raise ValueError(f"{who}: the supply meter would measure up to {peak:.1f} kW, more than the "
                             f"{MAX_POWER_KW} kW its power registers hold; give it a CT ratio "
                             f"(ct={{{supply.address!r}: {int(peak // MAX_POWER_KW) + 1}}} or more)")
        supply._area = self
        supply._changed()

    @property
    def meters(self) -> tuple[MeterModel, ...]:
        return (self.supply, *self.customers)

    def supply_flow(self, true: datetime) -> tuple[float, float]:
        """What the supply meter measures at true time ``true`` (secondary kW, kvar)."""
        p = q = 0.0
        for meter, ratio in self._customers:
            cp, cq = meter.flow_at(true)
            p += cp * ratio
            q += cq * ratio
        return p * self._scale, q * self._scale

    def power_down(self, now: datetime) -> None:
        """The transformer loses its feed at true time ``now``: every meter of the area at once."""
        for meter in self.meters:
            meter.power_down(now)

    def power_up(self, now: datetime) -> None:
        for meter in self.meters:
            meter.power_up(now)
