"""Load profiles, time-of-use schedules and seeded noise for the simulated meters (pure data).

:class:`LoadProfile` says how much a customer draws at each hour of the meter's day;
:class:`TouSchedule` says which tariff rate (1..4 = sharp, peak, flat, valley) counts each minute.
:func:`noise` is a stateless seeded hash, so a meter's jitter at a given minute is the same however
often, and in what chunks, the meter is advanced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

RATES: Final = 4  # rate1..4 = sharp, peak, flat, valley

# A plausible Chinese urban household, kW by hour: low at night, a morning bump, the evening peak.
RESIDENTIAL_KW: Final = (
    0.35, 0.28, 0.25, 0.24, 0.24, 0.30, 0.55, 0.90, 0.70, 0.50, 0.45, 0.60,
    0.75, 0.55, 0.45, 0.45, 0.50, 0.85, 1.40, 1.80, 1.70, 1.40, 0.95, 0.55,
)  # fmt: skip

# A typical provincial TOU day (sharp inside the peaks): (start hh:mm, rate).
CHINA_TOU: Final = (
    ("00:00", 4), ("07:00", 3), ("10:00", 2), ("11:00", 1), ("13:00", 2), ("15:00", 3),
    ("18:00", 2), ("19:00", 1), ("21:00", 3), ("23:00", 4),
)  # fmt: skip

# --- seeded noise ------------------------------------------------------------------------------

_M64: Final = (1 << 64) - 1


def mix(x: int) -> int:
    """splitmix64 finaliser: a well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def noise(key: int, stream: int, n: int) -> float:
    """A deterministic value in [-1, 1) for ``(key, stream, n)``; no RNG state to carry around."""
    h = mix(key ^ mix(((stream << 40) + n) & _M64))
    return (h >> 11) * (2.0 / (1 << 53)) - 1.0


# --- profile and tariff ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadProfile:
    """Load by hour of the (meter) day in kW, times ``scale``, with +-``jitter`` per minute.

    ``power_factor`` applies to the load; ``capacitive_hours`` are hours when the load is slightly
    capacitive (Q4 instead of Q1).  ``pv_peak_kw`` adds rooftop PV that can make the meter export.
    """

    hourly_kw: tuple[float, ...] = RESIDENTIAL_KW
    scale: float = 1.0
    jitter: float = 0.15
    power_factor: float = 0.92
    pv_peak_kw: float = 0.0
    capacitive_hours: frozenset[int] = frozenset({1, 2, 3, 4})

    def __post_init__(self) -> None:
        if len(self.hourly_kw) != 24 or any(v < 0 for v in self.hourly_kw):
            raise ValueError(f"hourly_kw needs 24 values >= 0, got {self.hourly_kw!r}")
        object.__setattr__(self, "hourly_kw", tuple(float(v) for v in self.hourly_kw))
        if self.scale <= 0:
            raise ValueError(f"scale {self.scale} must be > 0")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter {self.jitter} must be in [0, 1)")
        if not 0 < self.power_factor <= 1:
            raise ValueError(f"power_factor {self.power_factor} must be in (0, 1]")
        if self.pv_peak_kw < 0:
            raise ValueError(f"pv_peak_kw {self.pv_peak_kw} must be >= 0")
        if not set(self.capacitive_hours) <= set(range(24)):
            raise ValueError(f"capacitive_hours {sorted(self.capacitive_hours)} must be hours 0..23")

    @property
    def peak_kw(self) -> float:
        """The largest load (or export) the profile can produce, jitter included."""
        return max(max(self.hourly_kw) * self.scale * (1 + self.jitter), self.pv_peak_kw)

    def load_kw(self, hour: int, jitter: float = 0.0) -> float:
        """The load of one minute in ``hour``; ``jitter`` in [-1, 1) scales the profile's jitter."""
        return self.hourly_kw[hour] * self.scale * (1.0 + self.jitter * jitter)


@dataclass(frozen=True, slots=True)
class TouSchedule:
    """A day of time-of-use periods: ``(start "hh:mm", rate)`` pairs, rate 1..4.

    The day starts with the last period if the first one does not start at 00:00.
    """

    periods: tuple[tuple[str, int], ...] = CHINA_TOU
    _starts: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _rates: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parsed: list[tuple[int, int]] = []
        for start, rate in self.periods:
            try:
                hh, mm = (int(p) for p in str(start).split(":"))
            except ValueError:
                raise ValueError(f"TOU period start {start!r} is not hh:mm") from None
            if not (0 <= hh < 24 and 0 <= mm < 60):
                raise ValueError(f"TOU period start {start!r} is not a time of day")
            if not 1 <= int(rate) <= RATES:
                raise ValueError(f"TOU period {start} has rate {rate}; rates are 1..{RATES}")
            parsed.append((hh * 60 + mm, int(rate)))
        if not parsed:
            raise ValueError("a TOU schedule needs at least one period")
        parsed.sort()
        starts = tuple(s for s, _ in parsed)
        if len(set(starts)) != len(starts):
            raise ValueError(f"TOU periods {self.periods!r} start twice at the same time")
        object.__setattr__(self, "_starts", starts)
        object.__setattr__(self, "_rates", tuple(r for _, r in parsed))

    @classmethod
    def single(cls, rate: int = 3) -> TouSchedule:
        """One rate all day (a meter without TOU still counts in one rate register)."""
        return cls((("00:00", rate),))

    @classmethod
    def parse(cls, text: str) -> TouSchedule:
        """``"00:00=4,07:00=3,10:00=2"`` -> schedule."""
        pairs = []
        for part in text.split(","):
            start, _, rate = part.strip().partition("=")
            if not rate.strip().isdigit():
                raise ValueError(f"TOU period {part!r} is not hh:mm=rate")
            pairs.append((start.strip(), int(rate)))
        return cls(tuple(pairs))

    def rate_at(self, when: datetime) -> int:
        return self.rate_of_minute(when.hour * 60 + when.minute)

    def rate_of_minute(self, minute_of_day: int) -> int:
        rate = self._rates[-1]
        for start, r in zip(self._starts, self._rates):
            if start > minute_of_day:
                break
            rate = r
        return rate
