"""``meterd decode`` with a long paste, through the installed command (issue #14)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
from test_decode_paste import paste  # noqa: E402

from meterd.protocols.dlt645.frame import scan_frames  # noqa: E402


def test_500_frames_with_noise_between_are_all_decoded_and_the_noise_reported(run_meterd) -> None:
    raw, frames, noise = paste(500)
    p = run_meterd("decode", *raw.hex(" ").split())
    assert p.returncode == 0, p.stderr[-500:]
    assert p.stdout.count("\naddress  ") + p.stdout.startswith("address") == 500
    assert "frame 500 of 500" in p.stdout and "address  000000000500" in p.stdout
    first = p.stderr.splitlines()[0]
    assert first == (f"meterd: decoded 500 frame(s); {noise} byte(s) are part of no frame, in 500 place(s) "
                     "(offsets count from 0):")
    assert "  and 490 more place(s)" in p.stderr
    # the first noise run is listed with its offset, length and bytes
    start = scan_frames(raw)[0][1]
    nxt = scan_frames(raw)[1][0]
    junk = raw[start:nxt].rstrip(b"\xfe")
    assert f"  at byte {start}: {len(junk)} byte(s): {junk.hex(' ').upper()}\n" in p.stderr


def test_a_megabyte_of_hex_on_standard_input(run_meterd) -> None:
    raw, _, _ = paste(500)
    huge = (raw * (1_000_000 // len(raw) + 1))[:1_000_000]
    p = run_meterd("decode", "-", input=huge.hex(), timeout=120)
    assert p.returncode == 0, p.stderr[-500:]
    frames = p.stdout.count("address  ")
    assert frames > 40_000 and f"decoded {frames} frame(s);" in p.stderr
    assert "Traceback" not in p.stderr


def test_not_hex_says_where_without_echoing_the_paste(run_meterd) -> None:
    p = run_meterd("decode", "-", input="68 01 " * 10_000 + "zz")
    assert p.returncode == 2
    assert p.stderr.strip() == "meterd: not hex bytes: 'zz' at hex digit 40000"
