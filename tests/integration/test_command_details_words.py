"""A command's detail reads as words, as ``meterd commands`` and the dashboard print it (issue 18:
"relay.open = True read back", "reads False")."""

from __future__ import annotations

from test_prepaid_commands import OK, STUCK, queue, rig  # noqa: F401 -- rig: the fixture

from meterd.control.model import CommandKind, CommandState


async def test_details_say_yes_and_no(rig):  # noqa: F811
    _, store, executor, clock, _, _ = rig
    queue(store, clock, OK, CommandKind.TRIP)
    queue(store, clock, STUCK, CommandKind.TRIP)
    done = {c.meter: c for c in await executor.run_once()}
    assert done[OK].state is CommandState.CONFIRMED and done[OK].detail == "read back: relay.open = yes"
    assert done[STUCK].state is CommandState.FAILED
    assert done[STUCK].detail.endswith("acknowledged but relay.open reads no"), done[STUCK].detail
    for c in done.values():
        assert "True" not in c.detail and "False" not in c.detail
