"""The installed ``meterd`` command: decode, bad config, readings on an empty store."""

import json


def test_decode_read_reply(run_meterd):
    p = run_meterd("decode", "FE FE FE FE 68 01 00 00 00 00 00 68 91 08 33 33 34 33 89 67 45 33 9F 16")
    assert p.returncode == 0, p.stderr
    assert "000000000001" in p.stdout
    assert "energy.active.import.total = 1234.56 kWh" in p.stdout


def test_decode_json_and_two_frames(run_meterd):
    request = "68 01 00 00 00 00 00 68 11 04 33 33 34 33 B3 16"
    reply = "68 01 00 00 00 00 00 68 91 08 33 33 34 33 89 67 45 33 9F 16"
    p = run_meterd("decode", "--json", request + reply)
    assert p.returncode == 0, p.stderr
    docs = json.loads(p.stdout)
    assert [d["message"] for d in docs] == ["ReadRequest", "ReadResponse"]
    assert docs[1]["values"] == [{"quantity": "energy.active.import.total", "value": "1234.56", "unit": "kWh"}]


def test_decode_abnormal_reply_names_the_error_bits(run_meterd):
    # D1 01 ERR=02 (+33 -> 35): no requested data; CS = 68+01+68+D1+01+35 = 1D8 -> D8
    p = run_meterd("decode", "68 01 00 00 00 00 00 68 D1 01 35 D8 16")
    assert p.returncode == 0, p.stderr
    assert "AbnormalResponse" in p.stdout and "NO_DATA" in p.stdout


def test_decode_garbage_is_a_clear_error(run_meterd):
    p = run_meterd("decode", "12 34 zz")
    assert p.returncode == 2 and "not hex" in p.stderr
    p = run_meterd("decode", "00 11 22 33")
    assert p.returncode == 2 and "no valid DL/T 645 frame" in p.stderr
    bad_cs = "68 01 00 00 00 00 00 68 91 08 33 33 34 33 89 67 45 33 9E 16"
    p = run_meterd("decode", bad_cs)
    assert p.returncode == 2 and "checksum" in p.stderr
    assert "Traceback" not in p.stderr


def test_run_refuses_a_bad_config_and_lists_every_error(run_meterd, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        """
[store]
data_dir = "data"
[channels.bus1]
serial = { device = "/dev/null", baud = 1234 }
[[meters]]
address = "12x"
channel = "nowhere"
[[polls]]
name = "p"
interval = "soon"
items = ["FFFFFFFF"]
"""
    )
    p = run_meterd("run", "-c", str(cfg), "--duration", "1")
    assert p.returncode == 2
    for fragment in ["baud", "meters[0].address", "meters[0].channel", "polls[0].interval", "FFFFFFFF"]:
        assert fragment in p.stderr, (fragment, p.stderr)
    assert "bad.toml" in p.stderr
    assert "nothing was started" in p.stderr
    assert not (tmp_path / "data").exists()


def test_readings_without_a_store_says_so(run_meterd, tmp_path):
    p = run_meterd("readings", "--meter", "1", "--data-dir", str(tmp_path / "empty"))
    assert p.returncode == 2 and "no readings store" in p.stderr
