"""Register maps: the quantity set, every validation error (all at once, file and key named),
and the maps meterd ships."""

from decimal import Decimal
from pathlib import Path

import pytest

from meterd.errors import ConfigError
from meterd.protocols.dlt645 import catalogue
from meterd.protocols.dlt645.catalogue import Scaling
from meterd.protocols.modbus import (
    DataType,
    Function,
    WordOrder,
    builtin_maps,
    get_map,
    known_quantities,
    load_map,
    loads_map,
)

MAPS_DIR = Path(__file__).resolve().parents[2] / "src" / "meterd" / "protocols" / "modbus" / "maps"

HEAD = """
[model]
name = "test"
manufacturer = "ACME"
source = "ACME manual v1"
primary = true
"""


ONE = '[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "u16"\n'


def problems(text, source="m.toml"):
    with pytest.raises(ConfigError) as err:
        loads_map(text, source=source)
    return err.value.problems


def one_problem(text):
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


# --- quantities --------------------------------------------------------------------------------


def test_known_quantities_are_the_catalogue_names_plus_extras():
    q = known_quantities()
    for name in (
        "energy.active.import.total", "energy.active.import.rate1", "energy.active.import.rate4",
        "energy.active.export.total", "energy.reactive.q1.total", "energy.reactive.q4.total",
        "energy.reactive.combined1.total", "voltage.a", "voltage.c", "current.a", "current.n",
        "power.active.total", "power.active.c", "power.reactive.b", "power.apparent.total", "pf.total",
        "pf.c", "frequency", "demand.active.import.total", "demand.active.now", "relay.open",
        # Modbus extras
        "voltage.ab", "voltage.ca", "energy.reactive.import.total", "energy.reactive.export.total",
    ):
        assert name in q, name
    assert "energy.active.import.rate5" not in q
    assert "demand.active.import.total.time" not in q  # a BCD time, not a register number
    assert "energy.active.import.total.prev1" not in q  # settlement history is DL/T 645 only


def test_quantity_units_and_scaling_agree_with_the_catalogue():
    q = known_quantities()
    for di in (0x00010000, 0x00050000, 0x01010000, 0x0201FF00, 0x0202FF00, 0x0203FF00, 0x0206FF00, 0x02800002):
        for f in catalogue.lookup(di).fields:
            if f.kind is catalogue.Kind.NUMBER:
                assert (q[f.quantity].unit, q[f.quantity].scaling) == (f.unit, f.scaling)
    assert (q["voltage.ab"].unit, q["voltage.ab"].scaling) == ("V", Scaling.PT)
    assert q["energy.reactive.import.total"].scaling is Scaling.CTPT
    assert q["relay.open"].boolean and not q["voltage.a"].boolean


# --- a good map --------------------------------------------------------------------------------


def test_minimal_map_and_defaults():
    m = loads_map(HEAD + """
[[register]]
quantity = "energy.active.import.total"
address = 0x0048
type = "float32"
scale = 0.01
""")
    e = m.entry("energy.active.import.total")
    assert (e.function, e.address, e.type, e.word_order) == (Function.HOLDING, 0x48, DataType.FLOAT32, WordOrder.BIG)
    assert e.scale == Decimal("0.01") and str(e.scale) == "0.01"  # the TOML float, not its binary value
    assert e.unit == "kWh" and e.primary and e.scaling is Scaling.NONE
    assert m.name == "test" and m.model.source == "ACME manual v1"
    assert "energy.active.import.total" in m and "frequency" not in m
    with pytest.raises(KeyError):
        m.entry("frequency")


def test_model_defaults_and_per_entry_overrides():
    m = loads_map("""
[model]
name = "x"
manufacturer = "x"
source = "x"
function = "input"
word_order = "little"
primary = false
[[register]]
quantity = "current.a"
address = 0
type = "s32"
[[register]]
quantity = "current.b"
address = 2
type = "s32"
function = "holding"
word_order = "big"
primary = true
""")
    a, b = m.entry("current.a"), m.entry("current.b")
    assert (a.function, a.word_order, a.primary, a.scaling) == (Function.INPUT, WordOrder.LITTLE, False, Scaling.CT)
    assert (b.function, b.word_order, b.primary, b.scaling) == (Function.HOLDING, WordOrder.BIG, True, Scaling.NONE)


