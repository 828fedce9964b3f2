"""The node loop: this process's leases, renewed every heartbeat, and the channels they let it poll.

Every ``heartbeat`` seconds, in this order:

1. *Renew* (one statement, :meth:`LeaseBook.renew`): heartbeat, every lease of this node, the
   number of live nodes.  A lease held before the call and missing from the answer was lost (taken
   after it expired, or stolen by the node a DTU now dials): its channel stops at once.
2. *Balance* (:func:`meterd.cluster.balance.plan`): give back channels above ``share + slack``
   (stop the channel, wait for a reply still on its way, then release the lease), take free or
   expired leases up to the share, and try for the leadership of each global job nobody leads.
3. *Reconcile*: start the channels held and valid, stop the others, tell the jobs who leads.

The local deadline.  PostgreSQL decides expiry by its own clock; a node cannot ask it when
PostgreSQL is out of reach, so it keeps a deadline of its own on the monotonic clock: a lease
counts as this node's until ``start of the last successful renewal + lease_time - 2 x
heartbeat``.  The renewal started before PostgreSQL stamped the new expiry, so the deadline
falls at least ``2 x heartbeat`` before any other node can take the lease.  A watchdog stops
every channel whose deadline passed (and demotes this node from the jobs it led), independently
of the renewal in flight; a renewal that succeeds later starts them again, as long as nobody took
them.  Every write to a channel's link is checked against the same deadline
(:meth:`ClusterNode.allows`), so a node cut off from PostgreSQL stops sending before its lease can
pass to another node, and a reply still on its way has the margin to arrive.

A clean stop stops every channel and releases every lease in one statement: the other nodes take
them at their next heartbeat instead of after ``lease_time``.

Blocking calls run in one worker thread of the node's own, in order, so a slow PostgreSQL delays
nothing else of the daemon and the watchdog keeps time regardless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from meterd.cluster.balance import plan
from meterd.cluster.leases import CHANNEL, LeaseBook, LeaseError, channel_resource, fence, leader_resource
from meterd.logthrottle import LogThrottle

log = logging.getLogger(__name__)

T = TypeVar("T")
Start = Callable[[str], None]
Stop = Callable[[str], Awaitable[None]]
Service = Callable[[asyncio.Event], Awaitable[None]]


@dataclass(slots=True)
class Held:
    token: int
    renewed: float  # monotonic time at the start of the call that last renewed (or took) it
    acquired: float


@dataclass(slots=True)
class NodeStats:
    renewals: int = 0
    renew_failures: int = 0
    acquired: int = 0  # leases taken (free or expired)
    claimed: int = 0  # leases taken whoever held them (DTUs)
    released: int = 0  # leases given back (balancing, DTU gone)
    lost: int = 0  # leases found taken by another node at a renewal
    lapsed: int = 0  # channels stopped because the local deadline passed (PostgreSQL out of reach)
    live_nodes: int = 1
    share: int = 0
    last_renewal: float | None = None  # monotonic
    lost_by_resource: dict[str, int] = field(default_factory=dict)


class ClusterNode:
    """This process as one node of the site: see the module docstring.

    ``channels``: every channel of the configuration (each is a lease ``channel:<name>``);
    ``jobs``: the global jobs this node can run (each a lease ``leader:<job>``).  The collector
    binds ``start(channel)`` and ``stop(channel)`` (:meth:`bind`); jobs run through :meth:`lead`.
    ``release_grace``: seconds between stopping a channel handed over and releasing its lease, so a
    reply to the last request is off the bus before another node writes to it (the longest
    response timeout of the channels)."""

    def __init__(self, book: LeaseBook, *, channels: Sequence[str], jobs: Sequence[str] = (),
                 heartbeat: float = 3.0, lease_time: float = 15.0, slack: int | None = None,
                 release_grace: float = 0.0, version: str = "",
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if heartbeat * 3 > lease_time:
            raise ValueError(f"heartbeat {heartbeat} s must be at most a third of lease_time {lease_time} s")
        self.book = book
        self.name = book.node
        self.channels = tuple(dict.fromkeys(channels))
        self.jobs = tuple(dict.fromkeys(jobs))
        self.heartbeat = float(heartbeat)
        self.lease_time = float(lease_time)
        self.margin = 2 * self.heartbeat
        self.slack = slack
        self.release_grace = release_grace  # after stopping a channel, before releasing it: a late reply lands
        self.version = version
        self.monotonic = monotonic
        self.held: dict[str, Held] = {}  # resource -> what this node holds
        self.pinned: set[str] = set()  # channels whose DTU is connected here
        self.running: set[str] = set()  # channels the collector runs now
        self.leading: dict[str, bool] = dict.fromkeys(self.jobs, False)
        self.stats = NodeStats()
        self.joined = False
        self._left = False
        self._stop_event: asyncio.Event | None = None
        self._closing: set[str] = set()  # channels being handed over: no more writes
        self._start: Start | None = None
        self._stop: Stop | None = None
        self._mutex = asyncio.Lock()
        self._changed = asyncio.Event()
        self._generation = 0
        self._deadline = float("inf")  # the earliest local deadline of what is held
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"cluster-{self.name}"[:15])
        self._log = LogThrottle()
        self._meters: dict[str, str] = {}  # meter -> channel, for commands (see scope())

    # --- what the collector and the jobs ask --------------------------------------------------

    def bind(self, start: Start, stop: Stop) -> None:
        """The collector's ``start(channel)`` (begin polling it) and ``stop(channel)`` (cancel its
        runner and return once nothing more goes out on it)."""
        self._start, self._stop = start, stop

    def allows(self, channel: str) -> bool:
        """Whether this node may write to ``channel``'s link now (checked on every write)."""
        h = self.held.get(CHANNEL + channel)
        return h is not None and channel not in self._closing and \
            self.monotonic() < h.renewed + self.lease_time - self.margin

    def valid(self, resource: str, now: float | None = None) -> bool:
        h = self.held.get(resource)
        if h is None:
            return False
        return (self.monotonic() if now is None else now) < h.renewed + self.lease_time - self.margin

    def token(self, channel: str) -> int | None:
        h = self.held.get(channel_resource(channel))
        return None if h is None else h.token

    def holding(self) -> list[str]:
        """Channels held and valid now."""
        now = self.monotonic()
        return [c for c in self.channels if self.valid(CHANNEL + c, now)]

    @property
    def generation(self) -> int:
        """Grows whenever the set of channels held changes (commands re-read their orphans)."""
        return self._generation

    def leads(self, job: str) -> bool:
        return self.leading.get(job, False)

    def figures(self) -> dict[str, Any]:
        """For ``/metrics`` and ``meterd cluster status``."""
        now = self.monotonic()
        s = self.stats
        return {
            "node": self.name, "channels_held": sum(1 for c in self.channels if self.valid(CHANNEL + c, now)),
            "channels": len(self.channels), "share": s.share, "live_nodes": s.live_nodes,
            "leading": dict(self.leading), "renewals": s.renewals, "renew_failures": s.renew_failures,
            "acquired": s.acquired, "claimed": s.claimed, "released": s.released, "lost": s.lost,
            "lapsed": s.lapsed,
            "last_renewal_age": None if s.last_renewal is None else round(now - s.last_renewal, 3),
        }

    # --- commands: which meters, and the fence -------------------------------------------------

    def set_meters(self, meter_channels: dict[str, str]) -> None:
        """meter -> its channel, for :meth:`meters` and :meth:`fence_for`."""
        self._meters = dict(meter_channels)

    def meters(self) -> frozenset[str]:
        """The meters on the channels this node holds now."""
        held = set(self.holding())
        return frozenset(m for m, c in self._meters.items() if c in held)

    def fence_for(self, meter: str) -> Callable[[Any], bool] | None:
        """The claim check for a command to ``meter`` (None: its channel is not held here)."""
        channel = self._meters.get(meter)
        if channel is None or not self.allows(channel):
            return None
        token = self.token(channel)
        assert token is not None
        return fence(self.name, channel_resource(channel), token)

    # --- the loop --------------------------------------------------------------------------------

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def join(self, stop: asyncio.Event) -> bool:
        """Create the tables, register the node and the lease rows; retried until it works or
        ``stop``.  A name in use by a live node is retried for two lease times, then raised."""
        give_up = self.monotonic() + 2 * self.lease_time
        while not stop.is_set():
            try:
                await self._db(self.book.migrate)
                await self._db(self.book.join, self.version, {"channels": len(self.channels)})
                await self._db(self.book.ensure, [channel_resource(c) for c in self.channels]
                               + [leader_resource(j) for j in self.jobs])
                self.joined = True
                log.info("cluster: node %s joined (%d channels, jobs %s; lease %g s, heartbeat %g s)", self.name,
                         len(self.channels), ", ".join(self.jobs) or "none", self.lease_time, self.heartbeat)
                return True
            except LeaseError as exc:
                if exc.reason == "name_in_use" and self.monotonic() > give_up:
                    raise
                self._log.log(log, logging.WARNING, "cluster join", "cluster: node %s cannot join yet: %s",
                              self.name, exc)
            try:
                await asyncio.wait_for(stop.wait(), self.heartbeat)
            except TimeoutError:
                pass
        return False

    async def run(self, stop: asyncio.Event) -> None:
        """Join, then heartbeat until ``stop``; then stop every channel and leave."""
        watchdog: asyncio.Task[None] | None = None
        self._stop_event = stop
        try:
            if not await self.join(stop):
                return
            watchdog = asyncio.create_task(self._watch(stop), name=f"cluster-watchdog {self.name}")
            for channel in sorted(self.pinned):  # DTUs that registered before the node joined
                await self.pin(channel)
            while not stop.is_set():
                began = self.monotonic()
                await self.tick()
                wait = self.heartbeat - (self.monotonic() - began)
                if wait > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), wait)
                    except TimeoutError:
                        pass
        finally:
            if watchdog is not None:
                watchdog.cancel()
                await asyncio.gather(watchdog, return_exceptions=True)
            await self.leave()

    async def leave(self) -> None:
        """Stop every channel, then release every lease (clean stop).  Safe to call twice."""
        if self._left:
            return
        async with self._mutex:
            await asyncio.gather(*(self._stop_channel(name) for name in sorted(self.running)))
            self._set_leading({})
            if self.joined:
                self.joined = False
                try:
                    released = await asyncio.wait_for(self._db(self.book.leave), self.lease_time)
                    log.info("cluster: node %s left; %d lease(s) released", self.name, len(released))
                except (LeaseError, TimeoutError) as exc:
                    log.warning("cluster: node %s could not release its leases (%s); they lapse within %g s",
                                self.name, exc, self.lease_time)
            self.held.clear()
            self._deadline = float("inf")
        await self._db(self.book.close)
        self._left = True
        self._pool.shutdown(wait=False)

    async def tick(self) -> None:
        """One heartbeat: renew, balance, reconcile (see the module docstring)."""
        began = self.monotonic()
        before = {r: h.token for r, h in self.held.items()}
        try:
            renewal = await self._db(self.book.renew)
        except LeaseError as exc:
            self.stats.renew_failures += 1
            self._log.log(log, logging.WARNING, "cluster renewal", "cluster: node %s could not renew its leases: %s",
                          self.name, exc)
            async with self._mutex:
                if exc.reason == "unregistered":  # our row is gone: start afresh, holding nothing
                    await asyncio.gather(*(self._stop_channel(name) for name in sorted(self.running)))
                    self.held.clear()
                    self.joined = False
                await self._reconcile()
            if not self.joined:
                await self.join(self._stop_event or asyncio.Event())
            return
        async with self._mutex:
            self.stats.renewals += 1
            self.stats.last_renewal = began
            self.stats.live_nodes = renewal.live_nodes
            for resource, token in renewal.held.items():
                h = self.held.get(resource)
                if h is None or h.token != token:
                    if resource not in before:  # taken by a call whose answer was lost: ours now
                        log.info("cluster: node %s holds %s (token %d)", self.name, resource, token)
                    self.held[resource] = Held(token, began, began if h is None else h.acquired)
                    self._generation += 1
                else:
                    h.renewed = began
            for resource, token in before.items():
                h = self.held.get(resource)
                if h is not None and h.token == token and resource not in renewal.held:
                    del self.held[resource]
                    self.stats.lost += 1
                    self.stats.lost_by_resource[resource] = self.stats.lost_by_resource.get(resource, 0) + 1
                    self._generation += 1
                    log.warning("cluster: node %s lost %s (token %d): another node holds it now", self.name,
                                resource, token)
            self._update_deadline()
            await self._reconcile()
        await self._balance(renewal.live_nodes)

    async def _balance(self, live_nodes: int) -> None:
        mine = [c for c in self.channels if CHANNEL + c in self.held]
        p = plan(held=len(mine), pinned=len(self.pinned.intersection(mine)), channels=len(self.channels),
                 live_nodes=live_nodes, slack=self.slack)
        self.stats.share = p.share
        if p.give:
            # the most recently taken first: the longest-held channels keep their node
            victims = sorted((c for c in mine if c not in self.pinned),
                             key=lambda c: self.held[CHANNEL + c].acquired, reverse=True)[:p.give]
            await self._hand_over(victims)
        if p.take:
            free = [channel_resource(c) for c in self.channels if CHANNEL + c not in self.held]
            await self._take(free, p.take)
        wanted = [leader_resource(j) for j in self.jobs if leader_resource(j) not in self.held]
        if wanted:
            await self._take(wanted, len(wanted))
        async with self._mutex:
            await self._reconcile()

    async def _take(self, candidates: list[str], limit: int) -> None:
        began = self.monotonic()
        try:
            got = await self._db(self.book.acquire, candidates, limit)
        except LeaseError as exc:
            self._log.log(log, logging.WARNING, "cluster acquire", "cluster: node %s could not take leases: %s",
                          self.name, exc)
            return
        if not got:
            return
        async with self._mutex:
            for resource, token in got.items():
                self.held[resource] = Held(token, began, began)
            self.stats.acquired += len(got)
            self._generation += 1
            self._update_deadline()
        log.info("cluster: node %s took %s", self.name, ", ".join(f"{r} (token {t})" for r, t in sorted(got.items())))

    async def _hand_over(self, channels: list[str]) -> None:
        """Stop ``channels``, then release their leases: nothing of ours is on the wire any more when
        another node takes them."""
        async with self._mutex:
            tokens = {}
            for name in channels:
                h = self.held.get(channel_resource(name))
                if h is None:
                    continue
                self._closing.add(name)  # no write from here on
                tokens[channel_resource(name)] = h.token
            stopping = [name for name in channels if name in self.running]
            await asyncio.gather(*(self._stop_channel(name) for name in stopping))
            if stopping and self.release_grace > 0:
                await asyncio.sleep(self.release_grace)
        try:
            released = await self._db(self.book.release, tokens) if tokens else []
        except LeaseError as exc:
            log.warning("cluster: node %s could not give back %d channel(s): %s", self.name, len(tokens), exc)
            released = []
        async with self._mutex:
            for resource in released:
                self.held.pop(resource, None)
            self._closing.difference_update(channels)
            self.stats.released += len(released)
            if released:
                self._generation += 1
                log.info("cluster: node %s gave back %s (above its share %d)", self.name,
                         ", ".join(r.removeprefix(CHANNEL) for r in released), self.stats.share)
            self._update_deadline()
            await self._reconcile()

    # --- DTUs: the node holding the connection owns the channel --------------------------------

    def dtu_online(self, channel: str) -> None:
        """A DTU of ``channel`` registered here: take its lease whoever holds it (from the event loop)."""
        if channel not in self.channels:
            return
        task = asyncio.get_running_loop().create_task(self.pin(channel), name=f"cluster-pin {channel}")
        task.add_done_callback(_log_failure)

    def dtu_offline(self, channel: str) -> None:
        """The DTU of ``channel`` left this node: stop the channel and release its lease."""
        if channel not in self.channels:
            return
        task = asyncio.get_running_loop().create_task(self.unpin(channel), name=f"cluster-unpin {channel}")
        task.add_done_callback(_log_failure)

    async def pin(self, channel: str) -> None:
        self.pinned.add(channel)
        if not self.joined:
            return  # the first balance takes it like any free channel, then pinned
        began = self.monotonic()
        try:
            token, previous = await self._db(self.book.claim, channel_resource(channel))
        except LeaseError as exc:
            log.warning("cluster: node %s could not take channel %s for its DTU: %s", self.name, channel, exc)
            return
        async with self._mutex:
            if channel not in self.pinned:  # gone again meanwhile
                return
            h = self.held.get(channel_resource(channel))
            self.held[channel_resource(channel)] = Held(token, began, began if h is None else h.acquired)
            self.stats.claimed += 1
            self._generation += 1
            self._update_deadline()
            await self._reconcile()
        if previous is not None:
            log.info("cluster: node %s took channel %s (token %d) from %s: its DTU dialled in here", self.name,
                     channel, token, previous)

    async def unpin(self, channel: str) -> None:
        self.pinned.discard(channel)
        if channel_resource(channel) in self.held:
            await self._hand_over([channel])

    # --- reconciling and the watchdog -------------------------------------------------------------

    def _update_deadline(self) -> None:
        now = self.monotonic()
        live = [h.renewed for r, h in self.held.items() if self.valid(r, now)]
        self._deadline = (min(live) + self.lease_time - self.margin) if live else float("inf")

    async def _watch(self, stop: asyncio.Event) -> None:
        """Stop what lapsed the moment its local deadline passes (not at the next heartbeat)."""
        step = min(0.25, self.heartbeat / 4)
        while not stop.is_set():
            await asyncio.sleep(step)
            if self.monotonic() >= self._deadline:
                async with self._mutex:
                    await self._reconcile()

    async def _reconcile(self) -> None:
        """Run exactly the channels held and valid; lead exactly the jobs held and valid.  Called
        with the mutex held."""
        now = self.monotonic()
        want = {c for c in self.channels if self.valid(CHANNEL + c, now) and c not in self._closing}
        gone = sorted(self.running - want)
        lapsed = [name for name in gone if CHANNEL + name in self.held and name not in self._closing]
        if lapsed:
            self.stats.lapsed += len(lapsed)
            log.warning("cluster: node %s stops %d channel(s) (%s): no renewal from PostgreSQL for %.1f s", self.name,
                        len(lapsed), ", ".join(lapsed[:5]) + (" ..." if len(lapsed) > 5 else ""),
                        now - min(self.held[CHANNEL + n].renewed for n in lapsed))
        await asyncio.gather(*(self._stop_channel(name) for name in gone))
        if self._start is not None:
            for name in sorted(want - self.running):
                self.running.add(name)
                self._start(name)
        self._set_leading({j: self.valid(leader_resource(j), now) for j in self.jobs})
        self._update_deadline()  # what lapsed stays held (a later renewal may bring it back)

    async def _stop_channel(self, name: str) -> None:
        self.running.discard(name)
        if self._stop is not None:
            try:
                await self._stop(name)
            except Exception:
                log.exception("cluster: stopping channel %s failed", name)

    def _set_leading(self, leading: dict[str, bool]) -> None:
        changed = False
        for job in self.jobs:
            now = leading.get(job, False)
            if now != self.leading.get(job, False):
                changed = True
                log.info("cluster: node %s %s %s", self.name, "leads" if now else "no longer leads", job)
            self.leading[job] = now
        if changed:
            self._changed.set()
            self._changed = asyncio.Event()

    # --- global jobs -------------------------------------------------------------------------------

    async def lead(self, job: str, service: Service, stop: asyncio.Event) -> None:
        """Run ``service(stop)`` while this node leads ``job``; cancel it when the leadership is lost
        (it runs again when regained).  Returns on ``stop`` once the service has ended."""
        if job not in self.jobs:
            raise ValueError(f"{job!r} is not a job of this node ({', '.join(self.jobs)})")
        while not stop.is_set():
            if not self.leads(job):
                await self._wait_change(stop)
                continue
            task: asyncio.Future[None] = asyncio.ensure_future(service(stop))
            while not task.done() and self.leads(job) and not stop.is_set():
                await self._wait_change(stop, task)
            if task.done():
                task.result()  # an early end or an exception: the daemon's supervisor says so and restarts
                return
            if stop.is_set():
                await task
                return
            log.warning("cluster: job %s stops on node %s: the leadership is lost", job, self.name)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _wait_change(self, stop: asyncio.Event, task: asyncio.Future[Any] | None = None) -> None:
        waiters = [asyncio.ensure_future(self._changed.wait()), asyncio.ensure_future(stop.wait())]
        pending = [*waiters, *([task] if task is not None else [])]
        try:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("cluster: %s failed", task.get_name(), exc_info=task.exception())


__all__ = ["ClusterNode", "Held", "NodeStats"]
