"""``meterd decode HEX``: decode any DL/T 645-2007 frame a technician pastes.

A paste may hold any number of frames with noise between them (a raw trace, a capture file piped
in: ``meterd decode - < trace.hex``; no HEX at all reads standard input too).  Every valid frame is
decoded; every byte that is part of no frame (bar the ``FE`` wake-up bytes before one) is reported
on standard error: how many, and where, with their hex.  Nothing is dropped silently.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import asdict
from typing import Any, Final

from meterd.cli.common import EXIT_BAD_INPUT, EXIT_OK, error, format_value, print_json, to_jsonable
from meterd.errors import ProtocolError
from meterd.protocols.dlt645 import catalogue
from meterd.protocols.dlt645.frame import Frame, decode_frame, scan_frames
from meterd.protocols.dlt645.messages import (
    ReadFollowUpResponse,
    ReadRequest,
    ReadResponse,
    decode_message,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decode", help="decode DL/T 645 frame(s) given in hex")
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


def gaps(raw: bytes, found: list[tuple[int, int, Frame]]) -> list[tuple[int, bytes]]:
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


def explain(frame: Frame) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "address": frame.address,
        "control": f"{frame.control:02X}",
        "control_meaning": frame.describe_control(),
        "data": frame.data,
    }
    try:
        message = decode_message(frame)
    except ProtocolError as exc:
        doc["message_error"] = str(exc)
        return doc
    doc["message"] = type(message).__name__
    doc["fields"] = {k: v for k, v in asdict(message).items() if k != "address"}
    if isinstance(message, (ReadRequest, ReadResponse, ReadFollowUpResponse)):
        doc["fields"]["di"] = f"{message.di:08X}"
        try:
            item = catalogue.lookup(message.di)
            doc["identifier"] = item.name
            if isinstance(message, (ReadResponse, ReadFollowUpResponse)) and not item.records:
                doc["values"] = [
                    {"quantity": v.quantity, "value": v.value, "unit": v.unit}
                    for v in catalogue.decode(message.di, message.data)
                ]
            elif isinstance(message, ReadResponse) and item.records:
                _, points = catalogue.decode_records(message.di, message.data)
                doc["values"] = [{"timestamp": p.timestamp, "value": p.value} for p in points]
        except ProtocolError as exc:
            doc["value_error"] = str(exc)
    return doc


def run(args: argparse.Namespace) -> int:
    try:
        raw = parse_hex(read_paste(args.hex))
    except ProtocolError as exc:
        error(str(exc))
        return EXIT_BAD_INPUT
    found = scan_frames(raw)
    if not found:
        reason = " (no 68 .. 68 .. 16 frame found)"
        first = raw.find(b"\x68")
        if first >= 0:
            try:  # a single pasted frame: say exactly what is wrong with it
                decode_frame(raw[first:])
            except ProtocolError as exc:
                reason = f": {exc}"
        shown = raw[:64].hex(" ").upper() + (f" ... ({len(raw)} bytes)" if len(raw) > 64 else "")
        error(f"no valid DL/T 645 frame in {shown or '(nothing)'}{reason}")
        return EXIT_BAD_INPUT
    docs = [explain(frame) for _, _, frame in found]
    if args.json:
        print_json(docs if len(docs) > 1 else docs[0])
    else:
        for i, doc in enumerate(docs):
            if len(docs) > 1:
                if i:
                    print()
                print(f"frame {i + 1} of {len(docs)}, at byte {found[i][0]}")
            print_explained(doc)
    dropped = gaps(raw, found)
    if dropped:
        head, *places = describe_gaps(dropped)
        error(f"decoded {len(found)} frame(s); {head}")
        for line in places:
            print(line, file=sys.stderr)
    return EXIT_OK


def print_explained(doc: dict[str, Any]) -> None:
    print(f"address  {doc['address']}")
    print(f"control  {doc['control']}  {doc['control_meaning']}")
    print(f"data     {to_jsonable(doc['data']) or '(none)'}   (0x33 removed)")
    if "message_error" in doc:
        print(f"message  cannot decode: {doc['message_error']}")
        return
    fields = ", ".join(f"{k}={format_value(v)}" for k, v in doc["fields"].items() if k != "data")
    print(f"message  {doc['message']}  {fields}")
    if "identifier" in doc:
        print(f"meaning  {doc['identifier']}")
    for v in doc.get("values", []):
        if "quantity" in v:
            print(f"value    {v['quantity']} = {format_value(v['value'])} {v['unit']}".rstrip())
        else:
            print(f"record   {format_value(v['timestamp'])}  {format_value(v['value'])}")
    if "value_error" in doc:
        print(f"value    cannot decode: {doc['value_error']}")
