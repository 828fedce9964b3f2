"""Read planning: contiguous merge, the gap rule, per-request limits, workarounds, tables apart."""

import dataclasses

import pytest

from meterd.errors import ConfigError
from meterd.protocols.modbus import DEFAULT_MAX_GAP, Function, builtin_maps, compile_plan, parse_map

# quantities to hang registers on when a test needs many of them
NUMBERS = [
    "voltage.a", "voltage.b", "voltage.c", "current.a", "current.b", "current.c", "current.n",
    "power.active.total", "power.active.a", "power.active.b", "power.active.c", "frequency",
]


def make_map(registers, workarounds=None, name="t"):
    data = {
        "model": {"name": name, "manufacturer": "t", "source": "t", "primary": True, "function": "holding"},
        "register": registers,
    }
    if workarounds is not None:
        data["workarounds"] = workarounds
    return parse_map(data, f"{name}.toml")


def reg(quantity, address, type_="u16", **kw):
    return {"quantity": quantity, "address": address, "type": type_, **kw}


def layout(plan):
    return [(b.function, b.address, b.count, b.quantities) for b in plan]


def test_contiguous_registers_become_one_request():
    m = make_map([reg("voltage.c", 4, "float32"), reg("voltage.a", 0, "float32"), reg("voltage.b", 2, "float32")])
    plan = compile_plan(m)
    assert layout(plan) == [(Function.HOLDING, 0, 6, ("voltage.a", "voltage.b", "voltage.c"))]
    assert [f.offset for f in plan.blocks[0].fields] == [0, 2, 4]


@pytest.mark.parametrize("gap, merged", [(DEFAULT_MAX_GAP, True), (DEFAULT_MAX_GAP + 1, False), (0, True)])
def test_gap_rule(gap, merged):
    m = make_map([reg("voltage.a", 0), reg("voltage.b", 1 + gap)])
    plan = compile_plan(m)
    if merged:
        assert layout(plan) == [(Function.HOLDING, 0, gap + 2, ("voltage.a", "voltage.b"))]
    else:
        assert layout(plan) == [
            (Function.HOLDING, 0, 1, ("voltage.a",)),
            (Function.HOLDING, 1 + gap, 1, ("voltage.b",)),
        ]


def test_gap_is_configurable_and_the_map_can_only_lower_it():
    m = make_map([reg("voltage.a", 0), reg("voltage.b", 20)])
    assert len(compile_plan(m, max_gap=19)) == 1
    assert len(compile_plan(m, max_gap=18)) == 2
    strict = make_map([reg("voltage.a", 0), reg("voltage.b", 2)], {"max_gap": 0})
    assert len(compile_plan(strict)) == 2
    assert compile_plan(strict, max_gap=50).max_gap == 0
    touching = make_map([reg("voltage.a", 0), reg("voltage.b", 1)], {"max_gap": 0})
    assert len(compile_plan(touching)) == 1
    with pytest.raises(ValueError):
        compile_plan(m, max_gap=-1)


def test_125_register_limit_splits_requests():
    # u16 at 0 and 124: one read of exactly 125 registers; at 125 it would be 126 -> two reads
    fits = make_map([reg("voltage.a", 0), reg("voltage.b", 124)])
    assert layout(compile_plan(fits, max_gap=200)) == [(Function.HOLDING, 0, 125, ("voltage.a", "voltage.b"))]
    over = make_map([reg("voltage.a", 0), reg("voltage.b", 125)])
    assert [(b.address, b.count) for b in compile_plan(over, max_gap=200)] == [(0, 1), (125, 1)]


def test_contiguous_run_longer_than_125_registers():
    # twelve float64 12 apart: gaps of 8 merge, but the run 0..135 is longer than 125 registers
    regs = [reg(q, i * 12, "float64") for i, q in enumerate(NUMBERS)]
    plan = compile_plan(make_map(regs))
    assert all(b.count <= 125 for b in plan)
    assert [(b.address, b.count) for b in plan] == [(0, 124), (132, 4)]
    assert sum(len(b.fields) for b in plan) == len(NUMBERS)


def test_max_registers_workaround():
    m = make_map([reg("voltage.a", 0, "float32"), reg("voltage.b", 2, "float32"), reg("voltage.c", 4, "float32")],
                 {"max_registers": 4})
    assert [(b.address, b.count) for b in compile_plan(m)] == [(0, 4), (4, 2)]


def test_one_request_per_quantity():
    m = make_map([reg("voltage.a", 0), reg("voltage.b", 1), reg("voltage.c", 2)], {"one_request_per_quantity": True})
    assert [(b.address, b.count) for b in compile_plan(m)] == [(0, 1), (1, 1), (2, 1)]


