"""``meterd read`` (and ``probe``'s port handling) against simulated meters on a real pseudo-terminal
(issue 17): the trace of a DL/T 645-1997 read shows 4-digit identifiers and site times, a meter's
date prints as a date, and a port that cannot be used is one line, exit status 1.

The simulated bus is served from a background thread (its own event loop); the command runs in the
test's thread through its ``run`` function, which starts its own loop as the installed command does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from meterd.cli import probe as probe_cli
from meterd.cli import read as read_cli
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.model import MeterModel
from meterd.simulators.serve import SimClock, serve_pty

START = datetime(2025, 6, 15, 10, 0)  # the meters' clocks: site time
STAMP = r"\d\d:\d\d:\d\d\.\d{3}\+08:00"


@pytest.fixture(scope="module")
def pty_bus() -> Iterator[str]:
    """Meter 1 speaks DL/T 645-2007, meter 2 DL/T 645-1997, on one pty at 2400 8E1."""
    loop = asyncio.new_event_loop()
    box: dict[str, object] = {}
    started = threading.Event()

    def main() -> None:
        asyncio.set_event_loop(loop)
        meters = [MeterModel("1", start=START, seed=1), MeterModel("2", start=START, seed=2)]
        bus = Dlt645Bus(meters, protocols={"000000000002": "dlt645-1997"})
        box["running"] = loop.run_until_complete(
            serve_pty(bus, clock=SimClock.starting(START), wire_time=False, turnaround=0.005))
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=main, name="read-sim", daemon=True)
    thread.start()
    assert started.wait(10), "simulator did not start"
    running = box["running"]
    yield running.endpoint  # type: ignore[attr-defined]
    asyncio.run_coroutine_threadsafe(running.close(), loop).result(10)  # type: ignore[attr-defined]
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def parse(module, *argv: str) -> argparse.Namespace:  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser(prog="meterd")
    module.add_parser(parser.add_subparsers())
    return parser.parse_args(list(argv))


def test_trace_of_a_1997_read_shows_4_digit_identifiers_values_and_site_times(pty_bus: str, capsys) -> None:
    args = parse(read_cli, "read", "--serial", pty_bus, "--protocol", "dlt645-1997", "--address", "2",
                 "--di", "9010", "--di", "C010", "--di", "C011", "--trace")  # fmt: skip
    rc = read_cli.run(args)
    out, err = capsys.readouterr()
    assert rc == 0, err
    readings = dict(line.split(None, 1) for line in out.splitlines())
    assert re.fullmatch(r"\d+\.\d\d kWh", readings["energy.active.import.total"])
    assert readings["meter.date"] == "2025-06-15"  # the meter's date, not 2025-06-14 16:00 UTC
    assert re.fullmatch(r"\d\d:\d\d:\d\d \(meter clock, site time \+08:00\)", readings["meter.time"])
    # every frame: site time with the offset, the bytes, then the 1997 decode with its 4-digit identifier
    assert re.search(rf"^{STAMP} TX -> FE FE FE FE 68 02 00 00 00 00 00 68 01 02 43 C3 ", err, re.MULTILINE)
    for di, name in (("9010", "active.import energy total"), ("C010", "date and weekday"),
                     ("C011", "time of day")):
        assert f"DL/T 645-1997 request READ_DATA to 000000000002: {di} ({name})" in err
        assert f"DL/T 645-1997 reply READ_DATA from 000000000002: {di} ({name}), " in err
    assert re.search(rf"^{STAMP} RX <- (FE )*68 02 00 00 00 00 00 68 81 ", err, re.MULTILINE)
    assert "meter.date = 2025-06-15" in err
    assert "unknown function code" not in err and "DL/T 645-2007" not in err
    assert not re.search(r"\b0000[0-9A-F]{4}\b", err)  # no identifier widened to 8 digits


def test_json_read_gives_a_meters_date_as_a_date_in_both_editions(pty_bus: str, capsys) -> None:
    for address, protocol, di in (("1", "dlt645-2007", "04000101"), ("2", "dlt645-1997", "C010")):
        rc = read_cli.run(parse(read_cli, "read", "--serial", pty_bus, "--protocol", protocol, "--address", address,
                                "--di", di, "--json"))  # fmt: skip
        out, err = capsys.readouterr()
        assert rc == 0, err
        (reading,) = json.loads(out)["readings"]
        assert reading["quantity"] == "meter.date" and reading["value"] == "2025-06-15"


def plain_file(tmp_path: Path) -> str:
    path = tmp_path / "port.txt"
    path.write_text("not a tty\n")
    return str(path)


@pytest.mark.parametrize(("device", "reason"), [
    (lambda tmp: "/dev/meterd-no-such-tty", "no such device (nothing at that path: unplugged, or named differently?)"),
    (lambda tmp: "/dev/null", "not a serial port (it takes no line settings)"),
    (plain_file, "not a serial port (it takes no line settings)"),
])  # fmt: skip
def test_read_on_a_port_that_cannot_be_used_is_one_line(device, reason: str, tmp_path: Path, capsys,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    path = device(tmp_path)
    with caplog.at_level(logging.DEBUG):
        rc = read_cli.run(parse(read_cli, "read", "--serial", path, "--address", "1", "--di", "00010000"))
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert err == f"meterd: cannot open serial port {path} at 2400 8E1: {reason}\n"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # no "link down" besides


def test_read_refuses_an_absurd_baud_rate_before_touching_the_port(capsys) -> None:
    rc = read_cli.run(parse(read_cli, "read", "--serial", "/dev/null", "--baud", "99999999999", "--address", "1",
                            "--di", "00010000"))  # fmt: skip
    assert rc == 2 and capsys.readouterr().err == "meterd: --baud 99999999999 is not a baud rate (50..4000000, e.g. 2400)\n"


@pytest.mark.parametrize("path", ["/dev/null", "/dev/meterd-no-such-tty"])
def test_probe_on_a_port_that_cannot_be_used_is_one_line(path: str, capsys) -> None:
    rc = probe_cli.run(parse(probe_cli, "probe", "--serial", path, "--address", "1", "--timeout", "0.2"))
    out, err = capsys.readouterr()
    assert rc == 1
    assert out == f"probing serial {path}, address 000000000001, timeout 0.2 s per try\n"
    (line,) = err.splitlines()
    assert line.startswith(f"meterd: cannot open serial port {path} at 2400 8E1: ")