# --- every error kind ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, key, message",
    [
        ('[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "u16"\ncolour = 1\n',
         "register[0].colour", "unknown key"),
        ('[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "u16"\nscael = 1\n',
         "register[0].scael", 'did you mean \"scale\"'),
        ('[[register]]\nquantity = "voltage.x"\naddress = 0\ntype = "u16"\n',
         "register[0].quantity", "unknown quantity 'voltage.x'"),
        ('[[register]]\nquantity = "frequncy"\naddress = 0\ntype = "u16"\n',
         "register[0].quantity", 'did you mean \"frequency\"'),
        ('[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "float16"\n',
         "register[0].type", "must be one of u16, s16"),
        ('[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "float32"\nfunction = "coil"\n',
         "register[0].type", "a coil holds one bit: type must be bool"),
        ('[[register]]\nquantity = "relay.open"\naddress = 0\ntype = "bool"\n',
         "register[0].type", "bool is for coils and discrete inputs"),
        ('[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "bool"\nfunction = "discrete"\n',
         "register[0].type", "voltage.a is a number"),
        ('[[register]]\nquantity = "voltage.a"\naddress = 65535\ntype = "float32"\n',
         "register[0].address", "float32 at 65535 needs 2 registers and runs past address 65535"),
        ('[[register]]\nquantity = "voltage.a"\naddress = 65536\ntype = "u16"\n',
         "register[0].address", "between 0 and 65535"),
        ('[[register]]\nquantity = "voltage.a"\naddress = -1\ntype = "u16"\n',
         "register[0].address", "between 0 and 65535"),
        ('[[register]]\nquantity = "voltage.a"\ntype = "u16"\n', "register[0].address", "missing"),
        ('[[register]]\nquantity = "voltage.a"\naddress = 0\n', "register[0].type", "missing"),
        ('[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "u16"\nscale = 0\n',
         "register[0].scale", "non-zero"),
        ('[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "u16"\nscale = "abc"\n',
         "register[0].scale", "decimal number"),
        ('[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "u16"\nscale = true\n',
         "register[0].scale", "must be a number"),
        ('[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "u16"\nscale = nan\n',
         "register[0].scale", "finite"),
        ('[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "u16"\nscale = "inf"\n',
         "register[0].scale", "finite"),
        ('[[register]]\nquantity = "power.active.total"\naddress = 0\ntype = "s32"\nunit = "W"\n',
         "register[0].unit", "'W' is not the canonical unit 'kW' of power.active.total; scale the register into it"),
        ('[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "u16"\nword_order = "middle"\n',
         "register[0].word_order", "must be one of big, little"),
        ('[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "u16"\nprimary = "yes"\n',
         "register[0].primary", "true or false"),
        ('[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "u16"\ntrue_value = 1\n',
         "register[0].true_value", "only boolean quantities"),
        ('[[register]]\nquantity = "relay.open"\naddress = 0\ntype = "u16"\ntrue_value = 1\n',
         "register[0].false_value", "needs both values"),
        ('[[register]]\nquantity = "relay.open"\naddress = 0\ntype = "u16"\ntrue_value = 1\nfalse_value = 1\n',
         "register[0].false_value", "must differ"),
        ('[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "u16"\n'
         '[[register]]\nquantity = "voltage.a"\naddress = 1\ntype = "u16"\n',
         "register[1].quantity", "already mapped by register[0]"),
        ('[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "float32"\n'
         '[[register]]\nquantity = "voltage.b"\naddress = 1\ntype = "u16"\n',
         "register[1].address", "voltage.b (holding 0x0001) overlaps voltage.a (0x0000..0x0001) of register[0]"),
        ('[workarounds]\nmax_registers = 126\n[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "u16"\n',
         "workarounds.max_registers", "between 1 and 125"),
        ('[workarounds]\nmax_registers = 1\n[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "float32"\n',
         "workarounds.max_registers", "1 is less than the 2 registers of voltage.a (register[0])"),
        ('[workarounds]\nmax_bits = 2001\n[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "u16"\n',
         "workarounds.max_bits", "between 1 and 2000"),
        ('[workarounds]\naddress_offset = 2\n[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "u16"\n',
         "workarounds.address_offset", "between -1 and 1"),
        ('[workarounds]\naddress_offset = -1\n[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "u16"\n',
         "workarounds.address_offset", "moves voltage.a (register[0]) outside 0..65535"),
        ('[workarounds]\npause_between_requests = -1\n' + ONE,
         "workarounds.pause_between_requests", "seconds"),
        ('[workarounds]\none_request_per_field = true\n' + ONE,
         "workarounds.one_request_per_field", 'did you mean \"one_request_per_quantity\"'),
        ('[relay]\nfunction = "input"\naddress = 0\nopen = 1\nclose = 0\n', "relay.function", "coil or a holding"),
        ('[relay]\nfunction = "coil"\naddress = 0\nopen = true\nclose = true\n', "relay.close", "must differ"),
        ('[relay]\nfunction = "coil"\naddress = 0\nopen = true\n', "relay.close", "missing"),
        ('[relay]\nfunction = "holding"\naddress = 0\nopen = 70000\nclose = 0\n', "relay.open", "between 0 and 65535"),
        ('[relay]\nfunction = "coil"\naddress = 0\nopen = true\nclose = false\n'
         '[[register]]\nquantity = "relay.open"\naddress = 0\ntype = "bool"\nfunction = "discrete"\n',
         "relay.quantity", "relay.open is already mapped by register[0]"),
        ("", "register", "at least one [[register]]"),
    ],
)
def test_each_error_names_file_and_key(body, key, message):
    found = problems(HEAD + body)
    assert any(p.startswith(f"m.toml: {key}: ") and message in p for p in found), found


