"""What every simulator's fault plan shares (simulators/faults.py): the checks of its probabilities
and ``late_by``, ``of()`` and ``active``, each plan keeping its own kinds and messages."""

from __future__ import annotations

import pytest

from meterd.simulators.concentrator import CONCENTRATOR_FAULT_KINDS, ConcentratorFaults
from meterd.simulators.dlt645 import FAULT_KINDS, FaultPlan


@pytest.mark.parametrize(("plan", "unknown"), [
    (FaultPlan, f"unknown fault kind 'smoke'; known: {', '.join(FAULT_KINDS)}"),
    (ConcentratorFaults, f"unknown concentrator fault 'smoke'; known: {', '.join(CONCENTRATOR_FAULT_KINDS)}"),
])  # fmt: skip
def test_both_fault_plans_check_alike_and_keep_their_own_messages(plan: type[FaultPlan | ConcentratorFaults],
                                                                    unknown: str) -> None:
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
