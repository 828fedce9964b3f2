"""Prepaid control inside the daemon: the engine's passes, the command executor and the notifier.

``meterd.app`` builds one :class:`PrepaidRuntime` when the config has a ``[prepaid]`` section,
hands it the collector's ``route`` (how to reach a meter), subscribes :meth:`~PrepaidRuntime.observe`
to every reading and runs :meth:`~PrepaidRuntime.run` as a service beside the channels:

- at start: the configured accounts are written to the state database (audited as ``config``),
  and commands left ``sent`` by a previous run are settled by read-back, never resent;
- every ``check_every`` (and soon after a round brings register readings): charge, decide, queue
  commands, publish notices, and wake the executor;
- the executor sends queued commands (the policy's and operators' from ``meterd trip`` …)
  through the meters' channels as urgent transactions.

Among collector nodes (a :class:`~meterd.control.commands.Scope`), the passes run on the node
that leads the ``prepaid`` job (``meterd.app`` runs :meth:`~PrepaidRuntime.run` only there) and
the executor on every node, for the meters on the channels it holds (:meth:`~PrepaidRuntime.run_commands`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Final

from meterd import secrets
from meterd.clock import Clock
from meterd.control.command_store import Command, RelayChange
from meterd.control.commands import CommandExecutor, RelayLink, Scope, intent_met, relay_stuck
from meterd.control.engine import PrepaidEngine
from meterd.control.model import CommandKind, CommandState
from meterd.control.notify import LogFileSink, Notifier, WebhookSink
from meterd.control.state import ControlStore
from meterd.errors import ConfigError
from meterd.protocols.drivers import get_driver
from meterd.protocols.relay import Credentials, said
from meterd.readings import Reading
from meterd.storage.anomalies import AnomalyStore, Event, Finding, Kind, Severity
from meterd.storage.database import Location
from meterd.supervise import supervise

if TYPE_CHECKING:
    from meterd.config.model import MeterConfig
    from meterd.config.prepaid import PrepaidConfig

log = logging.getLogger(__name__)

DEFAULT_PASSWORD_ENV = "METERD_METER_PASSWORD"
DEFAULT_OPERATOR_ENV = "METERD_OPERATOR_CODE"


def credentials_from_env(config: PrepaidConfig, *, required: bool) -> Credentials | None:
    """The DL/T 645 password and operator code, from the environment variables the config names."""
    password_env = config.password_env or DEFAULT_PASSWORD_ENV
    operator_env = config.operator_env or DEFAULT_OPERATOR_ENV
    password, operator = secrets.lookup(password_env), secrets.lookup(operator_env)
    problems = []
    for env, value, key in ((password_env, password, "prepaid.password_env"),
                            (operator_env, operator, "prepaid.operator_env")):
        if not value:
            problems.append(f"{key}: {secrets.where(env)} (a DL/T 645 relay-control secret) is not set")
        elif len(value) != 8 or any(c not in "0123456789abcdefABCDEF" for c in value):
            problems.append(f"{key}: {env} must hold 8 hex digits")
    if problems:
        if required:
            raise ConfigError(problems)
        return None
    assert password is not None and operator is not None
    return Credentials(password, operator)


def make_notifier(config: PrepaidConfig) -> Notifier:
    sinks: list[LogFileSink | WebhookSink] = []
    for n in config.notify:
        if n.kind == "log":
            assert n.path is not None
            sinks.append(LogFileSink(n.path))
        else:
            assert n.url is not None
            sinks.append(WebhookSink(n.url, template=n.template, headers=n.headers, timeout=n.timeout,
                                     kinds=n.kinds))
    return Notifier(sinks)


#: The evidence key of a ``command_failed`` event's newest entry listing the failures it still stands
#: for (JSON: kind, id, at, stuck), at most one per thing decided (:attr:`CommandKind.decides`).
STILL_FAILED: Final = "still_failed"


@dataclass(frozen=True, slots=True)
class _Failure:
    kind: CommandKind
    id: int
    at: datetime
    stuck: bool

    def __str__(self) -> str:
        return f"#{self.id} {self.kind.value}"


def _encode(failures: Sequence[_Failure]) -> str:
    return json.dumps([{"kind": f.kind.value, "id": f.id, "at": f.at.isoformat(), "stuck": f.stuck}
                       for f in failures])


def _still_failed(event: Event) -> list[_Failure]:
    """The failed commands an open ``command_failed`` event stands for, from its newest evidence; an
    event recorded before that list was kept stands for its latest failure."""
    if not event.evidence:
        return []
    last = event.evidence[-1]
    try:
        if STILL_FAILED in last:
            return [_Failure(CommandKind(f["kind"]), int(f["id"]), datetime.fromisoformat(f["at"]), bool(f["stuck"]))
                    for f in json.loads(last[STILL_FAILED])]
        number = re.match(r"#(\d+)", last.get("value", ""))
        return [_Failure(CommandKind(last["quantity"].removeprefix("command.")), int(number[1]) if number else 0,
                         datetime.fromisoformat(last["timestamp"]), event.severity is Severity.CRITICAL)]
    except (KeyError, TypeError, ValueError):
        return []


def _open_event(anomalies: AnomalyStore, meter: str) -> Event | None:
    found = anomalies.events(state="open", meter=meter, kind=Kind.COMMAND_FAILED, limit=1)
    return found[0] if found else None


def _settle(anomalies: AnomalyStore, event: Event, settled: Mapping[_Failure, str], quantity: str, at: datetime,
            now: datetime) -> list[Event]:
    """Note in ``event`` why the failures of ``settled`` no longer matter, and close it when no failure
    is left; returns the events closed."""
    still = [f for f in _still_failed(event) if f not in settled]
    note = "; ".join(f"{f} failed: {why}" for f, why in settled.items())
    if still:
        note += "; still failed: " + ", ".join(map(str, still))
    severity = (event.severity if not still else Severity.CRITICAL if any(f.stuck for f in still)
                else Severity.WARNING)
    entry = {"meter": event.meter, "quantity": quantity, "timestamp": at.isoformat(), "value": note[:500],
             STILL_FAILED: _encode(still)}
    finding = Finding(event.meter, Kind.COMMAND_FAILED, severity, event.opened, f"{event.detail} -- {note}"[:1000],
                      (entry,))
    if still:
        anomalies.record([finding], now)
        return []
    closed = anomalies.settle(finding, now)  # noted and closed at once
    if closed is None:
        return []
    log.info("anomaly closed: meter %s %s: %s", closed.meter, closed.kind, note)
    return [closed]


def record_command_anomaly(anomalies: AnomalyStore, command: Command, now: datetime) -> list[Event]:
    """A failed relay command is a control anomaly of its meter (控制失败; critical when the relay
    did not move), one open per meter, brought up to date by the next failure.  It stands for the
    newest failure of each thing commanded (:attr:`CommandKind.decides`: the relay, the pre-trip
    alarm, 保电) and is kept open while one still matters: a failure is settled by a later confirmed
    command deciding the same thing (the same kind finally worked; a trip after a failed reclose,
    a reclose after a failed trip: the intent changed) or by a confirmed command's read-back showing
    what the failed one wanted (and by the polls: :func:`record_relay_changes`); each settlement is
    noted in the event's evidence and detail.  A confirmed alarm command says nothing of a failed
    trip.  (An expired command is a meter that could not be reached: the no-data detector's
    business.)  Returns the events opened."""
    at = command.finished or now
    if command.state is CommandState.FAILED:
        stuck = relay_stuck(command)
        found = _open_event(anomalies, command.meter)
        still = [f for f in (_still_failed(found) if found else []) if f.kind.decides != command.kind.decides]
        still.append(_Failure(command.kind, command.id, at, stuck))
        text = (f"command #{command.id} {command.kind.value} failed" + (" (the relay did not move)" if stuck else "")
                + f": {command.detail}")
        finding = Finding(command.meter, Kind.COMMAND_FAILED,
                          Severity.CRITICAL if any(f.stuck for f in still) else Severity.WARNING, at, text[:500],
                          ({"meter": command.meter, "quantity": f"command.{command.kind.value}",
                            "timestamp": at.isoformat(), "value": f"#{command.id} failed", STILL_FAILED: _encode(still)},))
        opened, _ = anomalies.record([finding], now)
        return opened
    if command.state is CommandState.CONFIRMED:
        found = _open_event(anomalies, command.meter)
        if found is None:
            return []
        settled: dict[_Failure, str] = {}
        for f in _still_failed(found):
            if f.at > at:
                continue  # failed after this one was confirmed
            if f.kind.decides == command.kind.decides:
                settled[f] = (f"#{command.id} {command.kind.value} confirmed" if f.kind is command.kind
                              else f"superseded by #{command.id} {command.kind.value}, confirmed")
            elif (seen := intent_met(f.kind, command.read_back)) is not None:
                settled[f] = f"{seen[0]} reads {said(seen[1])} in the read-back of #{command.id} {command.kind.value}"
        if settled:
            _settle(anomalies, found, settled, f"command.{command.kind.value}", at, now)
    return []


def record_relay_changes(anomalies: AnomalyStore, changes: Iterable[RelayChange], now: datetime) -> list[Event]:
    """Relay changes the regular polls saw with no command under way (the customer pressed the button,
    the relay was switched on site): a failed command whose wanted state a poll then read is
    settled, noted in its meter's ``command_failed`` event, which closes when nothing else failed
    is left.  Returns the events closed."""
    closed: list[Event] = []
    for change in changes:
        moved = {flag: change.after[flag] for flag in change.changed}
        found = _open_event(anomalies, change.meter) if moved else None
        if found is None:
            continue
        settled: dict[_Failure, str] = {}
        flags = set()
        for f in _still_failed(found):
            if f.at <= change.at and (seen := intent_met(f.kind, moved)) is not None:
                settled[f] = f"{seen[0]} read {said(seen[1])} by a poll at {change.at.isoformat()}"
                flags.add(seen[0])
        if settled:
            closed += _settle(anomalies, found, settled, ",".join(sorted(flags)), change.at, now)
    return closed


#: How to reach a configured meter (its channel, target and Modbus link; no credentials), or None.
RouteLookup = Callable[[str], RelayLink | None]

#: Upper bounds (seconds) of the pass-duration histogram (``/metrics``).
PASS_BOUNDS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass(frozen=True, slots=True)
class PrepaidFigures:
    """What ``/metrics`` shows of prepaid control, since this process started."""

    passes: int
    pass_buckets: tuple[tuple[float, int], ...]  # (upper bound in s, passes in it), +inf last
    pass_seconds: float  # summed over the passes
    outcomes: tuple[tuple[str, str, int], ...]  # (command kind, outcome, how many), sorted


class PrepaidRuntime:
    def __init__(self, config: PrepaidConfig, *, meters: Sequence[MeterConfig], where: Location,
                 route: RouteLookup, clock: Clock, scope: Scope | None = None) -> None:
        """``where``: the state's location (the data directory, or the PostgreSQL database)."""
        self.config = config
        self.clock = clock
        self._route = route
        needed = any(get_driver(m.protocol).credentials for m in meters)
        # A DL/T 645 site cannot switch a relay without these; say so at start, not at the first trip.
        self.credentials = credentials_from_env(config, required=needed and not config.settings.rules.dry_run)
        self.store = ControlStore(where)
        for line in self.store.upsert_accounts(config.accounts, actor="config", now=clock()):
            if "not applied" in line:  # an opening balance the config changed after it was applied
                log.warning("config: %s", line)
            elif "opening balance" in line or "pending" in line or "activated" in line:
                log.info("config: %s", line)
        pending = self.store.accounts_by_state().get("pending", 0)
        if pending:
            log.warning("prepaid: %d account(s) pending: charged, but never reminded, alarmed or tripped until "
                        "activated with an opening balance (meterd account activate, or the billing import)", pending)
        self.anomalies = AnomalyStore(where)
        self.engine = PrepaidEngine(self.store, config.settings, config.tariffs, limits=config.power_limits,
                                    capabilities=self.capabilities,
                                    ratings={m.address: m.rating for m in meters},
                                    report=self._report)
        self.notifier = make_notifier(config)
        self.executor = CommandExecutor(
            self.store, self.route, clock=clock, retry_every=config.settings.retry_every,
            valid_for=config.settings.valid_for, settle=config.settings.settle, publish=self.notifier.publish,
            scope=scope, outcome=self._outcome, finished=self._command_finished)
        self.commands_in_run = scope is None  # among nodes the executor runs apart: run_commands, on every node
        self._kick = asyncio.Event()
        self.passes = 0
        self._pass_buckets = [0] * (len(PASS_BOUNDS) + 1)
        self._pass_seconds = 0.0
        self._outcomes: Counter[tuple[str, str]] = Counter()

    def _outcome(self, command: Command, what: str) -> None:
        self._outcomes[str(command.kind), what] += 1

    def figures(self) -> PrepaidFigures:
        """Passes, their durations and the command outcomes since start (``/metrics``)."""
        return PrepaidFigures(self.passes, tuple(zip((*PASS_BOUNDS, math.inf), self._pass_buckets[:], strict=True)),
                              self._pass_seconds, tuple((k, o, n) for (k, o), n in sorted(self._outcomes.items())))

    def capabilities(self, meter: str) -> frozenset[CommandKind] | None:
        found = self._route(meter)
        if found is None:
            return None  # not configured: the executor fails it with that reason
        relay = found.commands()
        return frozenset(kind for kind in CommandKind if kind.relay_command in relay)

    def route(self, meter: str) -> RelayLink | None:
        found = self._route(meter)
        return None if found is None else found.with_credentials(self.credentials)

    def meter_accounts(self) -> dict[str, str]:
        """meter -> its account, for every assigned meter."""
        return {m: a for m, (a, _) in self.store.meter_accounts().items()}

    def observe(self, readings: list[Reading]) -> None:
        if self.engine.observe(readings):
            self._kick.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Passes until ``stop``.  A pass that fails is logged and the next one runs as usual; the
        store stays open unless ``stop`` is set, so the daemon can restart this service."""
        executor = None
        if self.commands_in_run:
            executor = asyncio.create_task(supervise("prepaid command executor", lambda: self.executor.run(stop),
                                                     stop), name="prepaid-commands")
        every = self.config.settings.check_every
        try:
            while not stop.is_set():
                try:
                    await self.run_pass()
                except Exception:
                    log.exception("prepaid pass failed; readings stay pending for the next one")
                self._kick.clear()
                waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._kick.wait())]
                await asyncio.wait(waiters, timeout=every, return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
                if self._kick.is_set() and not stop.is_set():
                    # Let the rest of a round land before charging: one pass per burst of readings.
                    try:
                        await asyncio.wait_for(stop.wait(), min(1.0, every))
                    except TimeoutError:
                        pass
        finally:
            if executor is not None:
                executor.cancel()
                await asyncio.gather(executor, return_exceptions=True)
            if stop.is_set():
                await self.notifier.close()
                self.store.close()
                self.anomalies.close()

    async def run_commands(self, stop: asyncio.Event) -> None:
        """The command executor alone (collector nodes: on every node, beside the leader's passes)."""
        try:
            await self.executor.run(stop)
        finally:
            if stop.is_set():
                await self.notifier.close()  # the executor's notices (failed commands)

    def _command_finished(self, command: Command) -> None:
        for event in record_command_anomaly(self.anomalies, command, self.clock()):
            log.warning("anomaly opened: meter %s %s: %s", event.meter, event.kind, event.detail)

    def _report(self, findings: list[Finding], resolved: list[tuple[str, Kind]]) -> None:
        """The engine's anomalies (failed accounts, registers held as implausible) to the store."""
        opened, _ = self.anomalies.record(findings, self.clock(), resolved=resolved)
        for event in opened:
            log.warning("anomaly opened: meter %s %s: %s", event.meter, event.kind, event.detail)

    async def run_pass(self) -> None:
        now = self.clock()
        started = time.monotonic()
        try:
            summary = await asyncio.to_thread(self.engine.run_pass, now)
        except Exception:
            log.exception("prepaid pass failed; readings stay pending for the next one")
            return
        took = time.monotonic() - started
        self._pass_buckets[bisect_left(PASS_BOUNDS, took)] += 1
        self._pass_seconds += took
        self.passes += 1
        if summary.entries or summary.commands or summary.flags:
            log.info("prepaid: %d ledger entries for %d accounts, %d decisions, %d commands queued, flags %s",
                     summary.entries, summary.accounts, summary.decisions, len(summary.commands),
                     summary.flags or "none")
        if summary.relays:
            try:
                await asyncio.to_thread(record_relay_changes, self.anomalies, summary.relays, now)
            except Exception:  # the relay states are stored; the anomalies are a report on top of them
                log.exception("prepaid: checking failed commands against the relay states the polls saw failed")
        if summary.notices:
            await self.notifier.publish(summary.notices)
        if summary.commands:
            self.executor.wake.set()
