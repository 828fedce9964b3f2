"""The channel over a real TCP socket against a scripted peer that answers with exact bytes.

The peer knows nothing of meterd: each test scripts what goes back on the wire (golden reply
bytes, split, delayed, corrupted, echoed), so the channel's timeouts, resync, address check and
retry rules are tested on real sockets.
"""

import asyncio

import pytest

from meterd.collector.channel import Channel, FailureKind, Timing, TransactionError
from meterd.collector.transports import TcpTransport
from meterd.errors import LinkTimeoutError
from meterd.protocols.dlt645.frame import Frame, encode_frame
from meterd.protocols.dlt645.messages import ReadRequest, encode_request

# read reply of 00010000 = 1234.56 kWh from meter 000000000001 (checksum worked by hand: 0x9F)
REPLY = bytes.fromhex("68 01 00 00 00 00 00 68 91 08 33 33 34 33 89 67 45 33 9F 16")
# the same reply from meter 000000000002 (checksum one higher)
REPLY_OTHER = bytes.fromhex("68 02 00 00 00 00 00 68 91 08 33 33 34 33 89 67 45 33 A0 16")
REQUEST = encode_request(ReadRequest("000000000001", 0x00010000))


class Peer:
    """A TCP server; ``script(n, request_bytes)`` returns a list of (delay, bytes) to send back."""

    def __init__(self, script):
        self.script = script
        self.requests: list[bytes] = []

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader, writer):
        try:
            while data := await reader.read(512):
                self.requests.append(data)
                for delay, chunk in self.script(len(self.requests), data):
                    if delay:
                        await asyncio.sleep(delay)
                    if chunk is None:
                        writer.close()
                        return
                    writer.write(chunk)
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def channel(port, **kw):
    kw.setdefault("timing", Timing(response=0.3, inter_byte=0.1))
    return Channel("t", TcpTransport("t", "127.0.0.1", port), **kw)


async def test_reply_after_preamble_and_noise_split_in_pieces():
    async with Peer(lambda n, req: [(0, b"\x00\x42\xfe\xfe"), (0.01, REPLY[:5]), (0.01, REPLY[5:])]) as peer:
        ch = channel(peer.port)
        frame = await ch.transact(REQUEST)
        await ch.close()
    assert frame == Frame("000000000001", 0x91, bytes.fromhex("00000100 56341200"))
    assert peer.requests[0] == bytes.fromhex("FEFEFEFE") + bytes.fromhex(
        "68 01 00 00 00 00 00 68 11 04 33 33 34 33 B3 16")
    assert ch.stats.successes == 1 and not ch.stats.failures


async def test_echo_of_the_request_is_skipped():
    async with Peer(lambda n, req: [(0, req), (0.01, REPLY)]) as peer:
        ch = channel(peer.port)
        assert (await ch.transact(REQUEST)).address == "000000000001"
        await ch.close()


async def test_no_answer_is_a_timeout_after_retries():
    async with Peer(lambda n, req: []) as peer:
        ch = channel(peer.port, retries=2)
        with pytest.raises(TransactionError) as info:
            await ch.transact(REQUEST)
        await ch.close()
    assert info.value.kind is FailureKind.TIMEOUT
    assert len(peer.requests) == 3
    assert ch.stats.failures[FailureKind.TIMEOUT] == 3 and ch.stats.retries == 2


async def test_bad_checksum_is_garbled_and_the_retry_succeeds():
    bad = REPLY[:-2] + bytes([REPLY[-2] ^ 1]) + REPLY[-1:]
    async with Peer(lambda n, req: [(0, bad)] if n == 1 else [(0, REPLY)]) as peer:
        ch = channel(peer.port, retries=1)
        frame = await ch.transact(REQUEST)
        await ch.close()
    assert frame.address == "000000000001"
    assert ch.stats.failures[FailureKind.GARBLED] == 1 and ch.stats.successes == 1


async def test_bad_frame_then_good_frame_in_one_answer():
    bad = REPLY[:-2] + b"\x00\x16"
    async with Peer(lambda n, req: [(0, bad + REPLY)]) as peer:
        ch = channel(peer.port, retries=0)
        assert (await ch.transact(REQUEST)).address == "000000000001"
        await ch.close()


async def test_wrong_address_is_recorded():
    async with Peer(lambda n, req: [(0, REPLY_OTHER)]) as peer:
        ch = channel(peer.port, retries=0)
        with pytest.raises(TransactionError) as info:
            await ch.transact(REQUEST)
        await ch.close()
    assert info.value.kind is FailureKind.WRONG_ADDRESS
    assert "000000000002" in str(info.value)


