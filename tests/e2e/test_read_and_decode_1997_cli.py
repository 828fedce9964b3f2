"""The installed command (issue 17): ``meterd decode`` of recorded DL/T 645-1997 frames, and
``meterd read`` / ``meterd probe`` on serial ports that cannot be used -- one line on standard
error, exit status 1, never a traceback.

Recorded frames: wuhuangrui/C82_DL689 ``ClouSoft/app/Meter/SearchMeter.cpp`` (read 9010 to the
wildcard and a 1997 meter's reply, 000272.61 kWh); cqqqq/go645 ``protocol_test.go`` (``TestRead``:
a B613 reply, 220 V).
"""

from __future__ import annotations

import json

import pytest

WILDCARD_READ_9010 = "68 AA AA AA AA AA AA 68 01 02 43 C3 D5 16"
WILDCARD_REPLY_9010 = "68 AA AA AA AA AA AA 68 81 06 43 C3 94 A5 35 33 FA 16"
GO645_REPLY_B613 = "6811110000000068810446E953352E16"


def test_decode_of_recorded_1997_frames(run_meterd) -> None:
    p = run_meterd("decode", WILDCARD_READ_9010 + " " + WILDCARD_REPLY_9010)
    assert p.returncode == 0, p.stderr
    assert "message  ReadRequest97  di=9010" in p.stdout
    assert "value    energy.active.import.total = 272.61 kWh" in p.stdout
    p = run_meterd("decode", "--json", GO645_REPLY_B613)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["edition"] == "DL/T 645-1997" and doc["fields"]["di"] == "B613"
    assert doc["values"] == [{"quantity": "voltage.c", "value": "220", "unit": "V"}]


def test_decode_of_what_is_no_frame_or_does_not_decode_exits_non_zero(run_meterd) -> None:
    p = run_meterd("decode", "DE AD BE EF")
    assert p.returncode == 2 and "no valid DL/T 645 frame in DE AD BE EF" in p.stderr
    # a frame of function 05: in neither edition.  CS = 68+01+68+05 = D6
    p = run_meterd("decode", "68 01 00 00 00 00 00 68 05 00 D6 16")
    assert p.returncode == 1
    assert p.stderr.strip() == ("meterd: frame 1 (at byte 0) does not decode: function 05 exists in neither "
                                "DL/T 645-2007 nor DL/T 645-1997: 68 01 00 00 00 00 00 68 05 00 D6 16")
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("command", ["read", "probe"])
@pytest.mark.parametrize(("path", "reason"), [
    ("/dev/meterd-no-such-tty", "no such device (nothing at that path: unplugged, or named differently?)"),
    ("/dev/null", "not a serial port (it takes no line settings)"),
])  # fmt: skip
def test_a_serial_port_that_cannot_be_used_is_one_line(run_meterd, command: str, path: str, reason: str) -> None:
    extra = ["--di", "00010000"] if command == "read" else ["--timeout", "0.2"]
    p = run_meterd(command, "--serial", path, "--address", "1", *extra)
    assert p.returncode == 1
    assert p.stderr == f"meterd: cannot open serial port {path} at 2400 8E1: {reason}\n"


def test_a_plain_file_as_a_serial_port_is_one_line(run_meterd, tmp_path) -> None:
    path = tmp_path / "capture.hex"
    path.write_text("68 01\n")
    p = run_meterd("read", "--serial", str(path), "--address", "1", "--di", "00010000")
    assert p.returncode == 1
    assert p.stderr == f"meterd: cannot open serial port {path} at 2400 8E1: not a serial port (it takes no line settings)\n"
