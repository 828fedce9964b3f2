"""``meterd simulate`` as a process: its JSON document, a read through it, a clean stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from meterd.protocols.dlt645.frame import PREAMBLE, StreamDecoder, encode_frame
from meterd.protocols.dlt645.messages import ReadRequest, ReadResponse, decode_response, encode_request

SRC = str(Path(__file__).resolve().parents[2] / "src")


def simulate(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-m", "meterd.cli.simulate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_duration_json_document() -> None:
    proc = simulate("--duration", "1", "--json", "--tcp-buses", "1", "--meters-per-bus", "2",
                    "--fault", "000000000003:garble:0.5", "--fault", "4:stuck_relay")  # fmt: skip
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert [b["name"] for b in doc["buses"]] == ["pty1", "tcp1"]
    pty, tcp = doc["buses"]
    assert pty["endpoint"].startswith("/dev/") and pty["baud"] == 2400 and pty["parity"] == "E"
    assert pty["meters"] == ["000000000001", "000000000002"]
    assert tcp["meters"] == ["000000000003", "000000000004"] and tcp["port"] > 0
    assert doc["faults"] == {"000000000003": {"garble": 0.5}}
    assert doc["stuck_relays"] == ["000000000004"]
    assert doc["password"] == "02123456"
    assert "pty1" in err  # link statistics on stderr


def test_default_is_one_pty_bus_with_three_meters_and_a_table() -> None:
    proc = simulate("--duration", "0.5")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "pty1" in out and "000000000001 000000000002 000000000003" in out and "2400 8E1" in out


def test_bad_arguments_exit_2_listing_every_problem() -> None:
    proc = simulate("--duration", "0", "--meters-per-bus", "0", "--fault", "1:smoke")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "meters_per_bus" in err and "smoke" in err


def test_serves_until_sigterm() -> None:
    proc = simulate("--pty", "0", "--tcp-buses", "1", "--json", "--speed", "60")
    try:
        assert proc.stdout is not None
        doc = json.loads(proc.stdout.readline())
        (bus,) = doc["buses"]
        with socket.create_connection((bus["host"], bus["port"]), timeout=5) as sock:
            req = encode_request(ReadRequest(bus["meters"][1], 0x00010000))
            sock.sendall(encode_frame(req, preamble=PREAMBLE))
            decoder = StreamDecoder()
            frame = None
            while frame is None:
                decoder.feed(sock.recv(256))
                frame = decoder.next_frame()
        resp = decode_response(frame)
        assert isinstance(resp, ReadResponse) and resp.address == "000000000002"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert "1 requests, 1 replies" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_add_parser_plugs_into_a_main_parser(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from meterd.cli import simulate as cli

    parser = argparse.ArgumentParser(prog="meterd")
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["simulate", "--tcp-buses", "2", "--fault", "1:late:0.5", "--turnaround", "5"])
    assert args.func is cli.run
    spec = cli.spec_from_args(args)
    assert spec.tcp_buses == 2 and spec.turnaround == 0.005
    assert spec.fault_plans()[0]["000000000001"].late == 0.5
    with pytest.raises(SystemExit):
        parser.parse_args(["simulate", "--help"])
    assert "ADDR:KIND[:PROB]" in capsys.readouterr().out
