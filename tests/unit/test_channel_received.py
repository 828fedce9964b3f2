"""What a channel keeps of the bytes that came (TransactionError.received, the trace's rx and drop
events) when a reply comes in one chunk -- kept as the transport handed it -- and in several,
where the pieces are joined; the long way is the concatenation of every chunk since the request
(or since a skipped reply from another meter)."""

from __future__ import annotations

import asyncio

import pytest

from meterd.collector.channel import Channel, FailureKind, Timing, TraceEvent, TransactionError
from meterd.collector.transports.base import Transport
from meterd.protocols.dlt645.frame import PREAMBLE, encode_frame
from meterd.protocols.dlt645.messages import ReadRequest, ReadResponse, encode_request, encode_response

ADDRESS, OTHER = "000000000042", "000000000043"
REQUEST = encode_request(ReadRequest(ADDRESS, 0x00010000))
REPLY = PREAMBLE + encode_frame(encode_response(ReadResponse(ADDRESS, 0x00010000, bytes.fromhex("56341200"))))
STRAY = PREAMBLE + encode_frame(encode_response(ReadResponse(OTHER, 0x00010000, bytes.fromhex("56341200"))))


class _Pieces(Transport):
    """Answers every request with ``chunks``, each read on its own (the next arrives only once the
    one before was read: never joined, however loaded the machine), each a fresh bytearray (a
    transport may hand out a mutable buffer: the channel must not keep it)."""

    def __init__(self, chunks: list[bytes]) -> None:
        super().__init__("pieces")
        self.chunks = chunks
        self.handed: list[bytearray] = []
        self._left: list[bytes] = []

    @property
    def is_open(self) -> bool:
        return True

    async def open(self) -> None:
        pass

    async def write(self, data: bytes) -> None:
        self._left = list(self.chunks)
        self._next()

    def _next(self) -> None:
        if self._left:
            asyncio.get_running_loop().call_later(0.001, self._received, self._left.pop(0))

    async def read(self, timeout: float) -> bytes:
        data = await super().read(timeout)
        self._next()
        piece = bytearray(data)
        self.handed.append(piece)
        return piece  # type: ignore[return-value]

    async def close(self) -> None:
        pass


async def _run(chunks: list[bytes]) -> tuple[object, list[TraceEvent], _Pieces]:
    events: list[TraceEvent] = []
    transport = _Pieces(chunks)
    ch = Channel("c", transport, timing=Timing(response=0.5, inter_byte=0.05), retries=0, trace=events.append)
    try:
        got: object = await ch.transact(REQUEST)
    except TransactionError as exc:
        got = exc
    for piece in transport.handed:
        piece[:] = b"\xee" * len(piece)  # whatever the transport does with its buffers afterwards
    return got, events, transport


@pytest.mark.parametrize("cut", [[len(REPLY)], [3, len(REPLY)], [1, 9, 12, len(REPLY)]])
async def test_a_reply_in_one_or_more_chunks_is_traced_whole(cut: list[int]) -> None:
    chunks = [REPLY[a:b] for a, b in zip([0, *cut], cut)]
    got, events, _ = await _run(chunks)
    assert not isinstance(got, TransactionError)
    (rx,) = [e for e in events if e.direction == "rx"]
    assert rx.data == REPLY and type(rx.data) is bytes


@pytest.mark.parametrize("cut", [[8], [3, 8], [1, 2, 8]])
async def test_a_reply_that_stops_short_keeps_every_byte_that_came(cut: list[int]) -> None:
    chunks = [REPLY[a:b] for a, b in zip([0, *cut], cut)]
    got, events, _ = await _run(chunks)
    assert isinstance(got, TransactionError)
    assert got.kind is FailureKind.INCOMPLETE
    assert got.received == REPLY[:8] and type(got.received) is bytes
    (drop,) = [e for e in events if e.direction == "drop"]
    assert drop.data == REPLY[:8]


@pytest.mark.parametrize("split", [False, True])
async def test_another_meters_reply_is_dropped_and_the_count_starts_again(split: bool) -> None:
    chunks = [STRAY[:5], STRAY[5:], REPLY[:6], REPLY[6:]] if split else [STRAY, REPLY]
    got, events, _ = await _run(chunks)
    assert not isinstance(got, TransactionError)
    drops = [e.data for e in events if e.direction == "drop"]
    assert drops == [STRAY]
    (rx,) = [e for e in events if e.direction == "rx"]
    assert rx.data == REPLY


@pytest.mark.parametrize("strays", [1, 2])
async def test_a_reply_right_behind_another_meters_in_the_same_bytes_is_taken(strays: int) -> None:
    """A late reply of another meter and ours in one read (a DTU's TCP segment; a read that found
    both waiting): the attempt failed with wrong_address, ours never looked at."""
    joined = STRAY * strays + REPLY
    got, events, _ = await _run([joined])
    assert not isinstance(got, TransactionError), got
    (drop,) = [e for e in events if e.direction == "drop"]
    assert drop.data == joined and "the reply followed in these bytes" in drop.note
    (rx,) = [e for e in events if e.direction == "rx"]
    assert rx.data == joined and rx.frame is not None


async def test_only_another_meters_reply_is_still_wrong_address() -> None:
    got, _, _ = await _run([STRAY + STRAY])
    assert isinstance(got, TransactionError) and got.kind is FailureKind.WRONG_ADDRESS


class _Babbler(Transport):
    """A meter babbling on the bus: a few bytes of noise every few milliseconds, for ever, each
    well within the inter-byte timeout, and never a frame."""

    def __init__(self, piece: bytes, every: float) -> None:
        super().__init__("babbler")
        self.piece, self.every = piece, every
        self._next_piece: asyncio.TimerHandle | None = None

    @property
    def is_open(self) -> bool:
        return True

    async def open(self) -> None:
        pass

    async def write(self, data: bytes) -> None:
        self._babble()

    def _babble(self) -> None:
        self._received(self.piece)
        self._next_piece = asyncio.get_running_loop().call_later(self.every, self._babble)

    async def close(self) -> None:
        if self._next_piece is not None:
            self._next_piece.cancel()


@pytest.mark.parametrize("bytes_cap, seconds_cap, says", [(4096, 60.0, "at most 4,096 bytes"),
                                                            (1 << 20, 0.3, "or 0.3 s a reply")])
async def test_a_babbling_meter_fails_the_attempt_instead_of_holding_the_bus(bytes_cap, seconds_cap, says) -> None:
    """Each chunk came within the inter-byte timeout, so the attempt never ended and kept every byte:
    the whole bus stalled behind one broken meter."""
    transport = _Babbler(b"\xaa\x55" * 20, 0.002)
    events: list[TraceEvent] = []
    ch = Channel("c", transport, timing=Timing(response=0.5, inter_byte=0.05), retries=0, trace=events.append)
    ch.max_reply_bytes, ch.max_reply_seconds = bytes_cap, seconds_cap
    try:
        with pytest.raises(TransactionError) as err:
            await asyncio.wait_for(ch.transact(REQUEST), 20)
    finally:
        await transport.close()
    assert err.value.kind is FailureKind.GARBLED and "no reply among them" in str(err.value) and says in str(err.value)
    assert 0 < len(err.value.received) <= 1024
    assert [e.note for e in events if e.direction == "drop"] == ["babbling: no reply"]
