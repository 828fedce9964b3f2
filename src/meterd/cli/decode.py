"""``meterd decode HEX``: decode any DL/T 645-2007 frame a technician pastes."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from meterd.cli.common import EXIT_BAD_INPUT, EXIT_OK, error, format_value, print_json, to_jsonable
from meterd.errors import ProtocolError
from meterd.protocols.dlt645 import catalogue
from meterd.protocols.dlt645.frame import Frame, StreamDecoder, decode_frame
from meterd.protocols.dlt645.messages import (
    ReadFollowUpResponse,
    ReadRequest,
    ReadResponse,
    decode_message,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decode", help="decode DL/T 645 frame(s) given in hex")
    p.add_argument("hex", nargs="+", help="frame bytes in hex; spaces, FE preambles and several frames allowed")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def parse_hex(parts: list[str]) -> bytes:
    text = "".join(parts).replace(" ", "").replace(":", "").replace("-", "")
    if text.lower().startswith("0x"):
        text = text[2:]
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ProtocolError(f"{' '.join(parts)!r} is not hex bytes") from None


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
        raw = parse_hex(args.hex)
    except ProtocolError as exc:
        error(str(exc))
        return EXIT_BAD_INPUT
    decoder = StreamDecoder()
    decoder.feed(raw)
    frames = decoder.frames()
    if not frames:
        reason = " (no 68 .. 68 .. 16 frame found)"
        first = raw.find(b"\x68")
        if first >= 0:
            try:  # a single pasted frame: say exactly what is wrong with it
                decode_frame(raw[first:])
            except ProtocolError as exc:
                reason = f": {exc}"
        elif decoder.last_error:
            reason = f": {decoder.last_error}"
        error(f"no valid DL/T 645 frame in {raw.hex(' ').upper()}{reason}")
        return EXIT_BAD_INPUT
    docs = [explain(f) for f in frames]
    if args.json:
        print_json(docs if len(docs) > 1 else docs[0])
    else:
        for i, doc in enumerate(docs):
            if i:
                print()
            print_explained(doc)
    if decoder.dropped:
        error(f"skipped {decoder.dropped} malformed frame(s): {decoder.last_error}")
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
