"""``meterd decode HEX``: decode any DL/T 645 frame a technician pastes, 2007 or 1997, and any
Q/GDW 1376.1 frame (master <-> concentrator / terminal), told apart by its ``68 L L 68`` header with
the protocol identifier in L.

A paste may hold any number of frames with noise between them (a raw trace, a capture file piped
in: ``meterd decode - < trace.hex``; no HEX at all reads standard input too).  Every valid frame is
decoded; every byte that is part of no frame (bar the ``FE`` wake-up bytes before one) is reported
on standard error: how many, and where, with their hex.  Nothing is dropped silently.

The edition of each frame comes from its control code (:mod:`meterd.protocols.dlt645.explain`);
requests, replies and abnormal replies decode fully: the identifier (8 hex digits in 2007, 4 in
1997) and its catalogue name, the values with their units, the error bits named.  A 1376.1 frame
shows its C bits, address, AFN, SEQ, every data unit as pn/Fn with its values, PW, EC and Tp; a
DL/T 645 frame relayed inside it (AFN 10) is decoded there, not again on its own.  Times print in
the site's zone (:mod:`meterd.cli.frametext`).

Exit status: 0 when every frame decoded; 1 when a frame was found whose message or value cannot be
decoded (each is named on standard error with its bytes and the reason); 2 when the input is not
hex or holds no DL/T 645 or Q/GDW 1376.1 frame at all.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any, Final

from meterd.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, error, print_json
from meterd.cli.frametext import explain_dict, explain_lines, gdw_dict, gdw_lines, meter_now
from meterd.clock import utc_now
from meterd.errors import ProtocolError
from meterd.protocols.dlt645.explain import Explained, explain
from meterd.protocols.dlt645.frame import decode_frame, scan_frames
from meterd.protocols.gdw1376 import frame as gdw
from meterd.protocols.gdw1376.explain import Explained1376
from meterd.protocols.gdw1376.explain import explain as explain1376


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decode", help="decode DL/T 645-2007 / -1997 or Q/GDW 1376.1 frame(s) given in hex",
                       description="Decode DL/T 645 frames (2007 or 1997, told apart by the control code) and "
                                   "Q/GDW 1376.1 frames (68 L L 68). "
                                   "Exit status 1 when a frame does not decode, 2 when there is no frame.")
    p.add_argument("hex", nargs="*", help="frame bytes in hex; spaces, FE preambles and several frames allowed; "
                   "none or - reads them from standard input")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


MAX_PASTE: Final = 64 * 2**20  # characters of hex read from standard input
SHOWN_GAPS: Final = 10  # places of dropped bytes listed one by one
SHOWN_BYTES: Final = 16  # bytes of hex shown per place
_SEPARATORS: Final = re.compile(r"[\s:,-]+|0[xX](?=[0-9a-fA-F])")


def parse_hex(parts: list[str]) -> bytes:
    """Hex digits with any spacing, ``:``/``,``/``-`` separators and ``0x`` prefixes -> bytes.
    ProtocolError says where the first thing that is not hex is, without echoing the whole paste."""
    text = _SEPARATORS.sub("", " ".join(parts))
    try:
        return bytes.fromhex(text)
    except ValueError:
        bad = next((i for i, c in enumerate(text) if c not in "0123456789abcdefABCDEF"), None)
        if bad is not None:
            raise ProtocolError(f"not hex bytes: {text[bad:bad + 8]!r} at hex digit {bad}") from None
        raise ProtocolError(f"not hex bytes: an odd number of hex digits ({len(text)})") from None


def read_paste(parts: list[str]) -> list[str]:
    """The HEX arguments, or standard input for none or ``-``."""
    if parts and parts != ["-"]:
        return parts
    text = sys.stdin.read(MAX_PASTE + 1)
    if len(text) > MAX_PASTE:
        raise ProtocolError(f"standard input holds more than {MAX_PASTE // 2**20} MiB of text: split it up")
    return [text]


Found = list[tuple[int, int, Any]]  # (start, end, a DL/T 645 or a Q/GDW 1376.1 frame)


def find_frames(raw: bytes) -> Found:
    """Every DL/T 645 and Q/GDW 1376.1 frame in ``raw``, in order.  A DL/T 645 frame inside a 1376.1
    frame (relayed by AFN 10) belongs to its carrier and is not listed on its own."""
    carriers = gdw.scan_frames(raw)
    inside = [(s, e) for s, e, _ in carriers]
    own = [f for f in scan_frames(raw) if not any(s <= f[0] < e for s, e in inside)]
    return sorted([*carriers, *own], key=lambda f: f[0])


def gaps(raw: bytes, found: Found) -> list[tuple[int, bytes]]:
    """The runs of ``raw`` that are part of no frame, as (offset, bytes); the ``FE`` wake-up bytes
    right before a frame are its preamble, not a gap."""
    out = []
    pos = 0
    for start, end, _ in [*found, (len(raw), len(raw), None)]:
        lead = start
        while lead > pos and raw[lead - 1] == 0xFE:
            lead -= 1
        if lead > pos:
            out.append((pos, raw[pos:lead]))
        pos = end
    return out


def describe_gaps(runs: list[tuple[int, bytes]]) -> list[str]:
    total = sum(len(b) for _, b in runs)
    lines = [f"{total} byte(s) are part of no frame, in {len(runs)} place(s) (offsets count from 0):"]
    for offset, chunk in runs[:SHOWN_GAPS]:
        shown = chunk[:SHOWN_BYTES].hex(" ").upper() + (" ..." if len(chunk) > SHOWN_BYTES else "")
        lines.append(f"  at byte {offset}: {len(chunk)} byte(s): {shown}")
    if len(runs) > SHOWN_GAPS:
        rest = runs[SHOWN_GAPS:]
        lines.append(f"  and {len(rest)} more place(s) ({sum(len(b) for _, b in rest)} byte(s)), "
                     f"the first at byte {rest[0][0]}")
    return lines


def run(args: argparse.Namespace) -> int:
    try:
        raw = parse_hex(read_paste(args.hex))
    except ProtocolError as exc:
        error(str(exc))
        return EXIT_BAD_INPUT
    found = find_frames(raw)
    if not found:
        reason = " (no 68 .. 68 .. 16 frame found)"
        first = raw.find(b"\x68")
        looks_1376 = 0 <= first and len(raw) - first >= 6 and raw[first + 5] == 0x68
        if first >= 0:
            try:  # a single pasted frame: say exactly what is wrong with it
                (gdw.decode_frame if looks_1376 else decode_frame)(raw[first:])
            except ProtocolError as exc:
                reason = f": {str(exc).split(' [')[0]}"
        if looks_1376:
            error(f"no valid Q/GDW 1376.1 frame (68 L L 68) in {_shown(raw)}{reason}; no DL/T 645 frame either")
        else:
            error(f"no valid DL/T 645 frame in {_shown(raw) or '(nothing)'}{reason}, nor a Q/GDW 1376.1 frame")
        return EXIT_BAD_INPUT
    now = meter_now(utc_now())  # gives 1997 demand times (no year in the frame) theirs
    explained = [explain1376(frame, now) if isinstance(frame, gdw.Frame) else explain(frame, now)
                 for _, _, frame in found]
    if args.json:
        docs = [_doc(ex) for ex in explained]
        print_json(docs if len(docs) > 1 else docs[0])
    else:
        for i, ex in enumerate(explained):
            if len(explained) > 1:
                if i:
                    print()
                print(f"frame {i + 1} of {len(explained)}, at byte {found[i][0]}")
            print("\n".join(gdw_lines(ex) if isinstance(ex, Explained1376) else explain_lines(ex)))
    dropped = gaps(raw, found)
    if dropped:
        head, *places = describe_gaps(dropped)
        error(f"decoded {len(found)} frame(s); {head}")
        for line in places:
            print(line, file=sys.stderr)
    failed = [(i, ex) for i, ex in enumerate(explained) if not ex.decoded]
    for i, ex in failed[:SHOWN_GAPS]:
        error(f"frame {i + 1} (at byte {found[i][0]}) does not decode: {_why(ex)}: "
              f"{_shown(raw[found[i][0]:found[i][1]])}")
    if len(failed) > SHOWN_GAPS:
        error(f"and {len(failed) - SHOWN_GAPS} more frame(s) that do not decode")
    return EXIT_FAILED if failed else EXIT_OK


def _doc(ex: Explained | Explained1376) -> dict[str, Any]:
    return gdw_dict(ex) if isinstance(ex, Explained1376) else explain_dict(ex)


def _why(ex: Explained | Explained1376) -> str:
    if isinstance(ex, Explained1376):
        if ex.error is not None:
            return ex.error
        bad = next(r for i in ex.items for r in i.relayed if not r.decoded)
        return f"the relayed DL/T 645 frame: {bad.message_error or bad.value_error}"
    return str(ex.message_error or ex.value_error)


def _shown(raw: bytes) -> str:
    return raw[:64].hex(" ").upper() + (f" ... ({len(raw)} bytes)" if len(raw) > 64 else "")
