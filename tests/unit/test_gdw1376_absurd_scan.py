"""FrameScanner finds what scan_frames finds, fed in any pieces, looking at each byte about once."""

from __future__ import annotations

import random

from meterd.protocols.gdw1376 import frame as gdw_frame
from meterd.protocols.gdw1376.frame import FrameScanner, parse_terminal_address, scan_frames
from meterd.protocols.gdw1376.messages import encode_request, unit

ADDRESS = parse_terminal_address("4401-0001")


def _stream(rng: random.Random) -> bytes:
    parts = []
    for _ in range(rng.randrange(1, 12)):
        good = encode_request(ADDRESS, 0x0C, [unit(rng.randrange(1, 9), 129)], seq=rng.randrange(16))
        kind = rng.randrange(6)
        if kind == 0:
            parts.append(good)
        elif kind == 1:
            parts.append(good[:rng.randrange(1, len(good))])  # cut short
        elif kind == 2:
            bad = bytearray(good)
            bad[-2] ^= 0xFF  # checksum
            parts.append(bytes(bad))
        elif kind == 3:
            parts.append(b"\x68" * rng.randrange(1, 40))
        elif kind == 4:
            parts.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 30))))
        else:
            parts.append(bytes((0x68, 0xFD, 0xFF, 0xFD, 0xFF, 0x68)))  # a header claiming 16383 bytes
    return b"".join(parts)


def _old(pieces: list[bytes]) -> list[bytes]:
    buf, out = bytearray(), []
    for piece in pieces:
        buf += piece
        found = scan_frames(buf)
        out += [bytes(buf[a:b]) for a, b, _ in found]
        if found:
            del buf[:found[-1][1]]
    return out


def _new(pieces: list[bytes]) -> list[bytes]:
    scanner, out = FrameScanner(), []
    for piece in pieces:
        found = scanner.feed(piece)
        out += [bytes(scanner.buf[a:b]) for a, b, _ in found]
        if found:
            scanner.consume(found[-1][1])
    return out


def test_the_scanner_finds_what_scan_frames_finds_in_any_pieces():
    rng = random.Random(1376)
    for _ in range(400):
        data = _stream(rng) + _stream(rng)
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(0, 12))))
        assert _new([data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]) == \
            _old([data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)])


def test_a_trickle_of_68_bytes_is_looked_at_once(monkeypatch):
    # 8 KB of 68 sent 16 bytes at a time: scan_frames over the growing buffer looked at every 68 at
    # every arrival (2.1 million header checks; 3.1 s of CPU for 16 KB); the scanner at each once.
    calls = 0
    real = gdw_frame._header_total

    def counted(*args):
        nonlocal calls
        calls += 1
        return real(*args)

    monkeypatch.setattr(gdw_frame, "_header_total", counted)
    scanner = FrameScanner()
    for _ in range(512):
        assert scanner.feed(b"\x68" * 16) == []
    assert calls <= 8192
