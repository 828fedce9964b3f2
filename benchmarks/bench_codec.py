"""DL/T 645-2007 codec throughput: frames decoded and encoded per second.

Measures the hand-written fast path (used by the collector) against the construct reference
layout, on a read reply of forward active energy (the most common frame on a bus), and the
catalogue decode of its value.  Prints numbers; it is not a pass/fail test.

Then, side by side with the ``dlt645`` PyPI package (a benchmark dependency only:
``pip install -e '.[bench]'``), frame + value of the same reply with an FE preamble: the package's
``DLT645Protocol.deserialize`` + ``bcd_to_float`` of the value (the format from its DI map, as
its client does) against meterd's one-step :func:`~meterd.protocols.dlt645.fastpath.decode_read_reply`
(what the collector runs) and the plain three steps (stream decoder, ``decode_response``,
``catalogue.decode``).  The rows are measured interleaved in one run, in CPU time
(``time.process_time``: other processes on a busy machine do not count), best of ``--rounds``;
the ratios are printed.

    python benchmarks/bench_codec.py [--seconds 2] [--rounds 7]
"""

from __future__ import annotations

import argparse
import time
from decimal import Decimal

from meterd.protocols.dlt645 import catalogue
from meterd.protocols.dlt645.fastpath import as_decoded, decode_read_reply
from meterd.protocols.dlt645.frame import (
    PREAMBLE,
    StreamDecoder,
    build_frame,
    decode_frame,
    encode_frame,
    parse_frame,
)
from meterd.protocols.dlt645.messages import ReadRequest, ReadResponse, decode_response, encode_request, encode_response

REPLY = encode_frame(encode_response(ReadResponse("000000000001", 0x00010000, bytes.fromhex("56341200"))))
REQUEST = ReadRequest("000000000001", 0x00010000)


def cpu_per_call(fn, calls: int) -> float:
    """CPU seconds per call of ``fn`` over ``calls`` calls."""
    started = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - started) / calls


def rate(fn, seconds: float) -> float:
    n = 0
    batch = 2000
    start = time.perf_counter()
    while True:
        for _ in range(batch):
            fn()
        n += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the comparison (best taken)")
    args = ap.parse_args()
    s = args.seconds
    frame = decode_frame(REPLY)
    assert parse_frame(REPLY) == frame and build_frame(frame) == REPLY

    def stream():
        d = StreamDecoder()
        d.feed(PREAMBLE + REPLY)
        return d.next_frame()

    def full_decode():
        resp = decode_response(decode_frame(REPLY))
        return catalogue.decode(resp.di, resp.data)

    rows = [
        ("decode reply, fast path (decode_frame)", lambda: decode_frame(REPLY)),
        ("decode reply, construct (parse_frame)", lambda: parse_frame(REPLY)),
        ("decode reply, stream decoder with FE preamble", stream),
        ("decode reply + message + catalogue value", full_decode),
        ("encode request, fast path (encode_frame)", lambda: encode_frame(encode_request(REQUEST), preamble=PREAMBLE)),
        ("encode frame, construct (build_frame)", lambda: build_frame(frame)),
    ]
    print(f"DL/T 645-2007 codec, {s:g} s per row, reply frame {REPLY.hex(' ').upper()}")
    for name, fn in rows:
        print(f"  {name:<48} {rate(fn, s):>12,.0f} /s")
    compare(args.rounds, s)


def compare(rounds: int, seconds: float) -> None:
    """meterd against the dlt645 package, frame and frame + value, interleaved, CPU time."""
    try:
        from dlt645.common.transform import bcd_to_float
        from dlt645.model.data.data_handler import get_data_item
        from dlt645.protocol.protocol import DLT645Protocol
    except ImportError:
        print("\n(the dlt645 package is not installed: pip install -e '.[bench]' for the comparison)")
        return
    wire = PREAMBLE + REPLY

    def theirs_frame():
        return DLT645Protocol.deserialize(wire)

    def theirs_value():
        frame = DLT645Protocol.deserialize(wire)
        item = get_data_item(int.from_bytes(frame.data[:4], "little"))
        return bcd_to_float(frame.data[4:8], item.data_format, "little")

    def ours_stream():
        d = StreamDecoder()
        d.feed(wire)
        return d.next_frame()

    def ours_plain_value():
        d = StreamDecoder()
        d.feed(wire)
        resp = decode_response(d.next_frame())
        return catalogue.decode(resp.di, resp.data)

    def ours_value():
        return decode_read_reply(wire)

    got = ours_value()
    assert got is not None and got[1] == 0x00010000 and got[3][0] == Decimal(str(theirs_value()))
    assert as_decoded(got[2], got[3]) == ours_plain_value()
    assert theirs_frame().data == ours_stream().data  # type: ignore[union-attr]
    rows = {
        "dlt645 3.x: deserialize": theirs_frame,
        "meterd: stream decoder (frame)": ours_stream,
        "dlt645 3.x: deserialize + bcd_to_float": theirs_value,
        "meterd: plain path (stream + message + catalogue)": ours_plain_value,
        "meterd: decode_read_reply (frame + value)": ours_value,
    }
    calls = {name: max(1000, int(seconds / rounds / 10 * rate(fn, 0.05))) for name, fn in rows.items()}
    best = {name: float("inf") for name in rows}
    for _ in range(rounds):  # interleaved: each round runs every row once
        for name, fn in rows.items():
            best[name] = min(best[name], cpu_per_call(fn, calls[name]))
    try:
        from importlib.metadata import version

        theirs = f"dlt645 {version('dlt645')}"
    except Exception:  # noqa: BLE001 -- only the label
        theirs = "dlt645"
    print(f"\nSide by side with {theirs}, reply with FE preamble, CPU time per call (best of {rounds} interleaved rounds)")
    for name in rows:
        print(f"  {name:<52} {best[name] * 1e6:8.2f} us  {1 / best[name]:>12,.0f} /s")
    frame = best["dlt645 3.x: deserialize"] / best["meterd: stream decoder (frame)"]
    plain = best["dlt645 3.x: deserialize + bcd_to_float"] / best["meterd: plain path (stream + message + catalogue)"]
    value = best["dlt645 3.x: deserialize + bcd_to_float"] / best["meterd: decode_read_reply (frame + value)"]
    print(f"  ratio, frame alone (stream decoder)          {frame:5.2f}x")
    print(f"  ratio, frame + value, plain path             {plain:5.2f}x")
    print(f"  ratio, frame + value, decode_read_reply      {value:5.2f}x   (target >= 5x: {'met' if value >= 5 else 'MISSED'})")


if __name__ == "__main__":
    main()