@pytest.mark.parametrize(
    "model, key, message",
    [
        ('name = "x"\nmanufacturer = "x"\nsource = "x"\n', "model.primary", "primary side"),
        ('name = "x"\nmanufacturer = "x"\nprimary = true\n', "model.source", "missing"),
        ('name = "X Y"\nmanufacturer = "x"\nsource = "x"\nprimary = true\n', "model.name", "lower-case"),
        ('name = "x"\nmanufacturer = "x"\nsource = "x"\nprimary = true\nchecked_against = "repo"\n',
         "model.checked_against", "list of non-empty strings"),
        ('name = "x"\nmanufacturer = "x"\nsource = "x"\nprimary = true\nfunction = "holdings"\n',
         "model.function", 'did you mean \"holding\"'),
        ('name = "x"\nmanufacturer = "x"\nsource = "x"\nprimary = true\nvendor = "x"\n', "model.vendor", "unknown key"),
    ],
)
def test_model_table_errors(model, key, message):
    found = problems("[model]\n" + model + '[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "u16"\n')
    assert any(p.startswith(f"m.toml: {key}: ") and message in p for p in found), found


def test_unknown_top_level_key():
    found = problems('colour = 1\n' + HEAD + '[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "u16"\n')
    assert found == ["m.toml: colour: unknown key"]


def test_missing_model_table():
    assert one_problem('[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "u16"\n') == (
        "m.toml: model: missing: the [model] table is required"
    )


def test_all_errors_are_reported_at_once():
    text = HEAD + """
[workarounds]
max_registers = 500

[[register]]
quantity = "voltage.x"
address = 0
type = "u16"

[[register]]
quantity = "voltage.b"
address = 10
type = "float32"
function = "coil"

[[register]]
quantity = "current.a"
address = 20
type = "s32"
scale = 0

[[register]]
quantity = "current.b"
address = 30
type = "float32"

[[register]]
quantity = "current.c"
address = 31
type = "u16"

[[register]]
quantity = "frequency"
address = 65535
type = "float64"
colour = "red"
"""
    found = problems(text, source="maps/acme.toml")
    keys = sorted(p.split(": ")[1] for p in found)
    assert keys == [
        "register[0].quantity",
        "register[1].type",
        "register[2].scale",
        "register[4].address",
        "register[5].address",
        "register[5].colour",
        "workarounds.max_registers",
    ], found
    assert all(p.startswith("maps/acme.toml: ") for p in found)
    with pytest.raises(ConfigError) as err:
        loads_map(text, source="maps/acme.toml")
    assert str(err.value).startswith("7 configuration error(s):")


