"""``meterd decode`` with a long paste (issue #14): every frame is decoded, and every byte that is
part of no frame is reported -- how many, where, as hex.  Before, the stream decoder's bounded
buffer silently dropped all but the last ~1 KiB of a paste (43 of 500 frames decoded, exit 0), and
a 1 MB paste could not be given at all (argv too long; no standard input)."""

from __future__ import annotations

import random

from hypothesis import given, settings, strategies as st

from meterd.protocols.dlt645.frame import Frame, StreamDecoder, encode_frame, scan_frames
from meterd.protocols.dlt645.messages import ReadRequest, encode_request

NOISE = [0x00, 0x11, 0x68, 0xAA, 0x55, 0x16, 0x33, 0xFE]


def paste(count: int, seed: int = 14) -> tuple[bytes, list[Frame], int]:
    """``count`` read requests with FE preambles and 1..8 noise bytes after each (noise never ends
    in FE, which would read as the next frame's preamble)."""
    rng = random.Random(seed)
    parts, frames, noise = [], [], 0
    for i in range(count):
        frame = encode_request(ReadRequest(f"{i + 1:012d}", 0x00010000 + i % 7))
        frames.append(frame)
        parts.append(encode_frame(frame, preamble=b"\xfe" * rng.randint(0, 4)))
        junk = bytes(rng.choice(NOISE) for _ in range(rng.randint(1, 8))).rstrip(b"\xfe") or b"\x00"
        parts.append(junk)
        noise += len(junk)
    return b"".join(parts), frames, noise


def test_scan_finds_every_frame_of_a_long_paste_with_noise_between() -> None:
    raw, frames, _ = paste(500)
    found = scan_frames(raw)
    assert [f for _, _, f in found] == frames
    for start, end, frame in found:
        assert raw[start] == 0x68 and raw[end - 1] == 0x16 and encode_frame(frame) == raw[start:end]


def test_the_bounded_stream_decoder_alone_would_have_lost_most_of_it() -> None:
    raw, frames, _ = paste(500)
    d = StreamDecoder()
    d.feed(raw)  # what meterd decode did before
    assert len(d.frames()) < 100


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 999_999_999_999), st.binary(max_size=30)), max_size=12),
       st.binary(max_size=40))
def test_scan_agrees_with_an_unbounded_stream_decoder(items, tail) -> None:
    raw = b"".join(encode_frame(encode_request(ReadRequest(f"{a:012d}", 0x00010000)), preamble=b"\xfe") + noise
                   for a, noise in items) + tail
    d = StreamDecoder(max_buffer=len(raw) + 1)
    d.feed(raw)
    assert [f for _, _, f in scan_frames(raw)] == d.frames()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_scan_never_raises_and_its_spans_do_not_overlap(raw) -> None:
    last = 0
    for start, end, _ in scan_frames(raw):
        assert last <= start < end <= len(raw)
        last = end
