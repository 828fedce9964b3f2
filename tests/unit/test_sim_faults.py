"""What every simulator's fault plan shares (simulators/faults.py): the checks of its probabilities
and ``late_by``, ``of()`` and ``active``, each plan keeping its own kinds and messages (and the
Modbus plan its ``exception_code``)."""

from __future__ import annotations

import pytest

from meterd.simulators.concentrator import CONCENTRATOR_FAULT_KINDS, ConcentratorFaults
from meterd.simulators.dlt645 import FAULT_KINDS, FaultPlan
from meterd.simulators.modbus import MODBUS_FAULT_KINDS, ModbusFaultPlan

Plan = FaultPlan | ConcentratorFaults | ModbusFaultPlan


@pytest.mark.parametrize(("plan", "unknown"), [
    (FaultPlan, f"unknown fault kind 'smoke'; known: {', '.join(FAULT_KINDS)}"),
    (ConcentratorFaults, f"unknown concentrator fault 'smoke'; known: {', '.join(CONCENTRATOR_FAULT_KINDS)}"),
    (ModbusFaultPlan, f"unknown Modbus fault kind 'smoke'; known: {', '.join(MODBUS_FAULT_KINDS)}"),
])  # fmt: skip
def test_the_fault_plans_check_alike_and_keep_their_own_messages(plan: type[Plan], unknown: str) -> None:
    with pytest.raises(ValueError) as exc:
        plan.of("smoke")
    assert str(exc.value) == unknown
    with pytest.raises(ValueError) as exc:
        plan(late=1.5)
    assert str(exc.value) == "fault probability late=1.5 must be within 0..1"
    with pytest.raises(ValueError) as exc:
        plan.of("late", -0.1)
    assert str(exc.value) == "fault probability late=-0.1 must be within 0..1"
    with pytest.raises(ValueError) as exc:
        plan.of("late", 0.5, late_by=-1)
    assert str(exc.value) == "late_by=-1 must be >= 0 seconds"
    one = plan.of("late", 0.5, late_by=3)
    assert type(one) is plan and one.late == 0.5 and one.late_by == 3
    assert one.active == {"late": 0.5} and plan().active == {}


def test_the_plans_are_still_frozen_slotted_and_apart() -> None:
    plan = ConcentratorFaults.of("drop")
    with pytest.raises(AttributeError):
        plan.drop = 0.0  # type: ignore[misc]
    assert not hasattr(plan, "__dict__")
    assert not isinstance(plan, FaultPlan) and not isinstance(FaultPlan(), ConcentratorFaults)
    modbus = ModbusFaultPlan.of("exception", exception_code=6)
    with pytest.raises(AttributeError):
        modbus.exception_code = 2  # type: ignore[misc]
    assert not hasattr(modbus, "__dict__") and not isinstance(modbus, FaultPlan | ConcentratorFaults)


def test_the_modbus_plan_checks_its_exception_code_after_the_shared_checks_and_of_before_them() -> None:
    code = "exception_code={} must be an integer 1..255"
    with pytest.raises(ValueError) as exc:
        ModbusFaultPlan(exception_code=0)
    assert str(exc.value) == code.format(0)
    with pytest.raises(ValueError) as exc:
        ModbusFaultPlan(late_by=-1, exception_code=0)
    assert str(exc.value) == "late_by=-1 must be >= 0 seconds"
    with pytest.raises(ValueError) as exc:
        ModbusFaultPlan.of("late", 2.0, exception_code=2.5)  # of() looks at the code before the plan is made
    assert str(exc.value) == code.format(2.5)
    with pytest.raises(ValueError) as exc:
        ModbusFaultPlan.of("smoke", exception_code=2.5)  # but at the kind first
    assert str(exc.value).startswith("unknown Modbus fault kind 'smoke'")
    plan = ModbusFaultPlan.of("exception", 0.5, exception_code=2.0)
    assert plan.exception_code == 2 and type(plan.exception_code) is int
    assert plan.active == {"exception": 0.5} and plan.describe() == {"exception": 0.5, "exception_code": 2}
