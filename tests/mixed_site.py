"""What the config tests' sites of mixed protocols share (tests/unit/test_config.py's ``MIXED``,
tests/unit/test_startup_build.py's ``FLEET``): the store and the two channels both start with -- a
serial DL/T 645 bus and a Modbus TCP gateway -- and ``maps/mine.toml``, a Modbus register map of the
site's own next to its config (not primary: ct and pt apply), which their meters name by that path.
Constants and a writer into the test's own directory: no state between tests."""

from __future__ import annotations

from pathlib import Path

STORE_BUS_AND_GATEWAY = """
[store]
data_dir = "data"

[channels.bus]
serial = { device = "/dev/ttyUSB0" }

[channels.gw]
tcp = { host = "10.0.0.9", port = 502 }
"""

MY_MAP = """
[model]
name = "mine"
manufacturer = "me"
source = "the manual"
primary = false

[[register]]
quantity = "energy.active.import.total"
address = 0
type = "u32"
scale = "0.01"
unit = "kWh"

[[register]]
quantity = "voltage.a"
address = 2
type = "u16"
scale = "0.1"
unit = "V"
"""


def write_my_map(config_dir: Path, text: str = MY_MAP) -> None:
    """Write ``text`` (the map, or a broken copy of it) as ``maps/mine.toml`` under ``config_dir``."""
    (config_dir / "maps").mkdir(exist_ok=True)
    (config_dir / "maps" / "mine.toml").write_text(text, encoding="utf-8")
