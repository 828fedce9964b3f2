"""What the simulators' fault plans have in common: a probability per fault kind, checked alike.

A fault plan is a frozen dataclass with one probability (0..1) per fault kind, ``late_by`` seconds
for its ``late`` fault, and whatever else its simulator needs.  :class:`FaultProbabilities` gives it
the checks of those fields, :meth:`~FaultProbabilities.of` (one kind at a probability) and
:attr:`~FaultProbabilities.active`; a plan names its kinds in ``KINDS`` and the start of its
"unknown kind" message in ``UNKNOWN_KIND``.  A plan with checks of its own (the Modbus plan's
``exception_code``) calls ``FaultProbabilities.__post_init__(self)`` by name before them: the
argument-less ``super()`` does not work in a slotted dataclass.  Each simulator draws its plan's faults
(:func:`~meterd.simulators.dlt645.fires`) from one seeded ``random.Random`` of its own, in an order
of its own: this module draws nothing.
"""

from __future__ import annotations

from typing import ClassVar, Self

__all__ = ["FaultProbabilities"]


class FaultProbabilities:
    """Base of a frozen fault-plan dataclass: its ``KINDS`` fields are probabilities, ``late_by``
    seconds.  The dataclass calls :meth:`__post_init__`, which checks them (ValueError)."""

    __slots__ = ()

    KINDS: ClassVar[tuple[str, ...]]
    UNKNOWN_KIND: ClassVar[str]  # of() says "<UNKNOWN_KIND> 'smoke'; known: <KINDS>"
    late_by: float

    def __post_init__(self) -> None:
        for kind in self.KINDS:
            p = getattr(self, kind)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"fault probability {kind}={p} must be within 0..1")
        if self.late_by < 0:
            raise ValueError(f"late_by={self.late_by} must be >= 0 seconds")

    @classmethod
    def of(cls, kind: str, probability: float = 1.0, **extra: float) -> Self:
        """One fault kind at ``probability`` (and any other field in ``extra``)."""
        if kind not in cls.KINDS:
            raise ValueError(f"{cls.UNKNOWN_KIND} {kind!r}; known: {', '.join(cls.KINDS)}")
        return cls(**{kind: probability, **cls._extra(extra)})

    @classmethod
    def _extra(cls, extra: dict[str, float]) -> dict[str, float]:
        """The other fields given to :meth:`of`, as the plan takes them (a plan with a field of its
        own to check or convert first overrides this); here, unchanged."""
        return extra

    @property
    def active(self) -> dict[str, float]:
        """The kinds that may fire, with their probabilities."""
        return {k: getattr(self, k) for k in self.KINDS if getattr(self, k)}
