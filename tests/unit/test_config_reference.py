"""docs/config.md and the loader cannot drift: both come from meterd.config.keys.

- the committed page is what the table renders today;
- a valid config that uses every key of the table (data/every_key.toml) loads, and uses no key the
  table does not list: every documented key is accepted;
- a key the table does not list is refused in every section: nothing undocumented is accepted;
- writing a key's documented default changes nothing: the defaults shown are the loader's.
"""

from __future__ import annotations

import copy
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meterd.config.keys import ROOT, SECTIONS
from meterd.config.loader import load_config, parse_config
from meterd.config.reference import GENERATOR, header, render
from meterd.errors import ConfigError

ROOT_DIR = Path(__file__).resolve().parents[2]
TOUR = Path(__file__).parent / "data" / "every_key.toml"
BOGUS = "zz_not_a_key"


@pytest.fixture
def tour(tmp_path) -> Path:
    """The every-key config in a folder of its own, with the secrets file it names."""
    shutil.copy(TOUR, tmp_path / "site.toml")
    secrets = tmp_path / "secrets.env"
    secrets.write_text("METERD_DB_PASSWORD=not-a-real-password\n")
    secrets.chmod(0o600)
    return tmp_path / "site.toml"


def tables(node: dict[str, Any], section: str = ROOT, path: str = "") -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(section id, key path, table) for every table of a parsed config, by the registry's tree.
    A key the registry does not list raises KeyError naming it."""
    yield section, path, node
    if SECTIONS[section].free:
        return
    for name, value in node.items():
        key = SECTIONS[section].key(name)
        if key.section is None:
            continue
        child = SECTIONS[key.section]
        where = f"{path}.{name}" if path else name
        if child.shape == "table":
            yield from tables(value, key.section, where)
        elif child.shape == "named":
            for sub, table in value.items():
                yield from tables(table, key.section, f"{where}.{sub}")
        else:  # an array of tables, or a list of names and tables
            for i, entry in enumerate(value):
                if isinstance(entry, dict):
                    yield from tables(entry, key.section, f"{where}[{i}]")


def load(path: Path, data: dict[str, Any]) -> Any:
    return parse_config(data, source=path.name, base_dir=path.parent)


def test_the_committed_reference_is_the_rendered_table():
    committed = (ROOT_DIR / "docs" / "config.md").read_text(encoding="utf-8")
    assert committed == render(), f"docs/config.md is out of date: run `{GENERATOR}`"


def test_the_tour_is_valid_and_uses_every_documented_key_and_no_other(tour):
    load_config(tour)  # not a single problem
    data = tomllib.loads(tour.read_text())
    used = {(section, key) for section, _, table in tables(data) for key in table if not SECTIONS[section].free}
    documented = {(s.id, k.name) for s in SECTIONS.values() for k in s.keys}
    assert sorted(documented - used) == []  # documented, never shown to load
    assert sorted(used - documented) == []  # (tables() already raised for these)


def test_every_section_refuses_a_key_it_does_not_list(tour):
    data = tomllib.loads(tour.read_text())
    first: dict[str, tuple[str, dict[str, Any]]] = {}
    for section, path, table in tables(data):
        first.setdefault(section, (path, table))
    assert set(first) == set(SECTIONS)
    for section, (path, table) in first.items():
        if SECTIONS[section].free:
            continue
        table[BOGUS] = 1
        with pytest.raises(ConfigError) as caught:
            load(tour, data)
        del table[BOGUS]
        where = f"{tour.name}: {path}.{BOGUS}: unknown" if path else f"{tour.name}: {BOGUS}: unknown"
        assert [p for p in caught.value.problems if p.startswith(where)], (section, caught.value.problems)


def test_writing_a_documented_default_changes_nothing(tour):
    data = tomllib.loads(tour.read_text())
    checked = 0
    for section in SECTIONS.values():
        for key in section.keys:
            if key.default is None:
                continue
            value = tomllib.loads(f"v = {key.default}")["v"]
            # a table of the section that uses the key and is valid without it (the tour's first
            # supply point is not valid as a sales point, the default role)
            for index in (i for i, (s, _, t) in enumerate(tables(data)) if s == section.id and key.name in t):
                without, written = copy.deepcopy(data), copy.deepcopy(data)
                del list(tables(without))[index][2][key.name]
                list(tables(written))[index][2][key.name] = value
                try:
                    expected = load(tour, without)
                except ConfigError:
                    continue
                assert load(tour, written) == expected, f"{header(section)} {key.name} = {key.default}"
                checked += 1
                break
            else:
                pytest.fail(f"{header(section)} {key.name}: no table of the tour is valid without it")
    assert checked > 100


def test_choices_in_the_table_are_the_codes():
    from meterd.config.analytics import _JOB_KINDS, _ROLES, _UNIT_KINDS
    from meterd.config.loader import BAUD_RATES
    from meterd.config.model import Framing, Parity, Protocol
    from meterd.config.prepaid import _RATE_NAMES
    from meterd.config.tasks import TaskKind
    from meterd.control.tariff import TariffKind

    def listed(values: Any) -> str:
        return " | ".join(f'"{v}"' for v in values)

    assert SECTIONS["channels.*"].key("framing").type == listed(Framing)
    assert SECTIONS["channels.*.serial"].key("parity").type == listed(Parity)
    assert SECTIONS["channels.*.serial"].key("baud").type == " | ".join(map(str, BAUD_RATES))
    assert SECTIONS["meters[]"].key("protocol").type == listed(Protocol)
    assert SECTIONS["tasks[]"].key("kind").type == listed(TaskKind)
    assert SECTIONS["prepaid.tariffs[].versions[]"].key("kind").type == listed(TariffKind)
    assert SECTIONS["prepaid.tariffs[].versions[].rates"].names == tuple(_RATE_NAMES)
    assert SECTIONS["topology.units[]"].key("kind").type == listed(_UNIT_KINDS)
    assert SECTIONS["topology.points[]"].key("role").type == listed(_ROLES)
    assert SECTIONS["sync.jobs[]"].key("kind").type == listed(_JOB_KINDS)


def test_a_dtu_format_table_takes_the_keys_the_format_codec_knows():
    from meterd.protocols.terminal.dtu import CONFIG_KEYS

    assert set(SECTIONS["listeners.*.formats[]"].names) == {"name", *CONFIG_KEYS}


def test_the_reference_names_the_keys_no_document_explained_before():
    page = render()
    for key in ("voltage_nominal", "registration_timeout", "request_ttl", "jitter", "voltage_low_pct",
                "imbalance_pct", "keep_readings", "prune_at", "timezone"):
        assert f"| `{key}` |" in page
    anchors = [line for line in page.splitlines() if line.startswith('<a id="')]
    assert len(anchors) == len(set(anchors)) == len(SECTIONS)
