"""Sending queued commands: write-then-verify, at most once on the wire per claim, settled after a crash.

The lifecycle (stored and audited by :class:`~meterd.control.state.ControlStore`)::

    queued --claim--> sent --read back matches--> confirmed
       ^                |---refused / stuck relay / unsupported--> failed   (a control anomaly, reported)
       |                `---meter unreachable------------------.
       `------------------- retry at next_try -----------------'  until expires --> expired
    queued --operator--> cancelled           queued --opposite command--> cancelled (superseded)

- A command is claimed (``sent``, committed) before its bytes go out.  If the daemon dies there,
  the command is *never sent again*: on restart :meth:`CommandExecutor.recover` reads the relay back
  and settles it as ``confirmed`` (the meter did it) or ``failed`` (it did not, or cannot be read
  before the command expires) for an operator to look at.
- An unreachable meter (offline, link down) keeps its command queued and is tried again every
  ``retry_every`` until the command expires.  Before a retry the relay is read first: if an earlier
  try reached the meter though its acknowledgement was lost, the command is confirmed without being
  sent again.
- A relay that does not move after an acknowledged command is a control anomaly: ``failed`` with
  the read-back as evidence, an ``anomaly`` notice, and no automatic retry.
- Commands go to the channel as :data:`~meterd.collector.channel.URGENT` transactions, ahead of
  routine reads; commands on different channels run in parallel, on one channel one at a time.
  Each channel's commands go in a lane of their own: a new command for one channel goes as soon as
  that channel is free, whatever another channel still has to do.

Collector nodes (a :class:`Scope`): a node takes only the due commands of meters on the channels
it holds, and claims each with its node name and a *fence*: inside the claiming transaction the
lease of the meter's channel must still be this node's, with the token it took it with, and
unexpired by PostgreSQL's clock; otherwise the claim is refused and the command stays queued for
the channel's new holder.  Orphans (claimed, never finished: a node died mid-command) are settled
only by the node holding their channel -- at start and whenever it takes channels.  A command is
therefore sent at most once across nodes, and only by a node that holds the bus.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Protocol

from meterd.clock import Clock
from meterd.control.command_store import Command, Fence
from meterd.control.model import CommandKind, CommandState
from meterd.control.policy import Notice
from meterd.control.state import ControlStore
from meterd.errors import ControlError, LedgerError, MeterdError
from meterd.protocols.dlt645.messages import RelayCommand
from meterd.protocols.relay import EXPECTED, ControlOutcome, Credentials, said

log = logging.getLogger(__name__)

#: Seconds at least between two looks for due commands prompted by lanes ending (each look reads up
#: to 1,000 queued commands; a thousand channels' lanes end at a thousand moments).
LANE_GAP = 0.25

Publish = Callable[[Iterable[Notice]], Awaitable[None]]


class RelayLink(Protocol):
    """How control reaches one meter's relay.  The collector implements it
    (:class:`meterd.collector.control.MeterRelay`) and :mod:`meterd.app` hands it over, so control
    never imports the collector.  ``read_state`` and ``send`` raise :class:`~meterd.errors.MeterdError`
    subclasses when the meter cannot be reached; ``send`` raises :class:`~meterd.errors.ControlError`
    (with its ``outcome``) when the command was refused or not confirmed."""

    @property
    def bus(self) -> str: ...  # commands on one bus go one after another; buses run in parallel

    def commands(self) -> frozenset[RelayCommand]: ...  # what the meter can take

    def with_credentials(self, credentials: Credentials | None) -> RelayLink: ...

    async def read_state(self) -> dict[str, bool]: ...

    async def send(self, command: RelayCommand, now: datetime, *, valid_for: timedelta,
                   settle: float) -> ControlOutcome: ...


Resolver = Callable[[str], RelayLink | None]


class Scope(Protocol):
    """Which commands this node sends, among collector nodes (:class:`meterd.cluster.node.ClusterNode`)."""

    @property
    def name(self) -> str: ...  # the node, recorded with each claim

    @property
    def generation(self) -> int: ...  # grows when the channels held change: orphans are looked for again

    def meters(self) -> frozenset[str]: ...  # the meters on the channels held now

    def fence_for(self, meter: str) -> Fence | None: ...  # the claim check; None: not held here now


class CommandExecutor:
    def __init__(
        self,
        store: ControlStore,
        resolve: Resolver,
        *,
        clock: Clock,
        retry_every: timedelta = timedelta(minutes=5),
        valid_for: timedelta = timedelta(minutes=10),
        settle: float = 0.0,
        publish: Publish | None = None,
        scope: Scope | None = None,
        outcome: Callable[[Command, str], None] | None = None,
        finished: Callable[[Command], None] | None = None,
    ) -> None:
        """``outcome(command, what)`` hears how each try ended: ``confirmed``, ``failed``,
        ``expired`` or ``retry`` (``/metrics`` counts them).  ``finished(command)`` is called in a
        worker thread with each command that ended (confirmed, failed, expired): a failed relay
        command is a control anomaly (:class:`~meterd.control.runtime.PrepaidRuntime` records it)."""
        self.store = store
        self.outcome = outcome
        self.finished = finished
        self.scope = scope  # None: one node sends every command
        self.resolve = resolve
        self.clock = clock
        self.retry_every = retry_every
        self.valid_for = valid_for
        self.settle = settle
        self.publish = publish
        self.wake = asyncio.Event()
        self._lane_done = asyncio.Event()  # a channel's lane sent its commands: its next may be due
        self._in_flight: set[int] = set()
        self._recovered = -1  # the scope's generation orphans were last settled for

    async def run(self, stop: asyncio.Event, *, idle: float = 1.0) -> None:
        """Settle orphans, then send due commands until ``stop``; :attr:`wake` cuts the idle wait short
        (set it after queuing).  ``idle`` bounds how late a command queued by another process
        (``meterd trip``) is noticed."""
        await self.recover()
        lanes: dict[str, asyncio.Task[list[Command]]] = {}  # bus -> the task sending its commands
        try:
            while not stop.is_set():
                try:
                    if self.scope is not None and self.scope.generation != self._recovered:
                        await self.recover()  # channels taken over: their orphans are ours to settle now
                    self.wake.clear()
                    self._lane_done.clear()
                    by_bus, _ = await self._due(busy=lanes.keys())
                    for bus, commands in by_bus.items():
                        lanes[bus] = asyncio.create_task(self._lane(commands), name=f"commands-{bus}")
                except MeterdError as exc:  # a store problem must not kill the daemon; say it and go on
                    log.error("command executor: %s", exc)
                except Exception:  # nor may anything else: the next round tries again
                    log.exception("command executor: sending due commands failed")
                began = asyncio.get_running_loop().time()
                waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wake.wait()),
                           asyncio.ensure_future(self._lane_done.wait())]
                await asyncio.wait(waiters, timeout=idle, return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
                if not self.wake.is_set() and not stop.is_set():  # a lane ended: look again, not at once
                    await asyncio.sleep(max(0.0, began + min(idle, LANE_GAP) - asyncio.get_running_loop().time()))
                for bus, lane in list(lanes.items()):
                    if lane.done():
                        del lanes[bus]
                        if not lane.cancelled() and (failure := lane.exception()) is not None:
                            log.error("command executor: sending the commands of %s failed", bus,
                                      exc_info=failure)
        finally:
            for lane in lanes.values():  # a command cut off mid-send stays sent: settled by read-back at start
                lane.cancel()
            await asyncio.gather(*lanes.values(), return_exceptions=True)

    async def _lane(self, commands: list[Command]) -> list[Command]:
        """One bus's due commands, one after another.  When one of them was sent (or ended) it wakes
        the loop when done, so the bus's next commands go at once; a lane that could claim none
        (its channel's lease not held just now) leaves them to the next idle round."""
        done = [await self.execute(cmd) for cmd in commands]
        if any(after is not before for after, before in zip(done, commands, strict=True)):
            self._lane_done.set()
        return done

    async def _due(self, busy: Iterable[str] = ()) -> tuple[dict[str, list[Command]], list[Command]]:
        """Expire stale commands, fail the due ones no channel reaches, and return the rest by bus
        (leaving out the ``busy`` buses': their lanes take them when done), with the commands ended
        here."""
        now = self.clock()
        for cmd in await asyncio.to_thread(self.store.expire, now):
            log.warning("command #%d %s to meter %s expired: %s", cmd.id, cmd.kind, cmd.meter, cmd.reason)
            self._count(cmd, "expired")
            await self._notify([_anomaly(cmd, now, "expired before the meter could be reached")])
        if self.scope is None:
            due = await asyncio.to_thread(self.store.due_commands, now)
        else:
            meters = self.scope.meters()
            due = await asyncio.to_thread(lambda: self.store.due_commands(now, meters=meters)) if meters else []
        skip = set(busy)
        by_channel: dict[str, list[Command]] = {}
        done: list[Command] = []
        for cmd in due:
            route = self.resolve(cmd.meter)
            if route is None:
                claimed = await self._claim(cmd, now)
                if claimed is not None:
                    done.append(await self._finish(claimed, CommandState.FAILED,
                                                   f"meter {cmd.meter} is not in the configuration: no channel "
                                                   "reaches it"))
                continue
            if route.bus not in skip:
                by_channel.setdefault(route.bus, []).append(cmd)
        return by_channel, done

    async def run_once(self) -> list[Command]:
        """Expire stale commands, then send every due one, waiting for them all; returns the
        commands as they ended up.  (:meth:`run` does not wait for a slow bus: each bus's lane goes
        on by itself.)"""
        by_channel, done = await self._due()
        for results in await asyncio.gather(*(self._lane(cmds) for cmds in by_channel.values())):
            done.extend(results)
        return done

    async def _claim(self, cmd: Command, now: datetime) -> Command | None:
        """Mark ``cmd`` sent (committed before any byte goes out); among nodes, fenced by the lease of
        its channel.  None when it was not ours to claim (taken meanwhile, or the lease is gone)."""
        node = fence = None
        if self.scope is not None:
            node, fence = self.scope.name, self.scope.fence_for(cmd.meter)
            if fence is None:
                log.info("command #%d to meter %s left queued: its channel is not held by node %s now", cmd.id,
                         cmd.meter, node)
                return None
        try:
            return await asyncio.to_thread(lambda: self.store.mark_sent(cmd.id, now=now, node=node, fence=fence))
        except LedgerError as exc:  # another node took it, or our lease of its channel is lost
            log.info("command #%d to meter %s not claimed: %s", cmd.id, cmd.meter, exc)
            return None

    async def execute(self, cmd: Command) -> Command:
        route = self.resolve(cmd.meter)
        now = self.clock()
        # in flight from before its claim commits: a recover() meanwhile (the scope's channels changed)
        # must not take it for an orphan while this lane goes on to send it
        self._in_flight.add(cmd.id)
        try:
            claimed = await self._claim(cmd, now)
        except BaseException:
            self._in_flight.discard(cmd.id)
            raise
        if claimed is None:
            self._in_flight.discard(cmd.id)
            return cmd
        try:
            if route is None:
                return await self._finish(claimed, CommandState.FAILED, f"meter {cmd.meter} has no route")
            flag, expected = EXPECTED[cmd.kind.relay_command]
            if claimed.tries > 1:  # an earlier try may have reached the meter: look before sending again
                try:
                    state = await route.read_state()
                except MeterdError as exc:  # a transaction, read or control failure
                    return await self._later(claimed, f"meter unreachable before retry: {exc}")
                await asyncio.to_thread(self.store.record_relay, cmd.meter, state, now=self.clock())
                if state.get(flag) == expected:
                    return await self._finish(claimed, CommandState.CONFIRMED,
                                              f"read back before retrying: {flag} = {said(expected)}; not sent again",
                                              state)
            try:
                outcome = await route.send(cmd.kind.relay_command, now, valid_for=self.valid_for, settle=self.settle)
            except ControlError as exc:
                outcome = getattr(exc, "outcome", None) or ControlOutcome(cmd.meter, cmd.kind.relay_command, now,
                                                                          detail=str(exc), failure="refused")
                if outcome.read_back:
                    await asyncio.to_thread(self.store.record_relay, cmd.meter, outcome.read_back, now=self.clock())
                if outcome.retryable:
                    return await self._later(claimed, outcome.detail)
                return await self._finish(claimed, CommandState.FAILED, outcome.detail, outcome.read_back)
            await asyncio.to_thread(self.store.record_relay, cmd.meter, outcome.read_back, now=self.clock())
            return await self._finish(claimed, CommandState.CONFIRMED, outcome.detail, outcome.read_back)
        finally:
            self._in_flight.discard(cmd.id)

    async def recover(self) -> list[Command]:
        """Settle commands left ``sent`` by a daemon that died mid-command, by read-back only."""
        settled = []
        if self.scope is None:
            orphans = await asyncio.to_thread(self.store.in_flight)
        else:
            generation = self.scope.generation
            meters = self.scope.meters()
            orphans = await asyncio.to_thread(lambda: self.store.in_flight(meters=meters)) if meters else []
            self._recovered = generation  # only once read: a failed read is tried again next round
        for cmd in orphans:
            if cmd.id in self._in_flight:
                continue
            settled.append(await self._settle_orphan(cmd))
        return settled

    async def _settle_orphan(self, cmd: Command) -> Command:
        route = self.resolve(cmd.meter)
        flag, expected = EXPECTED[cmd.kind.relay_command]
        if route is None:
            return await self._finish(cmd, CommandState.FAILED,
                                      "interrupted by a restart and the meter is no longer configured: not resent")
        try:
            state = await route.read_state()
        except MeterdError as exc:  # a transaction, read or control failure
            return await self._finish(cmd, CommandState.FAILED,
                                      f"interrupted by a restart; relay state unreadable ({exc}): not resent, "
                                      "check the meter")
        await asyncio.to_thread(self.store.record_relay, cmd.meter, state, now=self.clock())
        if state.get(flag) == expected:
            return await self._finish(cmd, CommandState.CONFIRMED,
                                      f"interrupted by a restart; read back: {flag} = {said(expected)}; not resent", state)
        return await self._finish(cmd, CommandState.FAILED,
                                  f"interrupted by a restart; {flag} reads {said(state.get(flag))}: not resent, "
                                  "check the meter and send again if still wanted", state)

    async def _later(self, cmd: Command, why: str) -> Command:
        now = self.clock()
        next_try = now + self.retry_every
        if next_try >= cmd.expires:
            return await self._finish(cmd, CommandState.EXPIRED, f"expired: the meter did not answer ({why})")
        log.info("command #%d %s to meter %s: %s; retry in %g s", cmd.id, cmd.kind, cmd.meter, why,
                 self.retry_every.total_seconds())  # relative: the log line's own time is the site's
        self._count(cmd, "retry")
        return await asyncio.to_thread(self.store.retry_later, cmd.id, now=now, next_try=next_try,
                                       detail=f"try {cmd.tries}: {why}")

    async def _finish(self, cmd: Command, state: CommandState, detail: str,
                      read_back: dict[str, bool] | None = None) -> Command:
        now = self.clock()
        done = await asyncio.to_thread(self.store.finish, cmd.id, state, now=now, detail=detail, read_back=read_back)
        self._count(done, str(state))
        if self.finished is not None:
            try:
                await asyncio.to_thread(self.finished, done)
            except Exception:  # the command's outcome is recorded; the anomaly is a report on top of it
                log.exception("command #%d: recording its outcome as an anomaly failed", cmd.id)
        if state is CommandState.CONFIRMED:
            log.info("command #%d %s to meter %s confirmed: %s", cmd.id, cmd.kind, cmd.meter, detail)
        else:
            log.warning("command #%d %s to meter %s %s: %s", cmd.id, cmd.kind, cmd.meter, state, detail)
            await self._notify([_anomaly(done, now, detail)])
        return done

    def _count(self, cmd: Command, what: str) -> None:
        if self.outcome is not None:
            self.outcome(cmd, what)

    async def _notify(self, notices: list[Notice]) -> None:
        if self.publish is not None and notices:
            await self.publish(notices)


def relay_stuck(cmd: Command) -> bool:
    """A failed command whose read-back shows the relay not where the command was to put it (a
    welded contact, a stuck latch): a control anomaly, not a meter that could not be reached."""
    if cmd.state is not CommandState.FAILED or not cmd.read_back:
        return False
    flag, expected = EXPECTED[cmd.kind.relay_command]
    return flag in cmd.read_back and cmd.read_back[flag] != expected


def intent_met(kind: CommandKind, flags: Mapping[str, bool]) -> tuple[str, bool] | None:
    """The flag of ``flags`` (a read-back, a poll's relay state) showing the meter where a ``kind``
    command wanted it, or None: the command's read-back expectation, and for reclose-allowed also a
    closed relay (the customer pressed the button: more than permitted)."""
    wanted = [EXPECTED[kind.relay_command]]
    if kind is CommandKind.RECLOSE_ALLOWED:
        wanted.append(("relay.open", False))
    for flag, value in wanted:
        if flags.get(flag) is value:
            return flag, value
    return None


def _anomaly(cmd: Command, now: datetime, detail: str) -> Notice:
    return Notice(account=cmd.account or "", kind="anomaly", meter=cmd.meter, at=now,
                  message=f"command #{cmd.id} {cmd.kind} to meter {cmd.meter} {cmd.state}: {detail}")
