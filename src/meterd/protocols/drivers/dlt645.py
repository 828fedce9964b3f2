"""DL/T 645, both editions, as one driver: what differs between 2007 and 1997 is a table.

=========================  ===============================  ===============================
                           2007 (main)                      1997 (older meters)
=========================  ===============================  ===============================
identifier                 4 bytes, ``00010000``            2 bytes, ``9010``
catalogue                  :mod:`..dlt645.catalogue`        :mod:`..dlt645.catalogue1997`
read / follow-up           11 / 12 (with a sequence)        01 / 02
poll key for identifiers   ``items``                        ``items_1997``
relay control              1C, read back by 04000503        none (refused, never sent)
=========================  ===============================  ===============================

Quantities are resolved to identifiers by :func:`meterd.protocols.readspec.resolve_dlt645`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any, Final

from meterd.errors import ProtocolError
from meterd.protocols.dlt645 import catalogue, catalogue1997, messages, v1997
from meterd.protocols.dlt645.catalogue import DataItem, DecodedValue
from meterd.protocols.dlt645.frame import Frame
from meterd.protocols.dlt645.messages import RelayCommand
from meterd.protocols.drivers.base import ALL_RELAY_COMMANDS, FrameDriver, Reads
from meterd.protocols.modbus.schema import RegisterMap
from meterd.protocols.readspec import ReadSpec, dlt645_1997_index, dlt645_index, resolve_dlt645

STATUS_WORD_3: Final = 0x04000503
READ_FRAMES_KEPT: Final = 65536


@dataclass(frozen=True, slots=True)
class Edition:
    """Where the two editions differ."""

    year: int
    label: str
    digits: int  # hex digits of an identifier
    items_key: str
    index: Callable[[], Mapping[str, int]]
    parse_di: Callable[[str], int]
    lookup: Callable[[int], DataItem]
    relay_commands: frozenset[RelayCommand]
    relay_state_item: int | None
    read: Callable[[str, int], Frame]  # a plain read request
    follow_up: Callable[[str, int, int], Frame]  # follow-up ``seq`` of a read
    decode_reply: Callable[[Frame], object]
    read_replies: tuple[type, ...]
    follow_up_replies: tuple[type, ...]  # 1997 meters may answer a follow-up with an 81 frame
    abnormal_replies: tuple[type, ...]
    refusal: Callable[[Any], str]
    decode: Callable[[int, bytes, datetime | None], list[DecodedValue]]
    needs_local_now: bool  # replies hold dates without a year (1997 demand times)


EDITIONS: Final = {
    2007: Edition(
        2007, "DL/T 645-2007", 8, "items", dlt645_index, messages.parse_di, catalogue.lookup,
        ALL_RELAY_COMMANDS, STATUS_WORD_3,
        read=lambda address, di: messages.encode_request(messages.ReadRequest(address, di)),
        follow_up=lambda address, di, seq: messages.encode_request(messages.ReadFollowUpRequest(address, di, seq)),
        decode_reply=messages.decode_response,
        read_replies=(messages.ReadResponse,),
        follow_up_replies=(messages.ReadFollowUpResponse,),
        abnormal_replies=(messages.AbnormalResponse,),
        refusal=lambda message: message.error.describe(),
        decode=catalogue.decode,
        needs_local_now=False,
    ),
    1997: Edition(
        1997, "DL/T 645-1997", 4, "items_1997", dlt645_1997_index, v1997.parse_di97, catalogue1997.lookup97,
        frozenset(), None,
        read=lambda address, di: v1997.encode_request97(v1997.ReadRequest97(address, di)),
        follow_up=lambda address, di, seq: v1997.encode_request97(v1997.ReadFollowUpRequest97(address, di)),
        decode_reply=v1997.decode_response97,
        read_replies=(v1997.ReadResponse97,),
        follow_up_replies=(v1997.ReadFollowUpResponse97, v1997.ReadResponse97),
        abnormal_replies=(v1997.AbnormalResponse97,),
        refusal=lambda message: message.describe(),
        decode=lambda di, payload, now: catalogue1997.decode97(di, payload, now=now),
        needs_local_now=True,
    ),
}


class Dlt645Driver(FrameDriver):
    credentials = True  # both editions, as before the registry: a DL/T 645 site is asked for them
    serial_bauds = (2400, 1200, 9600)  # RS-485 buses run 8E1
    serial_parities = ("E",)

    def __init__(self, *, name: str, edition: int) -> None:
        super().__init__(name=name)
        self.edition = EDITIONS[edition]
        self.label = self.edition.label
        self.items_key = self.edition.items_key
        self._fmt = f"{{:0{self.edition.digits}X}}"
        self.format_item = self._fmt.format  # type: ignore[method-assign]  # per read: no wrapper
        self._frames: dict[tuple[str, int], Frame] = {}
        self.read_replies = self.edition.read_replies
        self.follow_up_replies = self.edition.follow_up_replies
        self.abnormal_replies = self.edition.abnormal_replies
        # the codec's own function, not a wrapper: this runs once per reply on the hot path
        self.decode_reply = self.edition.decode_reply
        self.lookup = self.edition.lookup
        self.decode = self.edition.decode
        self.needs_local_now = self.edition.needs_local_now

    # --- planning -------------------------------------------------------------------------------

    @cached_property
    def _quantities(self) -> frozenset[str]:
        return frozenset(self.edition.index())

    def known_quantities(self) -> frozenset[str]:
        return self._quantities

    def plan(
        self, quantities: Sequence[str], items: Sequence[int] = (), regmap: RegisterMap | None = None
    ) -> tuple[Reads | None, list[str]]:
        return resolve_dlt645(quantities, items, edition=self.name)

    def item_labels(self, reads: Reads) -> list[str]:
        assert isinstance(reads, ReadSpec)
        return [self._fmt.format(di) for di in reads.items]

    def describe(self, reads: Reads) -> str:
        return f"{self.name} items {' '.join(self.item_labels(reads))}"

    def format_item(self, item: int) -> str:  # replaced by the bound str.format in __init__
        return self._fmt.format(item)

    def parse_item(self, text: str) -> int:
        di = self.edition.parse_di(text)
        self.edition.lookup(di)
        return di

    # --- control --------------------------------------------------------------------------------

    def relay_commands(self, regmap: RegisterMap | None) -> frozenset[RelayCommand]:
        return self.edition.relay_commands

    def relay_refusal(self, command: RelayCommand, regmap: RegisterMap | None) -> str | None:
        if command in self.edition.relay_commands:
            return None
        return f"{self.label} defines no relay-control command; this meter cannot be switched remotely"

    def relay_state_item(self) -> int | None:
        return self.edition.relay_state_item

    def relay_request(
        self, address: str, command: RelayCommand, password: str, operator: str, valid_until: datetime
    ) -> Frame:
        if command not in self.edition.relay_commands:
            raise ProtocolError(f"{self.label} has no relay-control command")
        request = messages.RelayControlRequest(address, command, password, operator, valid_until)
        return messages.encode_request(request)

    def relay_reply(self, frame: Frame) -> str | None:
        message = messages.decode_response(frame)
        if isinstance(message, messages.AbnormalResponse):
            return f"refused: {message.error.describe()}"
        if not isinstance(message, messages.AckResponse):
            return f"unexpected reply {message!r}"
        return None

    # --- reading --------------------------------------------------------------------------------

    def read_request(self, address: str, di: int, count: int | None = None, start: datetime | None = None) -> Frame:
        """Plain reads are encoded once per meter and identifier: a poll asks every meter the same
        things every round."""
        if count is not None or start is not None:
            return messages.encode_request(messages.ReadRequest(address, di, count, start))
        key = (address, di)
        frame = self._frames.get(key)
        if frame is None:
            frame = self.edition.read(address, di)
            if len(self._frames) >= READ_FRAMES_KEPT:
                self._frames.clear()
            self._frames[key] = frame
        return frame

    def follow_up_request(self, address: str, di: int, seq: int) -> Frame:
        return self.edition.follow_up(address, di, seq)

    def refusal(self, message: Any) -> str:
        return self.edition.refusal(message)