def test_tables_never_share_a_request_and_come_in_a_fixed_order():
    m = make_map([
        reg("alarm.pre_trip", 0, "bool", function="discrete"),
        reg("relay.open", 0, "bool", function="coil"),
        reg("voltage.a", 0, function="input"),
        reg("voltage.b", 0),
        reg("voltage.c", 1),
        reg("relay.protected", 1, "bool", function="coil"),
    ])
    assert layout(compile_plan(m)) == [
        (Function.HOLDING, 0, 2, ("voltage.b", "voltage.c")),
        (Function.INPUT, 0, 1, ("voltage.a",)),
        (Function.COIL, 0, 2, ("relay.open", "relay.protected")),
        (Function.DISCRETE, 0, 1, ("alarm.pre_trip",)),
    ]


def coils(second, workarounds=None):
    return make_map(
        [reg("relay.open", 0, "bool", function="coil"), reg("relay.protected", second, "bool", function="coil")],
        workarounds,
    )


def test_coils_have_the_2000_bit_limit():
    assert [(b.address, b.count) for b in compile_plan(coils(1999), max_gap=5000)] == [(0, 2000)]
    assert [(b.address, b.count) for b in compile_plan(coils(2000), max_gap=5000)] == [(0, 1), (2000, 1)]
    small = coils(1, {"max_bits": 1})
    assert len(compile_plan(small)) == 2


def test_address_offset_moves_the_wire_address_only():
    m = make_map([reg("voltage.a", 10), reg("voltage.b", 11)], {"address_offset": 1})
    (block,) = compile_plan(m)
    assert (block.address, block.count) == (11, 2)
    assert [f.offset for f in block.fields] == [0, 1]
    down = make_map([reg("voltage.a", 10)], {"address_offset": -1})
    assert compile_plan(down).blocks[0].address == 9


def test_subset_and_duplicates():
    m = make_map([reg("voltage.a", 0), reg("voltage.b", 1), reg("voltage.c", 2)])
    assert compile_plan(m, ["voltage.c", "voltage.a", "voltage.c"]).quantities == ("voltage.a", "voltage.c")


def test_unknown_and_unmapped_quantities_are_reported_together():
    m = make_map([reg("voltage.a", 0)])
    with pytest.raises(ConfigError) as err:
        compile_plan(m, ["voltage.a", "voltage.z", "frequency"])
    assert len(err.value.problems) == 2
    assert "'voltage.z' is not a known quantity" in err.value.problems[0]
    assert "'frequency' is not in the register map" in err.value.problems[1]
    assert all(p.startswith("t.toml: ") for p in err.value.problems)


def test_plan_is_immutable_and_describes_itself():
    plan = compile_plan(builtin_maps()["eastron-sdm630"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.blocks = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.blocks[0].count = 1  # type: ignore[misc]
    text = plan.describe()
    assert text.splitlines()[0].startswith("modbus plan eastron-sdm630: 2 request(s) for 28 quantities")
    assert "FC04 input" in text and "energy.active.import.total@+20" in text
    assert len(text.splitlines()) == 1 + len(plan)


def test_sdm630_respects_its_40_parameter_limit():
    plan = compile_plan(builtin_maps()["eastron-sdm630"], max_gap=100)
    assert all(b.count <= 80 for b in plan)


@pytest.mark.parametrize("name", sorted(builtin_maps()))
def test_every_shipped_map_compiles_within_limits(name):
    regmap = builtin_maps()[name]
    plan = compile_plan(regmap)
    assert sorted(plan.quantities) == sorted(regmap.quantities)
    for block in plan:
        assert 1 <= block.count <= regmap.workarounds.limit(block.function)
        for f in block.fields:
            assert f.entry.function is block.function
            assert 0 <= f.offset and f.offset + f.entry.size <= block.count


def test_a_plan_of_coils_or_inputs_counts_bits_not_zero_registers():
    """The start-up plan said '1 request(s) for 1 quantities, 0 registers' for a relay read of one
    discrete input (the demo's relay poll)."""
    relay = compile_plan(make_map([reg("relay.open", 0, "bool", function="discrete")])).describe()
    assert ": 1 request(s) for 1 quantities, 1 bits, max gap" in relay.splitlines()[0]
    both = compile_plan(make_map([reg("voltage.a", 0), reg("relay.open", 0, "bool", function="coil"),
                                  reg("relay.protected", 1, "bool", function="coil")])).describe()
    assert "2 request(s) for 3 quantities, 1 registers, 2 bits, max gap" in both.splitlines()[0]
    assert ", 1 registers, max gap" in compile_plan(make_map([reg("voltage.a", 0)])).describe()