async def test_a_late_answer_is_not_taken_for_the_next_request():
    # 00010000 = 1.00 kWh from meter 000000000001 (checksum worked by hand: 0x04)
    second = bytes.fromhex("68 01 00 00 00 00 00 68 91 08 33 33 34 33 33 34 33 33 04 16")
    async with Peer(lambda n, req: [(0.3, REPLY)] if n == 1 else [(0, second)]) as peer:
        ch = channel(peer.port, retries=0, timing=Timing(response=0.15, inter_byte=0.1))
        with pytest.raises(TransactionError) as info:
            await ch.transact(REQUEST)
        await asyncio.sleep(0.3)  # the late answer lands in the receive buffer meanwhile
        frame = await ch.transact(REQUEST)
        await ch.close()
    assert info.value.kind is FailureKind.TIMEOUT
    assert frame.data[4:] == bytes.fromhex("00010000")  # the fresh answer, not the stale 1234.56


async def test_stall_in_the_middle_of_a_frame_hits_the_inter_byte_timeout():
    async with Peer(lambda n, req: [(0, REPLY[:8]), (0.5, REPLY[8:])]) as peer:
        ch = channel(peer.port, retries=0, timing=Timing(response=2.0, inter_byte=0.1))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(TransactionError) as info:
            await ch.transact(REQUEST)
        elapsed = loop.time() - t0
        await ch.close()
    assert info.value.kind is FailureKind.INCOMPLETE  # the meter started a reply: not a silent meter
    assert info.value.received == REPLY[:8]
    assert elapsed < 1.0  # gave up on the gap, not on the 2 s response timeout


async def test_connection_refused_and_peer_closing_are_link_failures():
    ch = channel(1, retries=0)  # nothing listens on port 1
    with pytest.raises(TransactionError) as info:
        await ch.transact(REQUEST)
    assert info.value.kind is FailureKind.LINK
    async with Peer(lambda n, req: [(0, None)] if n == 1 else [(0, REPLY)]) as peer:
        ch = channel(peer.port, retries=1)
        frame = await ch.transact(REQUEST)  # first attempt: peer hangs up; retry reconnects
        await ch.close()
    assert frame is not None and ch.stats.failures[FailureKind.LINK] == 1


async def test_one_timeout_timer_serves_reads_with_shorter_and_longer_timeouts():
    """A transport keeps one timeout timer across reads (re-armed lazily): a read with a shorter
    timeout than the one before still times out on time, and a read with a longer timeout is not
    cut short when the timer armed for the earlier read fires."""
    async with Peer(lambda n, req: [(0, REPLY)] if n in (1, 3) else []) as peer:
        t = TcpTransport("t", "127.0.0.1", peer.port)
        await t.open()
        loop = asyncio.get_running_loop()
        wire = encode_frame(REQUEST)
        try:
            await t.write(wire)
            assert await t.read(5.0) == REPLY  # answered at once; its timer stays armed 5 s out
            await t.write(wire)
            t0 = loop.time()
            with pytest.raises(LinkTimeoutError):
                await t.read(0.1)  # earlier than the armed timer: re-armed for it
            assert 0.09 <= loop.time() - t0 < 1.0
            await t.write(wire)
            assert await t.read(0.2) == REPLY  # arms a timer 0.2 s out
            await t.write(wire)
            t0 = loop.time()
            with pytest.raises(LinkTimeoutError):
                await t.read(0.5)  # the 0.2 s timer fires first and re-arms for this read
            assert 0.45 <= loop.time() - t0 < 1.5
        finally:
            await t.close()


async def test_a_late_answer_from_another_meter_is_skipped_and_the_right_one_taken():
    # Meter 2's answer comes after its request timed out; it arrives while the channel waits for
    # meter 1.  Before: wrong_address, and every following transaction one reply behind.
    request_other = encode_request(ReadRequest("000000000002", 0x00010000))

    def script(n, req):
        return [(0.25, REPLY_OTHER)] if n == 1 else [(0.02, REPLY)]

    async with Peer(script) as peer:
        ch = channel(peer.port, retries=0, timing=Timing(response=0.15, inter_byte=0.1))
        with pytest.raises(TransactionError) as info:
            await ch.transact(request_other)
        assert info.value.kind is FailureKind.TIMEOUT
        frame = await ch.transact(REQUEST)
        await ch.close()
    assert frame.address == "000000000001"
    assert ch.stats.successes == 1 and FailureKind.WRONG_ADDRESS not in ch.stats.failures
