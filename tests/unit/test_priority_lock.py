"""The channel's bus lock: urgent waiters (relay commands) are served before routine reads."""

import asyncio

import pytest

from meterd.collector.channel import ROUTINE, URGENT, PriorityLock, urgent


async def _use(lock: PriorityLock, name: str, priority: int, order: list[str], hold: asyncio.Event | None = None):
    await lock.acquire(priority)
    try:
        order.append(name)
        if hold is not None:
            await hold.wait()
        await asyncio.sleep(0)
    finally:
        lock.release()


def test_urgent_waiter_overtakes_queued_routine_reads():
    async def main():
        lock, order, hold = PriorityLock(), [], asyncio.Event()
        first = asyncio.create_task(_use(lock, "r0", ROUTINE, order, hold))
        await asyncio.sleep(0)
        tasks = [asyncio.create_task(_use(lock, f"r{i}", ROUTINE, order)) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(_use(lock, "trip", URGENT, order)))
        await asyncio.sleep(0)
        assert lock.waiting == 4
        hold.set()
        await asyncio.gather(first, *tasks)
        return order, lock

    order, lock = asyncio.run(main())
    assert order == ["r0", "trip", "r1", "r2", "r3"]  # FIFO within a priority
    assert not lock.locked()


def test_an_urgent_scope_puts_routine_calls_inside_it_ahead():
    async def in_scope(lock: PriorityLock, order: list[str]) -> None:
        with urgent():  # e.g. poll_meter for an operator: its layers pass no priority along
            await _use(lock, "call-now", ROUTINE, order)

    async def main():
        lock, order, hold = PriorityLock(), [], asyncio.Event()
        first = asyncio.create_task(_use(lock, "r0", ROUTINE, order, hold))
        await asyncio.sleep(0)
        tasks = [asyncio.create_task(_use(lock, f"r{i}", ROUTINE, order)) for i in (1, 2)]
        tasks.append(asyncio.create_task(in_scope(lock, order)))
        tasks.append(asyncio.create_task(_use(lock, "r3", ROUTINE, order)))  # outside the scope: routine
        await asyncio.sleep(0)
        hold.set()
        await asyncio.gather(first, *tasks)
        return order

    assert asyncio.run(main()) == ["r0", "call-now", "r1", "r2", "r3"]


def test_cancelled_waiter_neither_holds_nor_blocks_the_lock():
    async def main():
        lock, order, hold = PriorityLock(), [], asyncio.Event()
        first = asyncio.create_task(_use(lock, "r0", ROUTINE, order, hold))
        await asyncio.sleep(0)
        doomed = asyncio.create_task(_use(lock, "doomed", URGENT, order))
        after = asyncio.create_task(_use(lock, "r1", ROUTINE, order))
        await asyncio.sleep(0)
        doomed.cancel()
        hold.set()
        await asyncio.gather(first, after)
        with pytest.raises(asyncio.CancelledError):
            await doomed
        return order, lock

    order, lock = asyncio.run(main())
    assert order == ["r0", "r1"]
    assert not lock.locked() and lock.waiting == 0


def test_cancelled_after_being_handed_the_lock_passes_it_on():
    async def main():
        lock, order = PriorityLock(), []
        await lock.acquire()
        waiter = asyncio.create_task(lock.acquire(URGENT))
        other = asyncio.create_task(_use(lock, "r1", ROUTINE, order))
        await asyncio.sleep(0)
        lock.release()  # hands the lock to `waiter` ...
        waiter.cancel()  # ... which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await other
        return order, lock

    order, lock = asyncio.run(main())
    assert order == ["r1"]
    assert not lock.locked()
