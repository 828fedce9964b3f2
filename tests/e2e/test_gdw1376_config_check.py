"""``meterd config check`` of a site with Q/GDW 1376.1 terminals, as a process: the plan names each
terminal's channel in text and JSON (the JSON path once crashed on the new link type)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SITE = """
[store]
data_dir = "{data}"

[listeners.gw]
protocol = "gdw1376"
port = 9001

[channels.c1]
gdw1376 = {{ listener = "gw", terminal = "4401-0001", password_secret = "GW_PW" }}

[channels.zb7]
gdw1376 = {{ listener = "gw", terminal = "4401-0107", kind = "special", turn = 2 }}

[[meters]]
address = "1001"
channel = "c1"
pn = 1

[[meters]]
address = "2001"
channel = "zb7"
pn = 1

[[polls]]
name = "p"
interval = "15m"
quantities = ["energy.active.import.total", "meter.address"]
"""


def check(tmp_path, *extra: str, secret: bool = True) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "site.toml"
    path.write_text(SITE.format(data=tmp_path / "data"))
    env = {k: v for k, v in os.environ.items() if k != "GW_PW"}
    if secret:
        env["GW_PW"] = "00112233445566778899AABBCCDDEEFF"
    return subprocess.run([sys.executable, "-m", "meterd.cli.main", "config", "check", "-c", str(path), *extra],
                          check=False, capture_output=True, text=True, env=env, timeout=120)


def test_config_check_shows_the_terminals_in_text_and_json(tmp_path):
    text = check(tmp_path)
    assert text.returncode == 0, text.stderr
    assert "channel c1 (gdw1376 concentrator 4401-0001 via listener gw)" in text.stdout
    assert "channel zb7 (gdw1376 special 4401-0107 via listener gw)" in text.stdout
    out = check(tmp_path, "--json")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    links = {c["name"]: c["link"] for c in json.loads(out.stdout)["channels"]}
    assert links == {"c1": "gdw1376 concentrator 4401-0001 via listener gw",
                     "zb7": "gdw1376 special 4401-0107 via listener gw"}


def test_config_check_names_a_terminal_password_secret_that_is_not_set(tmp_path):
    out = check(tmp_path, secret=False)
    assert out.returncode == 2
    assert "channels.c1.gdw1376.password_secret: environment variable GW_PW is not set" in out.stderr + out.stdout
