"""What every protocol driver offers, and the extra half a frame-exchanging driver offers.

A :class:`Driver` is sans-I/O and stateless: one instance per protocol name serves every meter
of that protocol (the registry caches it).  Per-meter data (a Modbus meter's register map) is
passed in.  What the collector does with a driver depends only on :attr:`Driver.link` -- how its
requests travel on a channel -- never on the protocol's name:

* :attr:`LinkKind.FRAMES`: the driver encodes a request frame and decodes the reply frame
  (:class:`FrameDriver`); the channel carries the frames.  DL/T 645, and next Q/GDW 1376.1.
* :attr:`LinkKind.MODBUS`: pymodbus' framers on the channel (``meterd.collector.modbus``) carry
  the driver's planned register blocks.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from meterd.protocols.dlt645.catalogue import DataItem, DecodedValue
from meterd.protocols.dlt645.frame import Frame, normalize_address
from meterd.protocols.dlt645.messages import RelayCommand
from meterd.protocols.modbus.plan import ReadPlan
from meterd.protocols.modbus.schema import RegisterMap
from meterd.protocols.readspec import ReadSpec

Reads = ReadSpec | ReadPlan  # what one meter is asked for in a poll, in its protocol's terms
ALL_RELAY_COMMANDS: frozenset[RelayCommand] = frozenset(RelayCommand)


class LinkKind(enum.StrEnum):
    FRAMES = "frames"  # the driver's own request / reply frames (FrameDriver)
    MODBUS = "modbus"  # register blocks over pymodbus' framers


class Driver(abc.ABC):
    """One protocol (or one edition of it)."""

    label: str  # for people: "DL/T 645-2007"
    link: LinkKind
    items_key: str | None = None  # the poll / task key listing this protocol's explicit identifiers
    missing_noun: str = "identifier"  # "has no <noun> for <quantity>"
    by_unit_and_map: bool = False  # a meter is reached by a unit id and described by a register map
    credentials: bool = False  # the site needs the meter password / operator code (relay control)
    serial_bauds: tuple[int, ...] = (9600,)  # the line settings meters of this protocol usually use,
    serial_parities: tuple[str, ...] = ("N",)  # most common first (what a probe tries)

    def __init__(self, *, name: str) -> None:
        self.name = name  # the registry name, as the config spells it

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    @abc.abstractmethod
    def known_quantities(self) -> frozenset[str]:
        """Every canonical quantity this protocol can carry (for some meter)."""

    @abc.abstractmethod
    def plan(
        self, quantities: Sequence[str], items: Sequence[int] = (), regmap: RegisterMap | None = None
    ) -> tuple[Reads | None, list[str]]:
        """What to ask one meter for: explicit ``items`` plus what carries ``quantities``.

        Also the quantities this meter cannot carry; when there are any, the reads may be None.
        """

    def explicit_items(self, owner: Any) -> tuple[int, ...]:
        """The identifiers a poll or task lists explicitly for this protocol (its ``items_key``)."""
        return tuple(getattr(owner, self.items_key)) if self.items_key else ()

    @abc.abstractmethod
    def item_labels(self, reads: Reads) -> list[str]:
        """The requests of ``reads``, named as attempts and logs name them."""

    @abc.abstractmethod
    def describe(self, reads: Reads) -> str:
        """One line summarising ``reads`` (meters asked the same share it) for the start-up plan log."""

    def describe_meter(self, regmap: RegisterMap | None) -> str:
        """How error messages name the meter's protocol: ``dlt645-1997``, ``modbus model x``."""
        return self.name

    def nothing_to_read(self) -> str:
        """What a poll that asks a meter of this protocol for nothing should give instead."""
        key = self.items_key or "items"
        return f"give {key} = [...] or quantities = [...]"

    @abc.abstractmethod
    def relay_commands(self, regmap: RegisterMap | None) -> frozenset[RelayCommand]:
        """The relay commands a meter of this protocol (with this map) can take and confirm."""

    @abc.abstractmethod
    def relay_refusal(self, command: RelayCommand, regmap: RegisterMap | None) -> str | None:
        """Why ``command`` cannot be sent to such a meter, or None if it can."""

    @abc.abstractmethod
    def format_item(self, item: int) -> str:
        """An identifier as people write it."""

    @abc.abstractmethod
    def parse_item(self, text: str) -> int:
        """An identifier from a command line or config, checked against the catalogue.

        ProtocolError (or UnknownIdentifierError) naming it if it is malformed or unknown."""

    def normalize_address(self, text: str) -> str:
        """A meter address as the 12-digit form every store and log uses."""
        return normalize_address(text)


class FrameDriver(Driver):
    """A driver whose requests are frames it encodes and whose replies are frames it decodes.

    The reading part is table-driven (plain attributes bound to the codec's own functions, no
    wrapper calls on the hot path) so that the collector's read loop does no work of its own: :meth:`decode_reply` returns the codec's message; a message of :attr:`read_replies` (first
    frame) or :attr:`follow_up_replies` has ``di``, ``data`` and ``follow_up``; one of
    :attr:`abnormal_replies` is the meter's refusal, described by :meth:`refusal`.
    """

    link = LinkKind.FRAMES
    read_replies: tuple[type[Any], ...]
    follow_up_replies: tuple[type[Any], ...]
    abnormal_replies: tuple[type[Any], ...]
    decode_reply: Callable[[Frame], object]  # the meter's reply as the codec's message; ProtocolError if malformed
    lookup: Callable[[int], DataItem]  # the catalogue entry of an identifier
    # a read's payload -> values; the third argument (meter-local naive time, or None) dates the
    # values a meter sends without a year, where ``needs_local_now`` says there are such values
    decode: Callable[[int, bytes, datetime | None], list[DecodedValue]]
    needs_local_now: bool = False

    @abc.abstractmethod
    def read_request(self, address: str, di: int, count: int | None = None, start: datetime | None = None) -> Frame:
        """The frame that reads ``di`` (``count`` records from ``start`` where the protocol has them)."""

    @abc.abstractmethod
    def follow_up_request(self, address: str, di: int, seq: int) -> Frame:
        """The frame that asks for follow-up frame ``seq`` (1, 2, ...) of a read."""

    @abc.abstractmethod
    def refusal(self, message: Any) -> str:
        """An abnormal reply, described for people."""


    def relay_request(
        self, address: str, command: RelayCommand, password: str, operator: str, valid_until: datetime
    ) -> Frame:
        raise NotImplementedError(f"{self.label} has no relay-control command")

    def relay_reply(self, frame: Frame) -> str | None:
        """None if ``frame`` acknowledges a relay command, else why not."""
        raise NotImplementedError(f"{self.label} has no relay-control command")

    @abc.abstractmethod
    def relay_state_item(self) -> int | None:
        """The identifier whose flags confirm a relay command (None: no read-back)."""
