"""Config files nested past the recursion limit, or absurdly large, are config errors naming the
file (exit 2), not RecursionError tracebacks (issue #14); the same for register maps."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterd.config.loader import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, check_depth, load_config
from meterd.errors import ConfigError
from meterd.protocols.modbus.registermap import MAX_MAP_BYTES, load_map, loads_map

DEEP = 100_000
STORE = '[store]\ndata_dir = "data"\n'


@pytest.mark.parametrize("text", [
    "a = " + "[" * DEEP + "]" * DEEP + "\n",  # arrays
    "a = " + "{b = " * DEEP + "1" + "}" * DEEP + "\n",  # inline tables
    "[" + ".".join(["a"] * DEEP) + "]\nx = 1\n",  # a dotted table header
    STORE + "x = " + "[" * 500 + "]" * 500 + "\n",  # deep, yet within tomllib's reach
], ids=["arrays", "inline-tables", "dotted-header", "500-deep"])
def test_a_config_nested_too_deeply_is_a_config_error_naming_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "site.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "nested" in str(info.value)


def test_the_depth_error_names_the_key() -> None:
    data = {"store": {"x": [[[[1]]]]}}
    check_depth(data, "s.toml", limit=5)
    with pytest.raises(ConfigError, match=r"s\.toml: store\.x\[0\]\[0\]\[0\]: nested more than 4 levels deep"):
        check_depth(data, "s.toml", limit=4)


def test_real_configs_are_far_from_the_depth_limit() -> None:
    examples = sorted(Path(__file__).parents[2].joinpath("examples").glob("*.toml"))
    assert examples
    import tomllib
    for path in examples:
        check_depth(tomllib.loads(path.read_text()), str(path), limit=6)
    assert MAX_CONFIG_DEPTH >= 4 * 6


def test_a_config_file_over_the_size_bound_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "huge.toml"
    with path.open("wb") as f:  # sparse: costs no disk
        f.write(STORE.encode())
        f.truncate(MAX_CONFIG_BYTES + 1)
    with pytest.raises(ConfigError, match=rf"huge\.toml: larger than {MAX_CONFIG_BYTES // 2**20} MiB"):
        load_config(path)


def test_a_register_map_nested_too_deeply_or_too_large_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"m\.toml: nested too deeply"):
        loads_map('name = "x"\n[[registers]]\naddress = ' + "[" * DEEP + "]" * DEEP + "\n", source="m.toml")
    path = tmp_path / "big.toml"
    with path.open("wb") as f:
        f.truncate(MAX_MAP_BYTES + 1)
    with pytest.raises(ConfigError, match="larger than 4 MiB"):
        load_map(path)


def test_meterd_run_with_a_deep_config_exits_2_with_one_message(tmp_path: Path, run_meterd) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * DEEP + "]" * DEEP + "\n")
    done = run_meterd("run", "--config", str(path), "--duration", "1")
    assert done.returncode == 2, done.stderr[-500:]
    assert "Traceback" not in done.stderr and "RecursionError" not in done.stderr
    assert f"{path}: nested too deeply" in done.stderr
