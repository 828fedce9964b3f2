"""BufferedSocket, the socket paho reads and writes through when the event loop drives it.

paho reads a packet as a type byte, the length bytes and the body, each with its own ``recv``;
the buffer must hand out exactly those pieces from one kernel read, report EOF and EAGAIN as the
socket would, and gather a flush's packets into one write without losing or reordering any.
"""

import socket

import pytest
from paho.mqtt.enums import CallbackAPIVersion

from meterd.collector.paho_loop import BufferedSocket, Client

# PUBLISH QoS 0 of "a/b" with payload "hi", then PINGRESP
PUBLISH = bytes.fromhex("30 07 00 03 61 2f 62 68 69")
PINGRESP = bytes.fromhex("d0 00")


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    yield BufferedSocket(a), b
    a.close()
    b.close()


def test_small_reads_come_from_one_kernel_read(pair):
    sock, peer = pair
    peer.sendall(PUBLISH + PINGRESP)
    assert sock.recv(1) == PUBLISH[:1]
    assert sock.buffered == len(PUBLISH) + len(PINGRESP) - 1  # everything was taken at once
    assert sock.recv(1) == PUBLISH[1:2]
    assert sock.recv(7) == PUBLISH[2:]
    assert sock.recv(1) == PINGRESP[:1]
    assert sock.recv(1) == PINGRESP[1:]
    assert sock.buffered == 0
    with pytest.raises(BlockingIOError):  # nothing left, in memory or in the kernel
        sock.recv(1)


def test_a_body_split_across_kernel_reads(pair):
    sock, peer = pair
    peer.sendall(PUBLISH[:5])
    assert sock.recv(1) == PUBLISH[:1]
    assert sock.recv(1) == PUBLISH[1:2]
    assert sock.recv(7) == PUBLISH[2:5]  # short read, as from the kernel: paho asks again
    peer.sendall(PUBLISH[5:])
    assert sock.recv(4) == PUBLISH[5:]


def test_end_of_stream_reads_empty(pair):
    sock, peer = pair
    peer.sendall(PINGRESP)
    peer.shutdown(socket.SHUT_WR)
    assert sock.recv(2) == PINGRESP
    assert sock.recv(1) == b""


def test_corked_writes_go_out_together_in_order(pair):
    sock, peer = pair
    assert sock.send(b"direct") == 6  # not corked: straight to the socket
    sock.corked = True
    assert sock.send(b"one") == 3
    assert sock.send(b"two") == 3
    assert sock.unsent == 6
    assert sock.uncork() == 0
    assert peer.recv(100) == b"directonetwo"


def test_what_the_kernel_does_not_take_waits_and_keeps_its_place(pair):
    sock, peer = pair
    sock.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = bytes(range(256)) * 4096  # 1 MiB: more than the socket buffers hold
    sock.corked = True
    sock.send(big)
    left = sock.uncork()
    assert 0 < left < len(big)
    assert sock.send(b"tail") == 4  # appended behind what is waiting, even uncorked
    got = bytearray()
    while len(got) < len(big) + 4:
        got += peer.recv(1 << 16)
        sock.uncork()
    assert bytes(got) == big + b"tail"


def test_close_sends_what_was_gathered(pair):
    sock, peer = pair
    sock.corked = True
    sock.send(b"\xe0\x00")  # DISCONNECT: paho closes the socket right after writing it
    sock.close()
    assert peer.recv(10) == b"\xe0\x00"


def test_the_client_skips_topic_filters_only_while_there_are_none():
    client = Client(CallbackAPIVersion.VERSION2, client_id="t")
    assert list(client._on_message_filtered.iter_match("meterd/terminals/T1/up")) == []
    client.message_callback_add("meterd/terminals/+/up", print)
    assert list(client._on_message_filtered.iter_match("meterd/terminals/T1/up")) == [print]
