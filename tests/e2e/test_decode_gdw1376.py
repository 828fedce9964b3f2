"""``meterd decode`` of Q/GDW 1376.1 frames, through the installed command.

Recorded frames: simpleman1984/helloworld ``node_base/376.1/packet.js`` (an AFN 10 relay reply
carrying a DL/T 645 reply of 00010000, 6.78 kWh, with EC and Tp; a login); liuning587/gfep
``zptl/ptl1376_1.go`` (a 2013 heartbeat with the terminal's clock).
"""

from __future__ import annotations

import json

RELAY_REPLY = ("68 AE 00 AE 00 68 A8 00 02 34 12 04 10 E0 00 00 01 00 1F 14 00 68 61 10 01 30 12 15 68 91 08 "
               "33 33 34 33 AB 39 33 33 49 16 4F 00 00 06 50 23 21 05 AE 16")
LOGIN = "68 32 00 32 00 68 C9 00 02 34 12 00 02 71 00 00 01 00 85 16"
HEARTBEAT = "68 4A 00 4A 00 68 C9 34 08 94 04 00 02 75 00 00 04 00 33 30 14 12 D2 20 93 16"
DLT645_READ = "68 01 00 00 00 00 00 68 11 04 33 33 34 33 B3 16"


def test_relay_reply_shows_every_field_and_the_meter_frame_inside(run_meterd) -> None:
    p = run_meterd("decode", RELAY_REPLY)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "protocol Q/GDW 1376.1 (L D1D0 = 10)" in out
    assert "control  A8  terminal->master, PRM=0 (responding), USER_DATA, ACD=1 (events waiting)" in out
    assert "address  0200-1234  region (A1) 0200, terminal (A2) 4660 = 1234H, master (MSA) 2" in out
    assert "AFN      10H  FORWARD" in out and "SEQ      E0  RSEQ=0, single frame, CON=0, TpV=1" in out
    assert "unit     p0 F1  transparent forwarding (透明转发)" in out
    assert "value    energy.active.import.total = 6.78 kWh" in out  # the DL/T 645 reply, decoded
    assert "EC       important events 79, general events 0" in out
    assert "Tp       PFC 0, sent on day 21 at 23:50:06, valid for 5 min" in out
    assert p.stderr == ""


def test_json_and_times_in_site_time(run_meterd) -> None:
    p = run_meterd("decode", "--json", HEARTBEAT)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["protocol"] == "Q/GDW 1376.1" and doc["afn"] == "02" and doc["address"] == "0834-0494"
    assert doc["units"] == [{"pn": 0, "fn": 3, "name": "heartbeat (心跳)", "values": [
        {"field": "terminal clock", "value": "2020-12-12T14:30:33+08:00", "unit": ""}]}]


def test_a_paste_of_both_protocols_with_noise(run_meterd) -> None:
    p = run_meterd("decode", f"00 {LOGIN} FF {DLT645_READ} {RELAY_REPLY}")
    assert p.returncode == 0
    assert "frame 1 of 3, at byte 1" in p.stdout and "unit     p0 F1  login (登录)" in p.stdout
    assert "frame 2 of 3, at byte 22" in p.stdout and "edition  DL/T 645-2007" in p.stdout
    assert "frame 3 of 3" in p.stdout  # the relayed DL/T 645 frame is not a fourth frame
    assert p.stderr.startswith("meterd: decoded 3 frame(s); 2 byte(s) are part of no frame")


def test_frames_that_do_not_decode(run_meterd) -> None:
    # AFN 0C F100 reply: not in meterd's catalogue.  CS = 88+01+32+01+00+02+0C+60+01+01+08+0C = 0x140
    unknown = "68 32 00 32 00 68 88 01 32 01 00 02 0C 60 01 01 08 0C 40 16"
    p = run_meterd("decode", unknown)
    assert p.returncode == 1
    assert "unit     cannot decode: AFN 0CH F100 (p1, terminal->master) is not in meterd's catalogue" in p.stdout
    assert p.stderr.startswith("meterd: frame 1 (at byte 0) does not decode: AFN 0CH F100")
    bad = LOGIN[:-5] + "86 16"
    p = run_meterd("decode", bad)
    assert p.returncode == 2
    assert p.stderr == (f"meterd: no valid Q/GDW 1376.1 frame (68 L L 68) in {bad}: checksum mismatch; "
                        "no DL/T 645 frame either\n")
    assert "Traceback" not in p.stderr
