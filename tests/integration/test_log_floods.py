"""A flood of bad connections or messages is logged once per kind per interval, never once per
event (meterd.logthrottle at the call sites that log per event)."""

from __future__ import annotations

import asyncio
import logging

from meterd.collector.dtu import DtuListener


async def test_a_flood_of_bad_dtu_registrations_is_logged_once_per_reason(caplog):
    async with DtuListener("127.0.0.1", 0, formats=["hex-frame"], known={"DTU00000001": "feeder1"}) as listener:
        with caplog.at_level(logging.WARNING, logger="meterd.collector.dtu"):
            for n in range(40):
                _, writer = await asyncio.open_connection("127.0.0.1", listener.bound_port)
                # a hex-frame registration with a wrong checksum; then a meter frame before registering
                writer.write(bytes.fromhex("AA55010B") + b"DTU00000001" + b"\x00" if n % 2 else b"\x68\x01\x02")
                await writer.drain()
                writer.close()
            for _ in range(200):
                rejected = listener.status()["rejected"]
                if rejected["bad_checksum"] == 20 and rejected["unregistered_data"] == 20:
                    break
                await asyncio.sleep(0.01)
    assert rejected["bad_checksum"] == 20 and rejected["unregistered_data"] == 20  # every one still counted
    lines = [r.getMessage() for r in caplog.records]
    assert sum("rejected (bad_checksum)" in line for line in lines) == 1, lines
    assert sum("sent data before registering" in line for line in lines) == 1, lines
