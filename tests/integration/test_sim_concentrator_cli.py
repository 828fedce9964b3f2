"""``meterd simulate --concentrators``, as processes: the fleet document (each terminal's RRRR-TTTT and
its meters with their pn), the site config and secrets file it writes, a master written with the
codec alone reading a simulated concentrator, and ``meterd run`` on the written config collecting
from every concentrator's meters.  The simulator starts first: its concentrators keep dialling the
closed port until a master listens, as real terminals do."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest
from test_sim_terminals_cli import first_line, readings, start_simulator, stop

from conftest import free_port
from meterd.cli.main import main
from meterd.config.loader import load_config
from meterd.config.model import GdwLink
from meterd.protocols.gdw1376.catalogue import EnergyReading
from meterd.protocols.gdw1376.frame import Afn, StreamDecoder, parse_terminal_address
from meterd.protocols.gdw1376.messages import decode_message, encode_request, link_confirm, unit

PW = "00112233445566778899AABBCCDDEEFF"


def test_concentrators_write_a_config_meterd_run_collects_from(tmp_path, meterd_bin, run_meterd):
    port = free_port()
    sim = start_simulator(meterd_bin, tmp_path, "--concentrators", "2", "--meters-per-concentrator", "3",
                          "--concentrator-connect", f"127.0.0.1:{port}", "--concentrator-password", PW,
                          "--concentrator-heartbeat", "2", "--write-config", "site.toml", "--poll-interval", "2",
                          "--json", "--duration", "120")
    try:
        doc = json.loads(first_line(sim))
        part = doc["concentrators"]
        assert (part["port"], part["kind"], part["protocol"], part["password"]) == (port, "concentrator", "gdw1376", PW)
        assert part["terminals"] == {
            "4401-0001": [{"address": f"00000000000{i}", "pn": i} for i in (1, 2, 3)],
            "4401-0002": [{"address": f"00000000000{i + 3}", "pn": i} for i in (1, 2, 3)],
        }
        assert doc["buses"] == [] and "dtus" not in doc

        # the password is in a private secrets file the config names, never in the config
        text = (tmp_path / "site.toml").read_text()
        assert PW not in text and 'secrets_file = "site.secrets"' in text
        secrets = tmp_path / "site.secrets"
        assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
        assert f"METERD_GDW1376_PASSWORD={PW}" in secrets.read_text()
        config = load_config(tmp_path / "site.toml")
        (listener,) = config.listeners
        assert (listener.name, listener.port, listener.protocol) == ("gdw1376", port, "gdw1376")
        links = {c.name: c.link for c in config.channels}
        link = links["gw-4401-0002"]
        assert isinstance(link, GdwLink)
        assert (link.listener, link.terminal, link.password_secret) == ("gdw1376", "4401-0002",
                                                                        "METERD_GDW1376_PASSWORD")
        assert sorted((m.address, m.channel, m.pn) for m in config.meters)[3:] == [
            ("000000000004", "gw-4401-0002", 1), ("000000000005", "gw-4401-0002", 2),
            ("000000000006", "gw-4401-0002", 3)]

        run = run_meterd("run", "-c", "site.toml", "--duration", "5", timeout=60)
        assert run.returncode == 0, run.stderr
        assert "terminal 4401-0002 (channel gw-4401-0002) logged in" in run.stderr
        got = readings(run_meterd, "000000000006")  # pn 3 of the second concentrator
        assert {r["quantity"] for r in got} == {"energy.active.import.total", "voltage.a"}, got
        assert all(r["quality"] == "good" for r in got)
    finally:
        code, err = stop(sim)
    assert code == 0, err
    assert "concentrators: 2 terminals" in err and "confirmed logins" in err


async def codec_master(port: int, seen: list[str]) -> EnergyReading:
    """Accept the first concentrator, confirm its login, ask it F129 of p2."""
    got: asyncio.Future[EnergyReading] = asyncio.get_running_loop().create_future()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = StreamDecoder()
        while not got.done() and (data := await reader.read(4096)):
            decoder.feed(data)
            for frame in decoder.frames():
                msg = decode_message(frame)
                if msg.afn == Afn.LINK:
                    seen.append(msg.address.key)
                    writer.write(link_confirm(msg))
                    if msg.units[0].fns == (1,):
                        writer.write(encode_request(parse_terminal_address(msg.address.key), Afn.CLASS1_DATA,
                                                    [unit(2, 129)], seq=9))
                elif msg.afn == Afn.CLASS1_DATA and not got.done():
                    got.set_result(msg.value(129, 2))
        writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", port)
    try:
        return await asyncio.wait_for(got, 20)
    finally:
        server.close()


def test_a_simulated_concentrator_answers_a_master_written_with_the_codec(tmp_path, meterd_bin):
    port = free_port()
    sim = start_simulator(meterd_bin, tmp_path, "--concentrators", "1", "--meters-per-concentrator", "2",
                          "--concentrator-connect", f"127.0.0.1:{port}", "--concentrator-region", "3201",
                          "--first-address", "000000001001", "--start", "2025-03-01T08:07", "--json",
                          "--duration", "60")
    try:
        doc = json.loads(first_line(sim))
        assert doc["concentrators"]["terminals"] == {"3201-0001": [{"address": "000000001001", "pn": 1},
                                                                   {"address": "000000001002", "pn": 2}]}
        seen: list[str] = []
        reading = asyncio.run(codec_master(port, seen))
        assert seen[0] == "3201-0001"
        # collected at the start (08:07) or at 08:15 if the dial took that long: a quarter-hour grid either way
        assert reading.read_at is not None and reading.read_at.date().isoformat() == "2025-03-01"
        assert reading.total is not None and reading.rates == 4
    finally:
        code, err = stop(sim)
    assert code == 0, err


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--concentrators", "-1"], "--concentrators -1: must be 0..65535"),
        (["--concentrators", "2", "--meters-per-concentrator", "2041"], "--meters-per-concentrator 2041: must be 1..2040"),
        (["--concentrators", "2", "--concentrator-connect", "nowhere"], "--concentrator-connect 'nowhere': expected"),
        (["--concentrators", "2", "--concentrator-password", "1234"], "--concentrator-password: password '1234' is 2 bytes"),
        (["--concentrators", "2", "--concentrator-password", "zz" * 16], "is not hex digits"),
        (["--concentrators", "2", "--concentrator-kind", "smart"], "--concentrator-kind 'smart': expected concentrator"),
        (["--concentrators", "2", "--concentrator-region", "44A"], "--concentrator-region '44A': the region code"),
        (["--concentrators", "2", "--concentrator-collect", "700"], "--concentrator-collect 700: must be whole"),
        (["--concentrators", "2", "--concentrator-heartbeat", "0"], "--concentrator-heartbeat 0.0: must be a number"),
        (["--dtus", "1", "--concentrator-kind", "special"], "--concentrator-kind: no concentrators are simulated"),
        (["--concentrators", "3", "--meters-per-concentrator", "1000", "--mqtt-terminals", "2", "--first-address",
          "000000999999"], "the concentrator meters 000000999999..000001002998 overlap the MQTT meters"),
    ],
)
def test_bad_concentrator_arguments_exit_2_naming_the_flag(capsys, monkeypatch, tmp_path, args, named):
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", *args, "--duration", "0"]) == 2
    err = capsys.readouterr().err
    assert named in err, err


def test_a_fleet_file_describes_concentrators(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    port = free_port()
    Path("fleet.toml").write_text(f'[concentrators]\ncount = 2\nmeters = 1\nport = {port}\nkind = "special"\n'
                                  'region = "4403"\n')
    assert main(["simulate", "--fleet-config", "fleet.toml", "--json", "--duration", "0"]) == 0
    doc = json.loads(capsys.readouterr().out)
    part = doc["concentrators"]
    assert (part["kind"], part["port"], list(part["terminals"])) == ("special", port, ["4403-0001", "4403-0002"])
