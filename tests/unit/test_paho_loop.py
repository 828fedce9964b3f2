"""BufferedSocket, the socket paho reads and writes through when the event loop drives it.

paho reads a packet as a type byte, the length bytes and the body, each with its own ``recv``;
the buffer must hand out exactly those pieces from one kernel read, report EOF and EAGAIN as the
socket would, and gather a flush's packets into one write without losing or reordering any.
"""

import logging
import socket

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.exception import MalformedPacket

from meterd.collector.transports.paho_loop import BufferedSocket, Client, new_client

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


def _queue_qos1(client: Client) -> "mqtt.MQTTMessageInfo":
    """A QoS 1 publish on a client that is not connected: paho keeps it, waiting for its PUBACK."""
    info = client.publish("a/b", b"hi", qos=1)
    assert info.mid in client._out_messages
    return info


def _feed_puback(client: Client, packet: bytes) -> object:
    client._in_packet = {"command": 0x40, "have_remaining": 1, "remaining_count": [len(packet)],
                         "remaining_mult": 1, "remaining_length": len(packet), "packet": bytearray(packet),
                         "to_process": 0, "pos": 0}
    return client._handle_pubackcomp("PUBACK")


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5])
def test_a_puback_completes_the_publish_as_paho_itself_does(protocol):
    fast, plain = (Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=protocol),
                   mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=protocol))
    seen: dict[str, list] = {"fast": [], "plain": []}
    for name, client in (("fast", fast), ("plain", plain)):
        client.on_publish = lambda c, u, mid, rc, props, name=name: seen[name].append(
            (mid, rc.is_failure, rc.getName(), type(props).__name__, props.json()))
        info = _queue_qos1(client)
        assert _feed_puback(client, info.mid.to_bytes(2, "big")) == mqtt.MQTT_ERR_SUCCESS
        assert info._published  # is_published() raises: the client never connected
        assert info.mid not in client._out_messages
        assert _feed_puback(client, b"\x7f\x7f") == mqtt.MQTT_ERR_SUCCESS  # an unknown mid: ignored
    assert seen["fast"] == seen["plain"] and len(seen["fast"]) == 1


def test_a_malformed_puback_takes_paho_s_own_path():
    client = Client(CallbackAPIVersion.VERSION2, client_id="t")
    _queue_qos1(client)
    with pytest.raises(MalformedPacket):
        _feed_puback(client, b"\x00\x01\x00")


def test_paho_chatter_is_logged_at_debug_only_when_wanted(caplog):
    client = new_client("t")
    caplog.set_level(logging.INFO, logger="meterd.collector.transports.paho_loop.paho")
    client._easy_log(mqtt.MQTT_LOG_ERR, "not shown %s", "x")
    assert not caplog.records
    caplog.set_level(logging.DEBUG, logger="meterd.collector.transports.paho_loop.paho")
    client._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", "boom")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "failed to receive on socket: boom")]
    lines = []
    client.on_log = lambda c, u, level, text: lines.append((level, text))  # paho's own hook still works
    client._easy_log(mqtt.MQTT_LOG_WARNING, "w %d", 1)
    assert lines == [(mqtt.MQTT_LOG_WARNING, "w 1")]
