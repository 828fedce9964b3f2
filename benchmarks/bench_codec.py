"""DL/T 645-2007 codec throughput: frames decoded and encoded per second.

Measures the hand-written fast path (used by the collector) against the construct reference
layout, on a read reply of forward active energy (the most common frame on a bus), and the
catalogue decode of its value.  Prints numbers; it is not a pass/fail test.

    python benchmarks/bench_codec.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import time

from meterd.protocols.dlt645 import catalogue
from meterd.protocols.dlt645.frame import PREAMBLE, Frame, StreamDecoder, build_frame, decode_frame, encode_frame, parse_frame
from meterd.protocols.dlt645.messages import ReadRequest, ReadResponse, decode_response, encode_request, encode_response

REPLY = encode_frame(encode_response(ReadResponse("000000000001", 0x00010000, bytes.fromhex("56341200"))))
REQUEST = ReadRequest("000000000001", 0x00010000)


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
    s = ap.parse_args().seconds
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


if __name__ == "__main__":
    main()