def test_load_map_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(HEAD + '[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "u17"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_map(path)
    assert err.value.problems[0].startswith(f"{path}: register[0].type: ")
    with pytest.raises(ConfigError, match="file not found"):
        load_map(tmp_path / "missing.toml")
    (tmp_path / "broken.toml").write_text("[model\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="broken.toml: invalid TOML"):
        load_map(tmp_path / "broken.toml")
    good = tmp_path / "good.toml"
    good.write_text(HEAD + '[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "u16"\n', encoding="utf-8")
    assert load_map(good).source_file == str(good)


def test_scale_forms():
    for raw, expected in (("0.1", "0.1"), ('"0.001"', "0.001"), ("10", "10"), ("-1", "-1"), ("1e-3", "0.001")):
        m = loads_map(HEAD + f'[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "u16"\nscale = {raw}\n')
        assert m.entry("voltage.a").scale == Decimal(expected)


def test_pause_accepts_milliseconds():
    m = loads_map(HEAD + '[workarounds]\npause_between_requests = "50ms"\n'
                         '[[register]]\nquantity = "voltage.a"\naddress = 0\ntype = "u16"\n')
    assert m.workarounds.pause_between_requests == pytest.approx(0.05)


# --- shipped maps ------------------------------------------------------------------------------


def test_shipped_maps_are_the_files_in_maps():
    files = sorted(p.stem for p in MAPS_DIR.glob("*.toml"))
    assert sorted(builtin_maps()) == files
    assert {"eastron-sdm630", "chint-dtsu666", "schneider-iem3x55", "generic"} <= set(files)


@pytest.mark.parametrize("path", sorted(MAPS_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_map_loads_and_cites_its_sources(path):
    m = load_map(path)
    assert m.name == path.stem
    assert m.model.source.strip()
    if m.name != "generic":
        assert m.model.checked_against, "cite the public repo + path the map was checked against"
        assert all(" " in ref and "/" in ref.split()[0] for ref in m.model.checked_against)
    for e in m:
        assert e.quantity in known_quantities()
        assert e.unit == known_quantities()[e.quantity].unit


def test_shipped_map_details():
    sdm = get_map("eastron-sdm630")
    assert sdm.workarounds.max_registers == 80
    e = sdm.entry("power.active.total")
    assert (e.function, e.address, e.type, e.scale, e.unit, e.scaling) == (
        Function.INPUT, 0x34, DataType.FLOAT32, Decimal("0.001"), "kW", Scaling.NONE)
    dtsu = get_map("chint-dtsu666")
    assert dtsu.entry("voltage.a").address == 0x2006 and dtsu.entry("voltage.ab").address == 0x2000
    assert dtsu.entry("voltage.a").scaling is Scaling.PT  # secondary side: meterd applies PT
    assert dtsu.entry("energy.active.import.total").scaling is Scaling.CTPT
    assert dtsu.entry("pf.total").scaling is Scaling.NONE
    iem = get_map("schneider-iem3x55")
    assert iem.entry("current.a").address == 2999  # manual register 3000
    assert iem.entry("energy.active.import.total").address == 45099  # manual register 45100
    generic = get_map("generic")
    assert generic.relay is not None and generic.relay.state.function is Function.DISCRETE
    assert generic.entry("relay.open") is generic.relay.state


def test_get_map_unknown_name():
    with pytest.raises(ConfigError, match="unknown register map 'eastron-sdm360'.*did you mean .eastron-sdm630."):
        get_map("eastron-sdm360")


def test_address_boundaries():
    m = loads_map(HEAD + '[[register]]\nquantity = "voltage.a"\naddress = 65534\ntype = "float32"\n'
                         '[[register]]\nquantity = "relay.open"\nfunction = "coil"\naddress = 65535\ntype = "bool"\n')
    assert m.entry("voltage.a").end == 65536
    assert m.entry("relay.open").address == 65535
